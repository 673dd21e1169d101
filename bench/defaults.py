"""Small-budget training defaults, searched on data the demo's models were not tuned on.

Run by hand from the repository root (about 5 minutes per setting on 2 CPU cores)::

    python bench/defaults.py                       # writes data/set2 (another seed and class mix) if missing
    python bench/defaults.py --settings baseline "warmup 15"

A second synthetic set (``make_synthetic_data.py --seed 7 --class_prob 0.5,0.1,0.25,0.15``: other fields,
other class shares; its test images the shifted acquisition) is cut like the demo's, and the demo's focal
model (DeepLabv3-ResNet18, focal + Lovasz, 6 epochs of 256-px crops, batch 8, lr 0.03) is trained once per
setting, each changing one default of ``train.py`` (learning-rate warm-up, class-balanced sampling, the
auxiliary head's weight). Each model predicts the set's shifted test images (Gaussian blending, no TTA) and
is scored with the one metric; prints a Markdown table (test mIoU, per-class IoU, the best validation mIoU of
the run) and writes it with the confusion matrices to ``DATA_ROOT/bench_defaults.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.tricks import run, score  # noqa: E402
from cropmap.checkpoint import load_checkpoint  # noqa: E402
from cropmap.cli import run_cli  # noqa: E402
from cropmap.files import atomic_path  # noqa: E402
from cropmap.layout import (DEFAULT_TEST_IMAGES, TEST_SOURCE_DIR, checkpoint_path, map_path, model_dir,  # noqa: E402
                            source_path, tiles_csv, train_dir, windows_dir)
from cropmap.metrics import class_names, iou_from_confusion  # noqa: E402

#: one default changed per setting: name -> flags added to the demo's focal model
SETTINGS = {
    "baseline": [],
    "warmup 15": ["--warmup_iters", "15"],  # one epoch of the demo's 15 iterations
    "oversample 0.5": ["--oversample", "0.5"],
    "aux_weight 0.4": ["--aux_weight", "0.4"],
}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Search small-budget training defaults on a second synthetic set.",
                                add_help=add_help)
    p.add_argument("--data_root", default="data/set2", help="the second set's data root (default: data/set2)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS),
                   help="which settings to train (default: all)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    p.add_argument("--skip_training", action="store_true", help="reuse the checkpoints of an earlier run")
    return p


def prepare(root: Path) -> None:
    if not source_path(root, TEST_SOURCE_DIR, DEFAULT_TEST_IMAGES[-1]).exists():
        run(["make_synthetic_data.py", "--data_root", str(root), "--seed", "7", "--class_prob", "0.5,0.1,0.25,0.15"])
    if not tiles_csv(train_dir(root)).exists():
        run(["generate_train_data.py", "--data_root", str(root), "--tile_size", "256", "--keep", "valid",
             "--val_fraction", "0.15"])
    if not tiles_csv(windows_dir(root)).exists():
        run(["generate_test_data.py", "--data_root", str(root), "--tile_size", "256"])


def main(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    root = Path(args.data_root).resolve()
    prepare(root)
    images = list(DEFAULT_TEST_IMAGES)
    sources = {im: source_path(root, TEST_SOURCE_DIR, im) for im in images}
    out = {}
    for name in args.settings:
        exp = f"defaults_{name.split()[0]}_s{args.seed}"
        ckpt = checkpoint_path(model_dir(root), {"model": "deeplabv3", "backbone": "resnet18", "exp": exp}, "best")
        if not args.skip_training:
            run(["train_focalloss.py", "--train", "--data_root", str(root), "--exp", exp, "--backbone", "resnet18",
                 "--epochs", "6", "--save_every", "6", "--crop_size", "256", "--batch_size", "8", "--base_lr", "0.03",
                 "--scale_min", "1", "--scale_max", "1", "--workers", "1", "--seed", str(args.seed), "--device", "cpu",
                 "--threads", "2", *SETTINGS[name]])
        run(["predict.py", "--data_root", str(root), "--images", *images, "--checkpoint", str(ckpt),
             "--name", exp, "--preview_size", "0", "--device", "cpu", "--threads", "2"])
        cm = score({im: map_path(root / "submit", im, exp) for im in images}, sources)
        val = load_checkpoint(ckpt)["metrics"].get("mIoU")
        out[name] = {"confusion": cm.tolist(), "val_mIoU": val}
        print(f"  {name}: test mIoU {iou_from_confusion(cm)[1]:.3f}, validation {val:.3f}", flush=True)
    names = class_names(4)
    lines = ["| setting | test mIoU | " + " | ".join(names) + " | best validation mIoU |",
             "|---|---|" + "---|" * len(names) + "---|"]
    for name, r in out.items():
        iou, miou, _ = iou_from_confusion(np.array(r["confusion"]))
        lines.append(f"| {name} | {miou:.3f} | " + " | ".join(f"{v:.3f}" for v in iou) + f" | {r['val_mIoU']:.3f} |")
    print("\n" + "\n".join(lines))
    with atomic_path(root / "bench_defaults.json") as tmp:
        tmp.write_text(json.dumps(out, indent=1) + "\n")
    print(f"\n{(time.perf_counter() - t0) / 60:.1f} min")
    return out


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
