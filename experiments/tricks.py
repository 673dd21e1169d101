"""The competition winners' tricks, each measured on the demo's data with the demo's budget and two seeds.

Run by hand from the repository root (about 40 minutes on 2 CPU cores)::

    python -m experiments.tricks                   # writes the demo's data into data/ if it is not there
    python -m experiments.tricks --seeds 0 1 2 --model focal

One model of the demo (``--model focal``: DeepLabv3-ResNet18, focal + Lovasz, ``train_focalloss.py``;
``ce``: cross-entropy, ``train.py``) is trained with the demo's flags as they were when this was measured
(SGD at 0.03; the demo now trains with AdamW at 1e-3, see ``experiments.defaults``) once per seed and per
training trick:

* baseline (the demo's flags), ``--color_jitter 0.08``, ``--label_smoothing edge``;

every model predicts the test images (the demo's windows: 256 px every 128 px, Gaussian blending, no TTA,
``--radiometry none``), and the baseline models' maps also go through the prediction and clean-up tricks:

* ``--radiometry match`` (the test image's colours mapped to the training tiles' mean and std);
* ``--blend centre`` (each window keeps its central 128 px: the windows' stride, so the centres tile the image);
* ``fill_hole.py --method area --min_area N`` and ``--method close --radius R``;
* ``fill_hole.py --method morph`` (the demo's hole filling), for comparison.

Every map is scored with the one metric (``cropmap.maps.scoring.score_map``) on the test images, the shifted
acquisition by default (``make_synthetic_data.py``), and on the validation images (``make_val_images.py``:
the training images' validation blocks). Prints one Markdown table: per trick the test mIoU of each seed,
their mean and spread (max - min) and the change against the baseline of the same seed, and the same for
validation; writes it with every confusion matrix to ``DATA_ROOT/bench_tricks/tricks.json``.
Last, the baseline models predict image_3/image_4 rendered like the training images (``--no_shift``, in
``DATA_ROOT/noshift``): the drop from the same acquisition to the shifted one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from cropmap.core.cli import nonneg_int, positive_int, run_cli, seed_int
from cropmap.core.files import atomic_path
from cropmap.core.layout import (DEFAULT_TEST_IMAGES, TEST_SOURCE_DIR, checkpoint_path, map_path, model_dir,
                                 source_path, tiles_csv, train_dir, windows_dir)
from cropmap.core.metrics import iou_from_confusion
from experiments.common import run, score

MODELS = {"focal": ("train_focalloss.py", "deeplabv3"), "ce": ("train.py", "deeplabv3")}
#: training tricks: name -> flags added to the baseline's
TRAIN_TRICKS = {"baseline": [], "color_jitter 0.08": ["--color_jitter", "0.08"],
                "label_smoothing edge": ["--label_smoothing", "edge"]}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Measure the winners' tricks on the demo's data, two seeds each.",
                                add_help=add_help)
    p.add_argument("--data_root", default="data", help="the demo's data root (written if missing) (default: data)")
    p.add_argument("--seeds", type=seed_int, nargs="+", default=[0, 1], help="training seeds (default: 0 1)")
    p.add_argument("--model", default="focal", choices=list(MODELS), help="which demo model (default: focal)")
    p.add_argument("--epochs", type=positive_int, default=6, help="epochs, as the demo (default: 6)")
    p.add_argument("--min_area", type=positive_int, default=400, help="fill_hole.py --method area --min_area (default: 400)")
    p.add_argument("--radius", type=nonneg_int, default=3, help="fill_hole.py --method close --radius (default: 3)")
    p.add_argument("--max_hole", type=nonneg_int, default=20000, help="fill_hole.py --method morph --max_hole (default: 20000)")
    p.add_argument("--threads", type=positive_int, default=2, help="CPU threads of each step (default: 2)")
    p.add_argument("--skip_training", action="store_true", help="reuse the checkpoints of an earlier run")
    p.add_argument("--skip_same_acquisition", action="store_true",
                   help="do not score the baseline models on the test images rendered like the training images")
    return p


def prepare(root: Path) -> None:
    """The demo's data, tiles, validation images and test windows, where missing."""
    if not source_path(root, TEST_SOURCE_DIR, DEFAULT_TEST_IMAGES[-1]).exists():
        run(["make_synthetic_data.py", "--data_root", str(root)])
    if not tiles_csv(train_dir(root)).exists():
        run(["generate_train_data.py", "--data_root", str(root), "--tile_size", "256", "--keep", "valid",
             "--val_fraction", "0.15"])
    if not (root / "val" / TEST_SOURCE_DIR).is_dir():
        run(["make_val_images.py", "--data_root", str(root), "--val_root", str(root / "val")])
    for r in (root, root / "val"):
        if not tiles_csv(windows_dir(r)).exists():
            images = DEFAULT_TEST_IMAGES if r == root else ["image_1", "image_2"]
            run(["generate_test_data.py", "--data_root", str(r), "--images", *images, "--tile_size", "256"])


