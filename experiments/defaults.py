"""Small-budget training defaults, searched on data the demo's models were not tuned on.

Run by hand from the repository root (about 5 minutes per setting on 2 CPU cores)::

    python -m experiments.defaults                 # writes data/set2 (another seed and class mix) if missing
    python -m experiments.defaults --settings baseline "warmup 15" --seeds 0 1 2
    python -m experiments.defaults --data_root data --settings "adamw 1e-3"     # on the demo's data

A second synthetic set (``make_synthetic_data.py --seed 7 --class_prob 0.5,0.1,0.25,0.15``: other fields,
other class shares; its test images the shifted acquisition) is cut like the demo's, and the demo's focal
model (DeepLabv3-ResNet18, focal + Lovasz, 6 epochs of 256-px crops, batch 8, lr 0.03) is trained once per
setting and seed, each setting changing defaults of ``train.py``: learning-rate warm-up, class-balanced
sampling, the auxiliary head's weight, the optimizer (AdamW at 1e-3 instead of SGD at 0.03), random rescaling
of the crops (``--scale_min/--scale_max``) and the rendering of each crop as another acquisition
(``--acquisition_jitter``), and the input normalisation (``--input_norm window``: each crop and window
standardised on its own; every other setting keeps the original's ImageNet normalisation). Each model
predicts the set's shifted test images (Gaussian blending, no TTA) and is scored with the one metric;
prints a Markdown table (test mIoU per seed, mean and spread, per-class IoU, the best validation mIoU of
the run) and keeps every run's confusion matrix in ``DATA_ROOT/bench_defaults.json`` (a later run adds
to it). ``--data_root data`` runs the same on the demo's data.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from cropmap.core.cli import run_cli
from cropmap.core.files import atomic_path
from cropmap.core.layout import (DEFAULT_TEST_IMAGES, TEST_SOURCE_DIR, checkpoint_path, map_path, model_dir,
                                 source_path, tiles_csv, train_dir, windows_dir)
from cropmap.core.metrics import class_names, iou_from_confusion
from cropmap.train.checkpoint import load_checkpoint
from experiments.common import run, score

#: one default changed per setting: name -> flags added to the demo's focal model
SETTINGS = {
    "baseline": [],
    "warmup 15": ["--warmup_iters", "15"],  # one epoch of the demo's 15 iterations
    "oversample 0.5": ["--oversample", "0.5"],
    "aux_weight 0.4": ["--aux_weight", "0.4"],
    "adamw 1e-3": ["--optimizer", "adamw", "--base_lr", "0.001"],
    "adamw 1e-3 warmup 15": ["--optimizer", "adamw", "--base_lr", "0.001", "--warmup_iters", "15"],
    "adamw 1e-3 scale 0.85-1.15": ["--optimizer", "adamw", "--base_lr", "0.001", "--scale_min", "0.85", "--scale_max", "1.15"],
    "adamw 1e-3 acquisition 0.15": ["--optimizer", "adamw", "--base_lr", "0.001", "--acquisition_jitter", "0.15"],
    "adamw 1e-3 window": ["--optimizer", "adamw", "--base_lr", "0.001", "--input_norm", "window"],
    "sgd window": ["--input_norm", "window"],
    "adamw 1e-3 scale 0.85-1.15 acquisition 0.15": ["--optimizer", "adamw", "--base_lr", "0.001", "--scale_min", "0.85",
                                                    "--scale_max", "1.15", "--acquisition_jitter", "0.15"],
}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Search small-budget training defaults on a second synthetic set.",
                                add_help=add_help)
    p.add_argument("--data_root", default="data/set2",
                   help="the data root: data/set2 (written if missing) or the demo's data (default: data/set2)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS),
                   help="which settings to train (default: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default: 0)")
    p.add_argument("--radiometry", nargs="+", default=["none", "match", "histogram"],
                   choices=["none", "match", "histogram"],
                   help="predict.py --radiometry modes each model's test maps are made with (default: all three)")
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
    results_file = root / "bench_defaults.json"
    # every run so far: setting -> seed -> radiometry -> {confusion, val_mIoU, seconds}
    out = json.loads(results_file.read_text()) if results_file.exists() else {}
    for name in args.settings:
        for seed in args.seeds:
            exp = f"defaults_{name.replace(' ', '_')}_s{seed}"
            ckpt = checkpoint_path(model_dir(root), {"model": "deeplabv3", "backbone": "resnet18", "exp": exp}, "best")
            t = time.perf_counter()
            if not args.skip_training:
                run(["train_focalloss.py", "--train", "--data_root", str(root), "--exp", exp, "--backbone", "resnet18",
                     "--epochs", "6", "--save_every", "6", "--crop_size", "256", "--batch_size", "8", "--base_lr",
                     "0.03", "--scale_min", "1", "--scale_max", "1", "--workers", "1", "--seed", str(seed),
                     "--device", "cpu", "--threads", "2", "--input_norm", "imagenet", *SETTINGS[name]])
            seconds = time.perf_counter() - t
            val = load_checkpoint(ckpt)["metrics"].get("mIoU")
            for mode in args.radiometry:
                tag = f"{exp}_{mode}"
                run(["predict.py", "--data_root", str(root), "--images", *images, "--checkpoint", str(ckpt),
                     "--name", tag, "--preview_size", "0", "--device", "cpu", "--threads", "2", "--radiometry", mode])
                cm = score({im: map_path(root / "submit", im, tag) for im in images}, sources)
                entry = {"confusion": cm.tolist(), "val_mIoU": val}
                if not args.skip_training:
                    entry["seconds"] = round(seconds, 1)
                out.setdefault(name, {}).setdefault(str(seed), {})[mode] = entry
                print(f"  {name}, seed {seed}, radiometry {mode}: test mIoU {iou_from_confusion(cm)[1]:.3f}, "
                      f"validation {val:.3f}", flush=True)
                with atomic_path(results_file) as tmp:
                    tmp.write_text(json.dumps(out, indent=1) + "\n")
    print("\n" + table(out))
    print(f"\n{(time.perf_counter() - t0) / 60:.1f} min; results of every run so far in {results_file}")
    return out


def table(out: dict) -> str:
    """Markdown table: per setting and radiometry mode, the shifted-test mIoU of each seed, their mean and
    spread, the mean per-class IoU and the mean best validation mIoU (of the training run: no radiometry)."""
    names = class_names(4)
    lines = ["| setting | radiometry | seeds | test mIoU per seed | test mean (spread) | " + " | ".join(names)
             + " | best validation mIoU, mean |", "|---|---|---|---|---|" + "---|" * len(names) + "---|"]
    for name, by_seed in out.items():
        seeds = sorted(by_seed, key=int)
        modes = [m for m in ("none", "match", "histogram") if all(m in by_seed[s] for s in seeds)]
        for mode in modes:
            cms = [np.array(by_seed[s][mode]["confusion"]) for s in seeds]
            tests = [iou_from_confusion(cm)[1] for cm in cms]
            ious = np.nanmean([iou_from_confusion(cm)[0] for cm in cms], axis=0)
            vals = [by_seed[s][mode]["val_mIoU"] for s in seeds]
            lines.append(f"| {name} | {mode} | {', '.join(seeds)} | {', '.join(f'{v:.3f}' for v in tests)} | "
                         f"{np.mean(tests):.3f} ({np.ptp(tests):.3f}) | " + " | ".join(f"{v:.3f}" for v in ious)
                         + f" | {np.mean(vals):.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
