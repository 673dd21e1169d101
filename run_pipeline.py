"""The whole pipeline as one command: tiles, three models, prediction, vote, hole filling, scores.

    python run_pipeline.py --synthetic                       # what `make demo` runs (small, CPU)
    python run_pipeline.py --data_root work --train_images a.png b.png --test_images c.png

Each step is the documented script with its documented flags, run as a subprocess (the commands are
printed, so any step can be rerun by hand). On your own imagery: RGBA (alpha 0 = no data) or RGB PNGs,
or GeoTIFFs (8-bit, 3-4 bands, no data from an alpha band, mask or nodata value), each training image
with its label ``NAME_label.png`` (``NAME_label.tif``) beside it (0..num_classes-1, 255 ignored); test
images may have one too, for scoring. Maps of GeoTIFF test images are GeoTIFFs with their
georeferencing. At the end one table gives mIoU and per-class IoU after each stage, computed from the
maps by score.py.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cropmap.cli import (InputError, device_name, nonneg_int, num_classes_int, positive_float, positive_int,
                         run_cli)
from cropmap.files import check_output_dir
from cropmap.metrics import class_names, iou_from_confusion
from cropmap.layout import (DEFAULT_TEST_IMAGES, DEFAULT_TRAIN_IMAGES, TEST_SOURCE_DIR, TRAIN_SOURCE_DIR,
                            checkpoint_path, label_path, map_path, map_suffix, model_dir, source_path, submit_dir)

ROOT = Path(__file__).resolve().parent

# The three models of the ensemble, most trusted first (vote ties go to the earliest):
# (stage name, training script, model, experiment suffix)
MODELS = [
    ("deeplabv3_ce", "train.py", "deeplabv3", "ce"),
    ("deeplabv3_focal", "train_focalloss.py", "deeplabv3", "focal"),
    ("unet", "Unet_resnet34/train.py", "unet", "unet"),
]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Run every step of the pipeline and print a table of scores.",
                                add_help=add_help)
    p.add_argument("--data_root", default="data", help="data root of the contract's layout (default: data)")
    p.add_argument("--synthetic", action="store_true",
                   help="first write the synthetic data set (make_synthetic_data.py) into --data_root")
    p.add_argument("--size", type=positive_int, default=3000, help="with --synthetic: longest image side (default: 3000)")
    p.add_argument("--synthetic_format", default="png", choices=["png", "tif"],
                   help="with --synthetic: write the set as PNGs or as GeoTIFFs (default: png)")
    p.add_argument("--train_images", nargs="+", default=None,
                   help="training PNGs or GeoTIFFs (labels NAME_label.png / .tif beside them) "
                        "(default: image_1 image_2 of the layout)")
    p.add_argument("--test_images", nargs="+", default=None,
                   help="test PNGs or GeoTIFFs, scored when NAME_label.png / .tif exists beside them "
                        "(default: image_3 image_4)")
    p.add_argument("--num_classes", type=num_classes_int, default=4, help="number of classes (default: 4)")
    p.add_argument("--tile_size", type=positive_int, default=256, help="tile and window side (default: 256)")
    p.add_argument("--epochs", type=positive_int, default=6, help="epochs of each DeepLabv3 model (default: 6)")
    p.add_argument("--unet_epochs", type=positive_int, default=3, help="epochs of the U-Net (default: 3)")
    p.add_argument("--iters_per_epoch", type=positive_int, default=None,
                   help="cap on iterations per epoch (default: one pass over the training tiles)")
    p.add_argument("--batch_size", type=positive_int, default=8, help="training batch size, at least 2 (default: 8)")
    p.add_argument("--crop_size", type=positive_int, default=256, help="DeepLabv3 training crop, a multiple of 32 (default: 256)")
    p.add_argument("--unet_crop_size", type=positive_int, default=128,
                   help="U-Net training crop (default: 128; its full-resolution hypercolumn head costs about 10x "
                        "DeepLabv3-ResNet18 per pixel on a CPU)")
    p.add_argument("--base_lr", type=positive_float, default=0.03, help="SGD learning rate (default: 0.03)")
    p.add_argument("--scale_min", type=positive_float, default=1.0,
                   help="smallest random rescale in training (default: 1.0: the synthetic classes differ by row "
                        "spacing at a fixed ground resolution, which rescaling 0.5-2x would blur together)")
    p.add_argument("--scale_max", type=positive_float, default=1.0, help="largest random rescale in training (default: 1.0)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads per training process (default: PyTorch's)")
    p.add_argument("--backbone", default="resnet18", help="DeepLabv3 backbone (default: resnet18)")
    p.add_argument("--unet_backbone", default="resnet34", help="U-Net encoder (default: resnet34)")
    p.add_argument("--device", type=device_name, default=None, help="torch device for training and prediction (default: cuda if available)")
    p.add_argument("--tta", default="flip", choices=["none", "flip", "d4"],
                   help="test-time augmentation of the TTA stage (default: flip)")
    p.add_argument("--max_hole", type=nonneg_int, default=20000, help="fill_hole.py --max_hole (default: 20000)")
    p.add_argument("--exp", default="demo", help="experiment name of the trained models (default: demo)")
    p.add_argument("--skip_training", action="store_true", help="reuse the checkpoints of an earlier run")
    p.add_argument("--quiet", action="store_true", help="no progress bars in the steps")
    return p


def run(cmd: list[str]) -> None:
    """Run one step as a subprocess from the repository root; stop the pipeline if it fails."""
    shown = " ".join(shlex.quote(c) for c in cmd)
    print(f"\n$ {shown}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *cmd], cwd=ROOT)
    if proc.returncode:
        raise InputError(f"step failed (exit {proc.returncode}): {shown}")
    print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)


def main(args: argparse.Namespace) -> list[dict]:
    t_start = time.perf_counter()
    root = Path(args.data_root).resolve()
    check_output_dir(root)
    # the training scripts' cross-flag rules, checked here too so that the pipeline does not stop after the tiling
    if args.batch_size < 2:
        raise InputError(f"--batch_size {args.batch_size}: training needs at least 2 images per batch (BatchNorm)")
    for flag in ("crop_size", "unet_crop_size"):
        if getattr(args, flag) % 32:
            raise InputError(f"--{flag} {getattr(args, flag)} must be a multiple of 32")
    if args.scale_min > args.scale_max:
        raise InputError(f"need --scale_min <= --scale_max, got {args.scale_min}, {args.scale_max}")
    q = ["--quiet"] if args.quiet else []
    if args.synthetic:
        run(["make_synthetic_data.py", "--data_root", str(root), "--size", str(args.size),
             "--format", args.synthetic_format, *q])
    train_images = [str(Path(p).resolve()) for p in args.train_images] if args.train_images else \
        [str(source_path(root, TRAIN_SOURCE_DIR, name)) for name in DEFAULT_TRAIN_IMAGES]
    test_images = [Path(p).resolve() for p in args.test_images] if args.test_images else \
        [source_path(root, TEST_SOURCE_DIR, name) for name in DEFAULT_TEST_IMAGES]
    names = [p.stem for p in test_images]
    map_ext = {p.stem: map_suffix(p) for p in test_images}  # GeoTIFF sources get GeoTIFF maps
    tile = str(args.tile_size)

    run(["generate_train_data.py", "--data_root", str(root), "--images", *train_images, "--tile_size", tile,
         "--keep", "valid", "--val_fraction", "0.15", "--num_classes", str(args.num_classes), *q])
    run(["generate_test_data.py", "--data_root", str(root), "--images", *map(str, test_images), "--tile_size", tile, *q])
    # the original's way for comparison: non-overlapping windows pasted side by side
    plain_root = root / "plain"
    run(["generate_test_data.py", "--data_root", str(plain_root), "--images", *map(str, test_images),
         "--tile_size", tile, "--stride", tile, *q])

    device = ["--device", args.device] if args.device else []
    common = ["--data_root", str(root), "--batch_size", str(args.batch_size), "--base_lr", str(args.base_lr),
              "--scale_min", str(args.scale_min), "--scale_max", str(args.scale_max), "--workers", "1",
              "--num_classes", str(args.num_classes), *device, *q]
    if args.iters_per_epoch:
        common += ["--iters_per_epoch", str(args.iters_per_epoch)]
    if args.threads:
        common += ["--threads", str(args.threads)]
    checkpoints = {}
    for name, script, model, suffix in MODELS:
        backbone = args.unet_backbone if model == "unet" else args.backbone
        exp = f"{args.exp}_{suffix}"
        checkpoints[name] = checkpoint_path(model_dir(root), {"model": model, "backbone": backbone, "exp": exp}, "best")
        epochs = args.unet_epochs if model == "unet" else args.epochs
        crop = args.unet_crop_size if model == "unet" else args.crop_size
        if not args.skip_training:
            run([script, "--train", *common, "--exp", exp, "--backbone", backbone, "--epochs", str(epochs),
                 "--save_every", str(epochs), "--crop_size", str(crop)])

    submit = submit_dir(root)
    pred = lambda image, stage: map_path(submit, image, stage, map_ext[image])  # noqa: E731
    predict = ["predict.py", "--output_dir", str(submit), *device, *q]
    first = MODELS[0][0]
    sources = [str(p) for p in test_images]  # predict.py finds the windows by the stem, the georeferencing in the file
    run([*predict, "--data_root", str(plain_root), "--images", *sources, "--checkpoint", str(checkpoints[first]),
         "--blend", "none", "--name", "plain", "--preview_size", "0"])
    for name, *_ in MODELS:
        run([*predict, "--data_root", str(root), "--images", *sources, "--checkpoint", str(checkpoints[name]),
             "--name", name])
    run([*predict, "--data_root", str(root), "--images", *sources, "--checkpoint", str(checkpoints[first]),
         "--tta", args.tta, "--name", f"{first}_tta", "--preview_size", "0"])
    for image, src in zip(names, test_images):
        run(["vote.py", "--inputs", *(str(pred(image, m)) for m, *_ in MODELS), "--output", str(pred(image, "vote")),
             "--num_classes", str(args.num_classes), *q])
        run(["fill_hole.py", "--input", str(pred(image, "vote")), "--source", str(src),
             "--output", str(map_path(submit, image, suffix=map_ext[image])), "--max_hole", str(args.max_hole),
             "--num_classes", str(args.num_classes), *q])

    stages = [("plain stitching (original's way)", "plain"), *((f"{m} (blended)", m) for m, *_ in MODELS),
              (f"{first} + TTA ({args.tta})", f"{first}_tta"), ("vote of the 3 models", "vote"),
              ("vote + fill_hole (final)", None)]
    labelled = [(i, s) for i, s in zip(names, test_images) if label_path(s).exists()]
    rows = []
    if not labelled:
        print("\nno test labels (NAME_label.png beside the test images): nothing to score")
    for title, stage in stages:
        total = np.zeros((args.num_classes, args.num_classes), np.int64)
        for image, src in labelled:
            path = map_path(submit, image, suffix=map_ext[image]) if stage is None else pred(image, stage)
            out = submit / "scores" / f"{path.stem}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            run(["score.py", "--pred", str(path), "--label", str(label_path(src)),
                 "--source", str(src), "--json", str(out), "--num_classes", str(args.num_classes),
                 *q])
            total += np.array(json.loads(out.read_text())["confusion"], np.int64)
        if labelled:
            iou, miou, miou_all = iou_from_confusion(total)
            rows.append({"stage": title, "mIoU": miou, "mIoU_all": miou_all, "iou": iou})
    if rows:
        print_table(rows, args.num_classes)
    print(f"\npipeline finished in {(time.perf_counter() - t_start) / 60:.1f} min; maps in {submit}")
    return rows


def print_table(rows: list[dict], num_classes: int) -> None:
    names = class_names(num_classes)
    head = "| stage | mIoU | mIoU_all | " + " | ".join(names) + " |"
    print("\nScores on the test images (all test images together; IoU over valid pixels):\n")
    print(head)
    print("|" + "---|" * (3 + num_classes))
    for r in rows:
        cells = " | ".join(f"{v:.3f}" for v in r["iou"])
        print(f"| {r['stage']} | {r['mIoU']:.3f} | {r['mIoU_all']:.3f} | {cells} |")


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