def main(args: argparse.Namespace) -> dict:
    t_start = time.perf_counter()
    root = Path(args.data_root).resolve()
    prepare(root)
    out_dir = root / "bench_tricks"
    splits = {"test": (root, list(DEFAULT_TEST_IMAGES)), "val": (root / "val", ["image_1", "image_2"])}
    sources = {s: {im: source_path(r, TEST_SOURCE_DIR, im) for im in ims} for s, (r, ims) in splits.items()}
    script, model = MODELS[args.model]
    threads = ["--threads", str(args.threads)]
    results: dict[str, dict[int, dict[str, list]]] = {}

    def record(trick: str, seed: int, maps_of_split) -> None:
        for split in splits:
            cm = score(maps_of_split(split), sources[split])
            results.setdefault(trick, {}).setdefault(seed, {})[split] = cm.tolist()
            print(f"  {trick}, seed {seed}, {split}: mIoU {iou_from_confusion(cm)[1]:.3f}", flush=True)

    for seed in args.seeds:
        for trick, flags in TRAIN_TRICKS.items():
            exp = f"tricks_{args.model}_{trick.split()[0]}_s{seed}"
            ckpt = checkpoint_path(model_dir(root), {"model": model, "backbone": "resnet18", "exp": exp}, "best")
            if not args.skip_training:
                run([script, "--train", "--data_root", str(root), "--exp", exp, "--backbone", "resnet18",
                     "--epochs", str(args.epochs), "--save_every", str(args.epochs), "--crop_size", "256",
                     "--batch_size", "8", "--base_lr", "0.03", "--scale_min", "1", "--scale_max", "1",
                     "--workers", "1", "--seed", str(seed), "--device", "cpu", "--input_norm", "imagenet", *threads,
                     *flags])
            variants = {trick: ["--radiometry", "none"]}
            if trick == "baseline":
                variants.update({"radiometry match": ["--radiometry", "match"],
                                 "blend centre": ["--radiometry", "none", "--blend", "centre", "--keep", "128"]})
            for name, pflags in variants.items():
                tag = f"{exp}_{name.split()[0]}_{name.split()[-1]}"
                for split, (r, ims) in splits.items():
                    run(["predict.py", "--data_root", str(r), "--images", *ims, "--checkpoint", str(ckpt),
                         "--output_dir", str(out_dir / split), "--name", tag, "--preview_size", "0",
                         "--device", "cpu", *threads, *pflags])
                record(name, seed, lambda s, tag=tag: {im: map_path(out_dir / s, im, tag) for im in splits[s][1]})
                if name != "baseline":
                    continue
                cleanups = {f"fill_hole area {args.min_area}": ["--method", "area", "--min_area", str(args.min_area)],
                            f"fill_hole close {args.radius}": ["--method", "close", "--radius", str(args.radius)],
                            f"fill_hole morph {args.max_hole}": ["--method", "morph", "--max_hole", str(args.max_hole)]}
                for cname, cflags in cleanups.items():
                    ctag = f"{tag}_{cname.split()[1]}"
                    for split in splits:
                        for im in splits[split][1]:
                            run(["fill_hole.py", "--input", str(map_path(out_dir / split, im, tag)),
                                 "--source", str(sources[split][im]),
                                 "--output", str(map_path(out_dir / split, im, ctag)), *cflags])
                    record(cname, seed, lambda s, ctag=ctag: {im: map_path(out_dir / s, im, ctag) for im in splits[s][1]})

    table = summarize(results, args.seeds)
    print("\n" + table)
    if not args.skip_same_acquisition:
        same = same_acquisition(root, out_dir, results, args, model, threads)
        print("\nbaseline models on the test images rendered like the training images (--no_shift) vs the shifted "
              f"ones: mIoU {', '.join(f'{v:.3f}' for v in same['same'])} (mean {np.mean(same['same']):.3f}) vs "
              f"{', '.join(f'{v:.3f}' for v in same['shifted'])} (mean {np.mean(same['shifted']):.3f})")
    with atomic_path(out_dir / "tricks.json") as tmp:
        tmp.write_text(json.dumps({"model": args.model, "seeds": args.seeds, "confusion": results}, indent=1) + "\n")
    print(f"\n{(time.perf_counter() - t_start) / 60:.1f} min; confusion matrices in {out_dir / 'tricks.json'}")
    return results


