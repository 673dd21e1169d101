"""The whole pipeline as one command: tiles, three models, prediction, ensembles, clean-up, scores.

    python run_pipeline.py --synthetic                       # what `make demo` runs (small, CPU)
    python run_pipeline.py --data_root work --train_images a.png b.png --test_images c.png

Each step is the documented script with its documented flags, run as a subprocess (the commands are
printed, so any step can be rerun by hand). On your own imagery: RGBA (alpha 0 = no data) or RGB PNGs,
or GeoTIFFs (8-bit, 3-4 bands, no data from an alpha band, mask or nodata value), each training image
with its label ``NAME_label.png`` (``NAME_label.tif``) beside it (0..num_classes-1, 255 ignored); test
images may have one too, for scoring. Maps of GeoTIFF images are GeoTIFFs with their georeferencing.

The final map is chosen on validation data, never on test labels: the validation blocks of the training
images (``make_val_images.py``; no model trained on them) are predicted, voted and cleaned exactly like
the test images, every candidate stage (each single model, the equal vote, the weighted hard and soft
votes, and the clean-ups of the best of those) is scored there, and the best one's test maps become the
final ``IMAGE_predict.png``. The best single model is always a candidate, so the final map is never
worse than it on validation data. At the end one table gives, for every stage, the validation mIoU and
the test mIoU and per-class IoU (test labels only when they exist), computed from the maps with the one
metric (``cropmap.maps.scoring.score_map``, what ``score.py`` runs).
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

from cropmap.core.cli import (device_name, fraction, percent, warn, nonneg_float, nonneg_int, num_classes_int,
                               positive_float, positive_fraction, positive_int, run_cli, seed_int, unit_float)

from cropmap.core.errors import InputError
from cropmap.core.files import atomic_path, check_output_dir, copy_atomic
from cropmap.core.layout import (DEFAULT_TEST_IMAGES, DEFAULT_TRAIN_IMAGES, TEST_SOURCE_DIR,
                                 TRAIN_SOURCE_DIR, checkpoint_path, label_path, map_path, map_suffix, model_dir,
                                 source_path, submit_dir)
from cropmap.core.metrics import absent_classes, class_names, format_iou, iou_from_confusion

ROOT = Path(__file__).resolve().parent

# The models the pipeline can train: name -> (training script, model, experiment suffix).
ZOO = {
    "deeplabv3_ce": ("train.py", "deeplabv3", "ce"),
    "deeplabv3_focal": ("train_focalloss.py", "deeplabv3", "focal"),
    "deeplabv3_swa": ("train_swa.py", "deeplabv3", "swa"),
    "unet": ("Unet_resnet34/train.py", "unet", "unet"),
}
#: The three models of the ensemble by default, most trusted first (equal-vote ties go to the earliest).
DEFAULT_MODELS = ("deeplabv3_ce", "deeplabv3_focal", "unet")
#: ``(stage name, training script, model, experiment suffix)`` of the default models.
MODELS = [(name, *ZOO[name]) for name in DEFAULT_MODELS]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Run every step of the pipeline and print a table of scores.",
                                add_help=add_help)
    p.add_argument("--data_root", default="data", help="data root of the contract's layout (default: data)")
    p.add_argument("--synthetic", action="store_true",
                   help="first write the synthetic data set (make_synthetic_data.py) into --data_root")
    p.add_argument("--size", type=positive_int, default=3000, help="with --synthetic: longest image side (default: 3000)")
    p.add_argument("--synthetic_format", default="png", choices=["png", "tif"],
                   help="with --synthetic: write the set as PNGs or as GeoTIFFs (default: png)")
    p.add_argument("--no_shift", action="store_true",
                   help="with --synthetic: render the test images like the training images (default: another "
                        "acquisition, see make_synthetic_data.py)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the synthetic data and of the training runs (default: 0)")
    p.add_argument("--train_images", nargs="+", default=None,
                   help="training PNGs or GeoTIFFs (labels NAME_label.png / .tif beside them) "
                        "(default: image_1 image_2 of the layout)")
    p.add_argument("--test_images", nargs="+", default=None,
                   help="test PNGs or GeoTIFFs, scored when NAME_label.png / .tif exists beside them "
                        "(default: image_3 image_4)")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=list(ZOO),
                   help="the models of the ensemble, most trusted first (default: " + " ".join(DEFAULT_MODELS) + ")")
    p.add_argument("--num_classes", type=num_classes_int, default=4, help="number of classes (default: 4)")
    p.add_argument("--tile_size", type=positive_int, default=256, help="tile and window side (default: 256)")
    p.add_argument("--stride", type=positive_int, default=None,
                   help="step between test windows (default: three quarters of --tile_size, rounded to a multiple of 8: "
                        "a quarter overlap, blended; on the demo a half overlap gave the same mIoU for 1.6x the time)")
    p.add_argument("--epochs", type=positive_int, default=6, help="epochs of each DeepLabv3 model (default: 6)")
    p.add_argument("--unet_epochs", type=positive_int, default=5,
                   help="epochs of the U-Net (default: 5; on the demo 3 epochs of 96-px crops gave test mIoU 0.325, "
                        "5 gave 0.605)")
    p.add_argument("--val_every", type=positive_int, default=3,
                   help="validate every N epochs and at the last one (train.py --val_every); the best validated epoch "
                        "is the model (default: 3: a validation pass costs the U-Net about two thirds of an epoch of "
                        "96-px crops on a CPU)")
    p.add_argument("--iters_per_epoch", type=positive_int, default=None,
                   help="cap on iterations per epoch (default: one pass over the training tiles)")
    p.add_argument("--batch_size", type=positive_int, default=8, help="training batch size, at least 2 (default: 8)")
    p.add_argument("--crop_size", type=positive_int, default=256,
                   help="DeepLabv3 training crop, a multiple of 32 (default: 256; 224 takes 0.77x the time per epoch but "
                        "lowered every final map measured: demo 0.807 -> 0.719, second set 0.637 -> 0.578)")
    p.add_argument("--unet_crop_size", type=positive_int, default=96,
                   help="U-Net training crop (default: 96; the U-Net costs about 4x DeepLabv3-ResNet18 per pixel, half "
                        "of it in its full-resolution hypercolumn head; on a CPU an iteration of 96-px crops takes "
                        "0.42x the time of 128-px ones)")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"],
                   help="optimizer of every model (train.py --optimizer) (default: adamw: on this budget of about 100 "
                        "iterations from scratch it learns far faster than SGD, see the README's figures)")
    p.add_argument("--base_lr", type=positive_float, default=None,
                   help="learning rate of every model (default: 0.001 with adamw, 0.03 with sgd)")
    p.add_argument("--input_norm", default="window", choices=["window", "imagenet"],
                   help="input normalisation of every model (train.py --input_norm; predict.py follows the checkpoint) "
                        "(default: window: each crop and window standardised on its own, which undoes most of a new "
                        "acquisition; see the README's figures)")
    p.add_argument("--scale_min", type=positive_float, default=1.0,
                   help="smallest random rescale in training (default: 1.0: the synthetic classes differ by row "
                        "spacing at a fixed ground resolution, which rescaling 0.5-2x would blur together)")
    p.add_argument("--scale_max", type=positive_float, default=1.0, help="largest random rescale in training (default: 1.0)")
    p.add_argument("--ema", type=unit_float, default=0.0, metavar="DECAY",
                   help="train.py --ema of every model but the SWA one: validate and save the moving average of the "
                        "weights, e.g. 0.95 (about the last 20 steps; default: 0, the last weights)")
    p.add_argument("--train_flags", default="",
                   help="more flags for every training script, in one string, e.g. \"--color_jitter 0.08 "
                        "--label_smoothing edge\" (default: none)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads per training process (default: PyTorch's)")
    p.add_argument("--backbone", default="resnet18", help="DeepLabv3 backbone (default: resnet18)")
    p.add_argument("--unet_backbone", default="resnet34", help="U-Net encoder (default: resnet34)")
    p.add_argument("--device", type=device_name, default=None, help="torch device for training and prediction (default: cuda if available)")
    p.add_argument("--tta", default="d4", choices=["none", "flip", "d4"],
                   help="test-time augmentation of every model's maps, validation and test alike, those the single "
                        "rows and the votes use (default: d4, the 8 flips and 90-degree rotations: on three synthetic "
                        "sets the final map 0.738, 0.728, 0.741 against flip's 0.739, 0.723, 0.689 (3 views) and "
                        "0.729, 0.706, 0.673 with none, for 3.3x the prediction time of none, 3.5 min more on the "
                        "demo on a CPU; see the README's figures)")
    p.add_argument("--tta_check", default="none", choices=["none", "flip", "d4"],
                   help="also predict the first model with this TTA, a candidate stage of its own, to show what "
                        "another TTA would add (default: none; none, or the same as --tta: no such stage)")
    p.add_argument("--radiometry", default="none", choices=["histogram", "match", "none"],
                   help="predict.py --radiometry of every model's maps, validation and test alike: histogram maps "
                        "each image's colours onto the training tiles' histogram (default: none: on top of --input_norm "
                        "window it changed the shifted test's mIoU by -0.036..+0.069 over nine models, +0.006 on "
                        "average, lowered validation and cost the demo a minute; see the README's figures)")
    p.add_argument("--adapt_bn", type=nonneg_int, default=8, metavar="N",
                   help="predict.py --adapt_bn of every model's maps, validation and test alike: BatchNorm statistics "
                        "re-estimated on the valid pixels of about N windows of each image (default: 8; on the demo's "
                        "new acquisition it raised all three models and the votes, see the README; 0: off)")
    p.add_argument("--adapt_weight", type=fraction, default=0.3, metavar="W",
                   help="predict.py --adapt_weight: the image's share of the adapted statistics, the training "
                        "statistics the rest (default: 0.3)")
    p.add_argument("--adapt_depth", type=positive_fraction, default=0.25, metavar="D",
                   help="predict.py --adapt_depth: the share of the BatchNorm layers adapted, the shallowest first "
                        "(default: 0.25; on two synthetic sets it beat 0.5 and 1 for the final map, see the README)")
    p.add_argument("--blend", default="gaussian", choices=["gaussian", "centre"],
                   help="how every model's windows are stitched (predict.py --blend) (default: gaussian)")
    p.add_argument("--weight_power", type=nonneg_float, default=1.0, help="vote.py --weight_power of the weighted votes (default: 1)")
    p.add_argument("--max_hole", type=nonneg_int, default=20000, help="fill_hole.py --method morph --max_hole (default: 20000)")
    p.add_argument("--min_area", type=nonneg_int, default=400, help="fill_hole.py --method area --min_area (default: 400)")
    p.add_argument("--radius", type=nonneg_int, default=3, help="fill_hole.py --method close --radius (default: 3)")
    p.add_argument("--edge_percentile", type=percent, default=70.0,
                   help="fill_hole.py --method segments --edge_percentile: share in %% of each image's pixels inside "
                        "segments, the rest are edges (default: 70)")
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


class Split:
    """One set of images the maps are made for: ``val`` (validation blocks) or ``test``."""

    def __init__(self, name: str, data_root: Path, sources: list[Path]):
        self.name, self.data_root, self.sources = name, data_root, sources
        self.images = [p.stem for p in sources]
        self.submit = submit_dir(data_root)
        self.suffix = {p.stem: map_suffix(p) for p in sources}  # GeoTIFF sources get GeoTIFF maps

    def map(self, image: str, stage: str | None) -> Path:
        """The map of ``image`` after ``stage`` (None: the final map, ``IMAGE_predict``)."""
        return map_path(self.submit, image, stage, self.suffix[image])

    def labelled(self) -> list[tuple[str, Path, Path]]:
        """``(image, source, label)`` of the images with a label beside them."""
        out = []
        for image, src in zip(self.images, self.sources):
            label = label_path(src)
            if label.exists():
                out.append((image, src, label))
        return out


def score_stage(split: Split, stage: str | None, num_classes: int) -> np.ndarray | None:
    """Confusion matrix ``int64 [C, C]`` of a stage's maps over the split's labelled images (None: no labels)."""
    from cropmap.maps.scoring import score_map

    labelled = split.labelled()
    if not labelled:
        return None
    total = np.zeros((num_classes, num_classes), np.int64)
    for image, src, label in labelled:
        total += np.asarray(score_map(split.map(image, stage), label, src, num_classes, progress=False).matrix.numpy())
    return total


def choose(rows: list[dict], split: str = "val") -> dict:
    """The candidate row with the highest mIoU on ``split`` (the earliest on ties); test scores play no part."""
    candidates = [r for r in rows if r.get("candidate") and r.get(split) is not None]
    if not candidates:  # e.g. no validation labels: the most trusted model, as the original's vote order says
        first = next(r for r in rows if r.get("candidate"))
        warn(f"no candidate stage has a {split} score: keeping {first['key']}")
        return first
    return max(candidates, key=lambda r: (r[split], -rows.index(r)))


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
    if args.stride is not None and args.stride > args.tile_size:
        raise InputError(f"--stride {args.stride} is larger than --tile_size {args.tile_size}: the test windows would "
                         "leave gaps")
    if args.scale_min > args.scale_max:
        raise InputError(f"need --scale_min <= --scale_max, got {args.scale_min}, {args.scale_max}")
    q = ["--quiet"] if args.quiet else []
    nc = ["--num_classes", str(args.num_classes)]
    if args.synthetic:
        run(["make_synthetic_data.py", "--data_root", str(root), "--size", str(args.size), "--seed", str(args.seed),
             "--format", args.synthetic_format, *(["--no_shift"] if args.no_shift else []), *q])
    train_images = [str(Path(p).resolve()) for p in args.train_images] if args.train_images else \
        [str(source_path(root, TRAIN_SOURCE_DIR, name)) for name in DEFAULT_TRAIN_IMAGES]
    test_images = [Path(p).resolve() for p in args.test_images] if args.test_images else \
        [source_path(root, TEST_SOURCE_DIR, name) for name in DEFAULT_TEST_IMAGES]
    tile = str(args.tile_size)

    # ---- tiles, validation images, test windows
    run(["generate_train_data.py", "--data_root", str(root), "--images", *train_images, "--tile_size", tile,
         "--keep", "valid", "--val_fraction", "0.15", *nc, *q])
    val_root = root / "val"  # a data root whose test images are the validation blocks
    run(["make_val_images.py", "--data_root", str(root), "--images", *train_images, "--val_root", str(val_root), *q])
    # make_val_images.py names each validation image after its training image (and keeps its format)
    val_sources = [val_root / TEST_SOURCE_DIR / Path(p).name for p in train_images]
    val = Split("val", val_root, val_sources)
    test = Split("test", root, test_images)
    stride = str(args.stride or max(8, (3 * args.tile_size // 4) // 8 * 8))
    for split in (val, test):
        run(["generate_test_data.py", "--data_root", str(split.data_root), "--images", *map(str, split.sources),
             "--tile_size", tile, "--stride", stride, *q])
    # the original's way for comparison: non-overlapping windows pasted side by side
    plain_root = root / "plain"
    run(["generate_test_data.py", "--data_root", str(plain_root), "--images", *map(str, test_images),
         "--tile_size", tile, "--stride", tile, *q])

    # ---- training
    device = ["--device", args.device] if args.device else []
    base_lr = args.base_lr if args.base_lr is not None else (0.001 if args.optimizer == "adamw" else 0.03)
    common = ["--data_root", str(root), "--batch_size", str(args.batch_size), "--optimizer", args.optimizer,
              "--base_lr", str(base_lr), "--input_norm", args.input_norm, "--val_every", str(args.val_every),
              "--scale_min", str(args.scale_min), "--scale_max", str(args.scale_max), "--workers", "1",
              "--seed", str(args.seed), *nc, *device, *q, *shlex.split(args.train_flags)]
    if args.iters_per_epoch:
        common += ["--iters_per_epoch", str(args.iters_per_epoch)]
    if args.threads:
        common += ["--threads", str(args.threads)]
    models = [(name, *ZOO[name]) for name in args.models]
    checkpoints = {}
    for name, script, model, suffix in models:
        backbone = args.unet_backbone if model == "unet" else args.backbone
        exp = f"{args.exp}_{suffix}"
        checkpoints[name] = checkpoint_path(model_dir(root), {"model": model, "backbone": backbone, "exp": exp}, "best")
        epochs = args.unet_epochs if model == "unet" else args.epochs
        crop = args.unet_crop_size if model == "unet" else args.crop_size
        ema = ["--ema", str(args.ema)] if args.ema and suffix != "swa" else []  # SWA saves its own average
        if not args.skip_training:
            run([script, "--train", *common, *ema, "--exp", exp, "--backbone", backbone, "--epochs", str(epochs),
                 "--save_every", str(epochs), "--crop_size", str(crop)])

    # ---- every model's maps, on the validation images and the test images
    first = models[0][0]
    names = [m for m, *_ in models]
    check_tta = args.tta_check not in ("none", args.tta)
    adapt = ["--adapt_bn", str(args.adapt_bn), "--adapt_weight", str(args.adapt_weight),
             "--adapt_depth", str(args.adapt_depth)]
    for split in (val, test):
        predict = ["predict.py", "--data_root", str(split.data_root), "--images", *map(str, split.sources),
                   "--output_dir", str(split.submit), *device, *q]
        preview = [] if split is test else ["--preview_size", "0"]
        for name in names:
            run([*predict, "--checkpoint", str(checkpoints[name]), "--name", name, "--tta", args.tta,
                 "--blend", args.blend, "--radiometry", args.radiometry, *adapt,
                 "--save_probs", *preview])
        if check_tta:  # what TTA adds, on the first model
            run([*predict, "--checkpoint", str(checkpoints[first]), "--name", f"{first}_tta", "--blend", args.blend,
                 "--radiometry", args.radiometry, *adapt, "--tta", args.tta_check,
                 "--preview_size", "0"])
    run(["predict.py", "--data_root", str(plain_root), "--images", *map(str, test.sources), "--output_dir", str(test.submit),
         "--checkpoint", str(checkpoints[first]), "--blend", "none", "--radiometry", args.radiometry, "--name", "plain",
         *adapt,
         "--preview_size", "0", *device, *q])

    # ---- ensembles, then clean-ups of the best map so far (chosen on validation)
    rows: list[dict] = []

    def add(title: str, stage: str, candidate: bool = True, splits=(val, test)) -> dict:
        row = {"stage": title, "key": stage, "candidate": candidate}
        for split in (val, test):
            cm = score_stage(split, stage, args.num_classes) if split in splits else None
            row[f"{split.name}_cm"] = cm
            row[split.name] = None if cm is None else iou_from_confusion(cm)[1]
        rows.append(row)
        return row

    add("plain stitching (original's way), " + first, "plain", candidate=False, splits=(test,))
    for name in names:
        add(f"{name} + TTA ({args.tta})" if args.tta != "none" else name, name)
    if check_tta:
        add(f"{first} + TTA ({args.tta_check})", f"{first}_tta")
    best_single = choose(rows)
    votes = [(f"vote of the {len(names)} models, equal weights", "vote", ["--weights", "equal"]),
             (f"weighted vote (--weights auto, power {args.weight_power:g})", "wvote",
              ["--weights", "auto", "--weight_power", str(args.weight_power)]),
             (f"weighted soft vote (--soft --weights auto, power {args.weight_power:g})", "wsoft",
              ["--soft", "--weights", "auto", "--weight_power", str(args.weight_power)])]
    for title, stage, flags in votes:
        for split in (val, test):
            for image in split.images:
                run(["vote.py", "--inputs", *(str(split.map(image, m)) for m in names),
                     "--output", str(split.map(image, stage)), *nc, *flags, *q])
        add(title, stage)
    base = choose(rows)
    cleanups = [("morph", ["--method", "morph", "--max_hole", str(args.max_hole)], f"fill enclosed holes (morph, max {args.max_hole})"),
                ("area", ["--method", "area", "--min_area", str(args.min_area)], f"remove regions < {args.min_area} px (area)"),
                ("close", ["--method", "close", "--radius", str(args.radius)], f"closing (radius {args.radius})"),
                ("segments", ["--method", "segments", "--edge_percentile", f"{args.edge_percentile:g}"],
                 f"segment vote (edges: top {100 - args.edge_percentile:g}% gradients)")]
    for method, flags, title in cleanups:
        stage = f"{base['key']}_{method}"
        for split in (val, test):
            for image, src in zip(split.images, split.sources):
                run(["fill_hole.py", "--input", str(split.map(image, base["key"])), "--source", str(src),
                     "--output", str(split.map(image, stage)), *flags, *nc, *q])
        add(f"{base['key']} + {title}", stage)

    # ---- the final map: the candidate that scores best on validation
    final = choose(rows)
    for split in (val, test):
        for image in split.images:
            copy_atomic(split.map(image, final["key"]), split.map(image, None))
    final_row = dict(final, stage=f"final map = {final['key']} (chosen on validation)", candidate=False)
    rows.append(final_row)
    print(f"\nbest single model on validation: {best_single['key']}; final map chosen on validation: {final['key']}")
    if rows and any(r["test"] is not None for r in rows):
        print_table(rows, args.num_classes)
        gain = final_row["test"] - best_single["test"]
        print(f"\ntest mIoU: final {final_row['test']:.3f}, best single model {best_single['test']:.3f} "
              f"({gain:+.3f}); validation: {final_row['val']:.3f} vs {best_single['val']:.3f}")
        top = max((r for r in rows if r["key"] in names and r["test"] is not None), key=lambda r: r["test"])
        if top is not best_single:  # what validation could not know: another model carried over better
            print(f"the model best on the test images: {top['key']} {top['test']:.3f} "
                  f"({final_row['test'] - top['test']:+.3f} to the final map; not used for any choice)")
    else:
        print("\nno test labels (NAME_label.png beside the test images): test maps not scored")
    write_scores(test.submit / "scores" / "pipeline.json", rows, best_single, final)
    print(f"\npipeline finished in {(time.perf_counter() - t_start) / 60:.1f} min; maps in {test.submit}")
    for r in rows:  # the old keys, kept for callers of main()
        cm = r.get("test_cm")
        if cm is not None:
            r["iou"], r["mIoU"], r["mIoU_all"] = iou_from_confusion(cm)
    return rows


def write_scores(path: Path, rows: list[dict], best_single: dict, final: dict) -> None:
    """The table as JSON (per stage: validation and test confusion matrices, mIoU), written atomically."""
    out = {"best_single": best_single["key"], "final": final["key"], "stages": []}
    for r in rows:
        item = {"stage": r["stage"], "key": r["key"], "candidate": r["candidate"]}
        for split in ("val", "test"):
            cm = r.get(f"{split}_cm")
            item[split] = None if cm is None else {"mIoU": r[split], "confusion": cm.tolist(),
                                                   "iou": [None if np.isnan(v) else v for v in iou_from_confusion(cm)[0]]}
        out["stages"].append(item)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(out, indent=2) + "\n")


def print_table(rows: list[dict], num_classes: int) -> None:
    names = class_names(num_classes)
    print("\nScores (validation: the validation blocks of the training images; test: the test images; "
          "IoU over valid pixels, per class on test):\n")
    print("| stage | val mIoU | test mIoU | test mIoU_all | " + " | ".join(names) + " |")
    print("|" + "---|" * (4 + num_classes))
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for r in rows:
        cm = r.get("test_cm")
        if cm is None:
            cells, miou_all = ["-"] * num_classes, None
        else:
            iou, _, miou_all = iou_from_confusion(cm)
            absent = set(absent_classes(cm))
            cells = [format_iou(v, c in absent, 3) for c, v in enumerate(iou)]
        print(f"| {r['stage']} | {fmt(r['val'])} | {fmt(r['test'])} | {fmt(miou_all)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