def same_acquisition(root: Path, out_dir: Path, results: dict, args, model: str, threads: list[str]) -> dict:
    """The baseline models on image_3/image_4 rendered like the training images (``--no_shift``, written to
    ``DATA_ROOT/noshift``), against their scores on the shifted rendering: what the new acquisition costs."""
    same_root = root / "noshift"
    images = list(DEFAULT_TEST_IMAGES)
    if not source_path(same_root, TEST_SOURCE_DIR, images[-1]).exists():
        run(["make_synthetic_data.py", "--data_root", str(same_root), "--no_shift", "--images", *images])
    if not tiles_csv(windows_dir(same_root)).exists():
        run(["generate_test_data.py", "--data_root", str(same_root), "--images", *images, "--tile_size", "256"])
    srcs = {im: source_path(same_root, TEST_SOURCE_DIR, im) for im in images}
    same = []
    for seed in args.seeds:
        exp = f"tricks_{args.model}_baseline_s{seed}"
        ckpt = checkpoint_path(model_dir(root), {"model": model, "backbone": "resnet18", "exp": exp}, "best")
        run(["predict.py", "--data_root", str(same_root), "--images", *images, "--checkpoint", str(ckpt),
             "--output_dir", str(out_dir / "same"), "--name", exp, "--preview_size", "0", "--device", "cpu", *threads])
        same.append(iou_from_confusion(score({im: map_path(out_dir / "same", im, exp) for im in images}, srcs))[1])
    shifted = [iou_from_confusion(np.array(results["baseline"][s]["test"]))[1] for s in args.seeds]
    return {"same": same, "shifted": shifted}


def summarize(results: dict, seeds: list[int]) -> str:
    """Markdown table: per trick, test and validation mIoU per seed, mean, spread, change vs the baseline."""
    def miou(trick, seed, split):
        return iou_from_confusion(np.array(results[trick][seed][split]))[1]

    head = ("| trick | test mIoU per seed | test mean (spread) | test change vs baseline | "
            "val mean (spread) | val change | lowest crop IoU, test |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for trick in results:
        cells = []
        for split in ("test", "val"):
            v = [miou(trick, s, split) for s in seeds]
            d = [miou(trick, s, split) - miou("baseline", s, split) for s in seeds]
            cells.append((v, d))
        (tv, td), (vv, vd) = cells
        low = min(np.nanmin(iou_from_confusion(np.array(results[trick][s]["test"]))[0][1:]) for s in seeds)
        lines.append(f"| {trick} | {', '.join(f'{x:.3f}' for x in tv)} | {np.mean(tv):.3f} ({np.ptp(tv):.3f}) | "
                     f"{np.mean(td):+.3f} | {np.mean(vv):.3f} ({np.ptp(vv):.3f}) | {np.mean(vd):+.3f} | {low:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
