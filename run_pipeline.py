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

from cropmap.core.budget import BUDGETS, DEFAULT_BUDGET, apply_budget, estimate_minutes, iterations
from cropmap.core.cli import borrow_flags, experimental_group, forward_flags, positive_int, run_cli, warn

from cropmap.core.errors import InputError
from cropmap.core.files import atomic_path, check_output_dir, copy_atomic
from cropmap.core.layout import (DEFAULT_TEST_IMAGES, DEFAULT_TRAIN_IMAGES, TEST_SOURCE_DIR,
                                 TRAIN_SOURCE_DIR, checkpoint_path, errors_path, label_path, map_path, map_suffix,
                                 model_dir, preview_path, source_path, submit_dir, tiles_csv, train_dir)
from cropmap.core.metrics import absent_classes, class_names, format_iou, iou_from_confusion
from cropmap.data.tiling import read_tiles_csv
from cropmap.data.vector_labels import LabelOptions, VectorLabels, check_class_names, rasterize_to
from cropmap.raster import check_image
from cropmap.raster.preview import write_map_preview

ROOT = Path(__file__).resolve().parent

# The models the pipeline can train: name -> (training script, model, experiment suffix).
ZOO = {
    "deeplabv3_ce": ("train.py", "deeplabv3", "ce"),
    "deeplabv3_focal": ("train_focalloss.py", "deeplabv3", "focal"),
    "deeplabv3_swa": ("train_swa.py", "deeplabv3", "swa"),
    "unet": ("Unet_resnet34/train.py", "unet", "unet"),
}


#: The pipeline's defaults where they differ from the scripts' (whose defaults are the original's, for long
#: runs from pretrained weights on a GPU), whatever the budget: AdamW (which learns fast from scratch), no
#: rescaling, shallow test-time BatchNorm adaptation of every model's maps, and clean-up sizes for maps of a
#: few thousand pixels. The flags that set a run's length come from ``--budget`` (:mod:`cropmap.core.budget`).
PIPELINE_DEFAULTS = {
    "optimizer": "adamw", "base_lr": None, "scale_min": 1.0, "scale_max": 1.0, "exp": "demo",
    "adapt_bn": 8, "max_hole": 20000, "min_area": 400,
}
#: Flags passed on unchanged: to every training script, to every predict.py call, to the clean-ups.
TRAIN_FLAGS = ["batch_size", "optimizer", "input_norm", "val_every", "scale_min", "scale_max"]
PREDICT_FLAGS = ["tta", "blend", "radiometry", "adapt_bn", "adapt_weight", "adapt_depth"]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The pipeline's own flags, and those of the scripts it runs, taken from their parsers (one declaration
    per flag) with :data:`PIPELINE_DEFAULTS`."""
    import fill_hole
    import generate_test_data
    import generate_train_data
    import make_synthetic_data
    import predict
    import vote
    from cropmap.train import engine

    d = PIPELINE_DEFAULTS
    lengths = {k: None for k in BUDGETS[DEFAULT_BUDGET]}  # set by --budget unless typed
    p = argparse.ArgumentParser(description="Run every step of the pipeline and print a table of scores.",
                                add_help=add_help)
    x = experimental_group(p)
    p.add_argument("--budget", default=DEFAULT_BUDGET, choices=list(BUDGETS),
                   help="how much work: quick (one model, at most 480 iterations, flip TTA: a map of 30 + 10 Mpx in "
                        "under half an hour on a 2-core CPU), standard (three models voted, d4 TTA), full (ResNet-50, "
                        "512-px tiles, 30 epochs: for a GPU); it sets the flags marked 'from --budget' that are not "
                        "typed; the plan and its expected time are printed first (default: %(default)s)")
    g = p.add_argument_group("data")
    g.add_argument("--data_root", default="data", help="data root of the contract's layout (default: %(default)s)")
    g.add_argument("--synthetic", action="store_true",
                   help="first write the synthetic data set (make_synthetic_data.py) into --data_root")
    borrow_flags(g, make_synthetic_data.get_args_parser(), {"size": "size", "format": "synthetic_format",
                                                             "no_shift": "no_shift"})
    g.add_argument("--train_images", nargs="+", default=None,
                   help="training PNGs or GeoTIFFs (labels NAME_label.png / .tif beside them) "
                        "(default: image_1 image_2 of the layout)")
    g.add_argument("--test_images", nargs="+", default=None,
                   help="test PNGs or GeoTIFFs, scored when NAME_label.png / .tif exists beside them "
                        "(default: image_3 image_4)")
    borrow_flags(g, generate_train_data.get_args_parser(), {"labels": "train_labels", "label_layer": "label_layer",
                                                         "label_field": "label_field", "class_names": "class_names",
                                                         "unlabelled": "unlabelled"})
    g.add_argument("--test_labels", default=None,
                   help="field polygons to score the test images against (the same --label_field, --label_layer "
                        "and --class_names), instead of NAME_label.tif beside them (default: none)")
    borrow_flags(g, generate_train_data.get_args_parser(), ["tile_size"], tile_size=None)
    borrow_flags(g, generate_test_data.get_args_parser(), ["stride"])
    train = engine.get_args_parser()
    borrow_flags(g, train, ["num_classes", "seed"], num_classes=None)
    g = p.add_argument_group("training (every model)")
    g.add_argument("--models", nargs="+", default=None, choices=list(ZOO),
                   help="the models of the ensemble, most trusted first (default: %(default)s)")
    borrow_flags(g, train, ["epochs", "val_every", "iters_per_epoch", "batch_size", "crop_size", "optimizer",
                            "base_lr", "input_norm", "scale_min", "scale_max", "backbone", "exp", "threads",
                            "device", "ema"], x, **{k: d[k] for k in ("optimizer", "base_lr", "scale_min",
                                                                   "scale_max", "exp")}, **lengths)
    g.add_argument("--max_iters", type=positive_int, default=None,
                   help="at most this many iterations per model: fewer iterations per epoch when the epochs would "
                        "pass it (default: %(default)s)")
    g.add_argument("--unet_epochs", type=positive_int, default=None, help="epochs of the U-Net (default: %(default)s)")
    g.add_argument("--unet_crop_size", type=positive_int, default=None,
                   help="U-Net training crop, a multiple of 32 (default: %(default)s)")
    g.add_argument("--unet_backbone", default="resnet34", help="U-Net encoder (default: %(default)s)")
    g.add_argument("--train_flags", default="",
                   help="more flags for every training script, in one string, e.g. \"--color_jitter 0.08\" "
                        "(default: none)")
    g.add_argument("--skip_training", action="store_true", help="reuse the checkpoints of an earlier run")
    g = p.add_argument_group("maps (every model's, validation and test alike)")
    borrow_flags(g, predict.get_args_parser(), PREDICT_FLAGS, x, tta=None, adapt_bn=d["adapt_bn"])
    borrow_flags(g, vote.get_args_parser(), ["weight_power"], x)
    borrow_flags(g, fill_hole.get_args_parser(), ["max_hole", "min_area", "radius", "edge_percentile"],
                 max_hole=d["max_hole"], min_area=d["min_area"])
    x.add_argument(
        "--tta_check", default="none", choices=["none", "flip", "d4"],
        help="also predict the first model with this TTA, a candidate stage of its own, to show what another TTA "
             "would add (none, or the same as --tta: no such stage; default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars in the steps")
    p._action_groups.append(p._action_groups.pop(p._action_groups.index(x)))  # listed last in --help
    for action in p._actions:  # what the pipeline derives when a flag is left at None
        if action.dest == "base_lr":
            action.help = action.help.replace("%(default)s", "0.001 with adamw, 0.03 with sgd")
        elif action.dest == "num_classes":
            action.help = action.help.replace("%(default)s", "the number of --class_names, else 4")
        elif action.dest == "stride":
            action.help = action.help.replace("half the window", "three quarters of --tile_size, a multiple of 8")
        elif action.dest in lengths:
            action.help = action.help.replace("%(default)s", "from --budget: " + ", ".join(
                f"{b} {_shown(v[action.dest])}" for b, v in BUDGETS.items()))
    return p


def _shown(value) -> str:
    return "none" if value is None else " ".join(map(str, value)) if isinstance(value, list) else str(value)


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


def check_flags(args: argparse.Namespace) -> None:
    """The training scripts' cross-flag rules, checked first so that the pipeline does not stop after tiling."""
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


def step_flags(args: argparse.Namespace) -> dict[str, list[str]]:
    """Flags every step of a kind gets: ``q`` (progress), ``nc`` (classes), ``device``."""
    return {"q": ["--quiet"] if args.quiet else [], "nc": ["--num_classes", str(args.num_classes)],
            "device": ["--device", args.device] if args.device else []}


def make_sources(args: argparse.Namespace, root: Path) -> tuple[list[str], list[Path]]:
    """The synthetic set first with ``--synthetic``; the training and test sources."""
    if args.synthetic:
        run(["make_synthetic_data.py", "--data_root", str(root), "--size", str(args.size), "--seed", str(args.seed),
             "--format", args.synthetic_format, *(["--no_shift"] if args.no_shift else []), *step_flags(args)["q"]])
    train_images = [str(Path(p).resolve()) for p in args.train_images] if args.train_images else \
        [str(source_path(root, TRAIN_SOURCE_DIR, name)) for name in DEFAULT_TRAIN_IMAGES]
    test_images = [Path(p).resolve() for p in args.test_images] if args.test_images else \
        [source_path(root, TEST_SOURCE_DIR, name) for name in DEFAULT_TEST_IMAGES]
    if args.train_labels:
        train_images = [str(p) for p in with_vector_labels(args, root, args.train_labels, train_images, "train")]
    if args.test_labels:
        test_images = with_vector_labels(args, root, args.test_labels, test_images, "test")
    return train_images, test_images


def with_vector_labels(args: argparse.Namespace, root: Path, labels: str, images: list, split: str) -> list[Path]:
    """``--train_labels`` / ``--test_labels``: each image linked into ``DATA_ROOT/sources/SPLIT/`` with its label
    burnt from the polygons beside it (``NAME_label.tif``, rasterize_labels.py's), so that every later step finds
    the label where it looks for one; returns the linked images."""
    options = LabelOptions(labels, args.label_field, args.label_layer, args.class_names, args.unlabelled,
                           args.num_classes)
    polygons = VectorLabels.read(options)
    folder = root / "sources" / split
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for image in map(Path, images):
        if image.suffix.lower() not in (".tif", ".tiff"):
            raise InputError(f"{image}: polygon labels need a georeferenced GeoTIFF image (a PNG has no CRS)")
        link = folder / image.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(image)
        done = rasterize_to(link, polygons, label_path(link))
        print(f"{image.name}: {done['on_image']} polygons burnt into {done['output']}"
              + (f" ({done['overlap_pixels']} pixels of overlapping classes ignored)" if done["overlap_pixels"] else ""),
              flush=True)
        out.append(link)
    return out


def cut_tiles(args: argparse.Namespace, root: Path, train_images: list[str], test_images: list[Path]) -> tuple:
    """Training tiles, the validation images and every split's test windows; returns ``(val, test, plain_root)``."""
    f, tile = step_flags(args), str(args.tile_size)
    run(["generate_train_data.py", "--data_root", str(root), "--images", *train_images, "--tile_size", tile,
         "--keep", "valid", "--val_fraction", "0.15", *f["nc"], *f["q"]])
    val_root = root / "val"  # a data root whose test images are the validation blocks
    run(["make_val_images.py", "--data_root", str(root), "--images", *train_images, "--val_root", str(val_root),
         *f["q"]])
    # make_val_images.py names each validation image after its training image (and keeps its format)
    val = Split("val", val_root, [val_root / TEST_SOURCE_DIR / Path(p).name for p in train_images])
    test = Split("test", root, test_images)
    stride = str(args.stride or max(8, (3 * args.tile_size // 4) // 8 * 8))
    for split in (val, test):
        run(["generate_test_data.py", "--data_root", str(split.data_root), "--images", *map(str, split.sources),
             "--tile_size", tile, "--stride", stride, *f["q"]])
    # the original's way for comparison: non-overlapping windows pasted side by side
    plain_root = root / "plain"
    run(["generate_test_data.py", "--data_root", str(plain_root), "--images", *map(str, test_images),
         "--tile_size", tile, "--stride", tile, *f["q"]])
    return val, test, plain_root


def train_models(args: argparse.Namespace, root: Path) -> dict[str, Path]:
    """Train every model of ``--models`` (unless ``--skip_training``); returns each one's ``_best.pth``."""
    f = step_flags(args)
    base_lr = args.base_lr if args.base_lr is not None else (0.001 if args.optimizer == "adamw" else 0.03)
    common = ["--data_root", str(root), *forward_flags(args, TRAIN_FLAGS[:2]), "--base_lr", str(base_lr),
              *forward_flags(args, TRAIN_FLAGS[2:]), "--workers", "1", "--seed", str(args.seed), *f["nc"],
              *f["device"], *f["q"], *shlex.split(args.train_flags), *forward_flags(args, ["iters_per_epoch", "threads"])]
    checkpoints = {}
    for name in args.models:
        script, model, suffix = ZOO[name]
        unet = model == "unet"
        backbone = args.unet_backbone if unet else args.backbone
        exp = f"{args.exp}_{suffix}"
        checkpoints[name] = checkpoint_path(model_dir(root), {"model": model, "backbone": backbone, "exp": exp}, "best")
        epochs = args.unet_epochs if unet else args.epochs
        if args.max_iters and not args.iters_per_epoch and not args.skip_training:
            _, cap = iterations(training_tiles(root), args.batch_size, epochs, args.max_iters)
            common = [*common, "--iters_per_epoch", str(cap)] if cap else common
        ema = ["--ema", str(args.ema)] if args.ema and suffix != "swa" else []  # SWA saves its own average
        if not args.skip_training:
            run([script, "--train", *common, *ema, "--exp", exp, "--backbone", backbone, "--epochs", str(epochs),
                 "--save_every", str(epochs), "--crop_size", str(args.unet_crop_size if unet else args.crop_size)])
    return checkpoints


def training_tiles(root: Path) -> int:
    """The number of training tiles (split ``train``) that generate_train_data.py listed."""
    path = tiles_csv(train_dir(root))
    return sum(r["split"] == "train" for r in read_tiles_csv(path, ["split"])) if path.exists() else 0


def predict_maps(args: argparse.Namespace, val: Split, test: Split, plain_root: Path,
                 checkpoints: dict[str, Path]) -> None:
    """Every model's maps (with probabilities) of the validation and the test images; ``--tta_check``'s extra
    maps of the first model; the first model's plain stitching of the test images."""
    f = step_flags(args)
    first = args.models[0]
    kept = [k for k in PREDICT_FLAGS if k not in ("tta", "blend")]  # what the plain stitching shares
    maps = forward_flags(args, ["tta", "blend", *kept])
    for split in (val, test):
        predict = ["predict.py", "--data_root", str(split.data_root), "--images", *map(str, split.sources),
                   "--output_dir", str(split.submit), *f["device"], *f["q"]]
        preview = [] if split is test else ["--preview_size", "0"]
        for name in args.models:
            run([*predict, "--checkpoint", str(checkpoints[name]), "--name", name, *maps, "--save_probs", *preview])
        if tta_checked(args):  # what another TTA adds, on the first model
            run([*predict, "--checkpoint", str(checkpoints[first]), "--name", f"{first}_tta",
                 *forward_flags(args, ["blend", *kept]), "--tta", args.tta_check, "--preview_size", "0"])
    run(["predict.py", "--data_root", str(plain_root), "--images", *map(str, test.sources), "--output_dir",
         str(test.submit), "--checkpoint", str(checkpoints[first]), "--blend", "none", *forward_flags(args, kept),
         "--name", "plain", "--preview_size", "0", *f["device"], *f["q"]])


def tta_checked(args: argparse.Namespace) -> bool:
    return args.tta_check not in ("none", args.tta)


class Table:
    """The candidate stages and their scores: one row per stage, validation and test."""

    def __init__(self, val: Split, test: Split, num_classes: int):
        self.val, self.test, self.num_classes = val, test, num_classes
        self.rows: list[dict] = []

    def add(self, title: str, stage: str, candidate: bool = True, splits: tuple | None = None) -> dict:
        row = {"stage": title, "key": stage, "candidate": candidate}
        for split in (self.val, self.test):
            cm = score_stage(split, stage, self.num_classes) if split in (splits or (self.val, self.test)) else None
            row[f"{split.name}_cm"] = cm
            row[split.name] = None if cm is None else iou_from_confusion(cm)[1]
        self.rows.append(row)
        return row


def vote_candidates(args: argparse.Namespace, table: Table) -> None:
    """The equal, weighted and weighted soft votes of every model's maps, each a candidate."""
    nc, q = step_flags(args)["nc"], step_flags(args)["q"]
    power = ["--weight_power", str(args.weight_power)]
    votes = [(f"vote of the {len(args.models)} models, equal weights", "vote", ["--weights", "equal"]),
             (f"weighted vote (--weights auto, power {args.weight_power:g})", "wvote", ["--weights", "auto", *power]),
             (f"weighted soft vote (--soft --weights auto, power {args.weight_power:g})", "wsoft",
              ["--soft", "--weights", "auto", *power])]
    for title, stage, flags in votes:
        for split in (table.val, table.test):
            for image in split.images:
                run(["vote.py", "--inputs", *(str(split.map(image, m)) for m in args.models),
                     "--output", str(split.map(image, stage)), *nc, *flags, *q])
        table.add(title, stage)


def cleanup_candidates(args: argparse.Namespace, table: Table, base: dict) -> None:
    """The clean-ups of the best candidate so far (``base``), each a candidate."""
    nc, q = step_flags(args)["nc"], step_flags(args)["q"]
    cleanups = [("morph", ["--method", "morph", "--max_hole", str(args.max_hole)],
                 f"fill enclosed holes (morph, max {args.max_hole})"),
                ("area", ["--method", "area", "--min_area", str(args.min_area)],
                 f"remove regions < {args.min_area} px (area)"),
                ("close", ["--method", "close", "--radius", str(args.radius)], f"closing (radius {args.radius})"),
                ("segments", ["--method", "segments", "--edge_percentile", f"{args.edge_percentile:g}"],
                 f"segment vote (edges: top {100 - args.edge_percentile:g}% gradients)")]
    for method, flags, title in cleanups:
        stage = f"{base['key']}_{method}"
        for split in (table.val, table.test):
            for image, src in zip(split.images, split.sources):
                run(["fill_hole.py", "--input", str(split.map(image, base["key"])), "--source", str(src),
                     "--output", str(split.map(image, stage)), *flags, *nc, *q])
        table.add(f"{base['key']} + {title}", stage)


def main(args: argparse.Namespace) -> list[dict]:
    t_start = time.perf_counter()
    root = Path(args.data_root).resolve()
    check_output_dir(root)
    apply_budget(args, None)
    args.num_classes = check_class_names(args.class_names, args.num_classes)
    check_flags(args)
    train_images, test_images = make_sources(args, root)
    print_plan(args, train_images, test_images)
    val, test, plain_root = cut_tiles(args, root, train_images, test_images)
    checkpoints = train_models(args, root)
    predict_maps(args, val, test, plain_root, checkpoints)
    table = Table(val, test, args.num_classes)
    first = args.models[0]
    table.add("plain stitching (original's way), " + first, "plain", candidate=False, splits=(test,))
    for name in args.models:
        table.add(f"{name} + TTA ({args.tta})" if args.tta != "none" else name, name)
    if tta_checked(args):
        table.add(f"{first} + TTA ({args.tta_check})", f"{first}_tta")
    best_single = choose(table.rows)
    if len(args.models) > 1:
        vote_candidates(args, table)
    cleanup_candidates(args, table, choose(table.rows))
    rows = finish(args, table, best_single)
    final_pictures(test, args.num_classes)
    print(f"\npipeline finished in {(time.perf_counter() - t_start) / 60:.1f} min; maps in {test.submit}")
    return rows


def model_kinds(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``(model, backbone)`` of every model of ``--models``."""
    return [(ZOO[m][1], args.unet_backbone if ZOO[m][1] == "unet" else args.backbone) for m in args.models]


def print_plan(args: argparse.Namespace, train_images: list[str], test_images: list[Path]) -> None:
    """The budget, what it trains and predicts, and the expected time, before any work."""
    cap = f" (at most {args.max_iters} iterations each)" if args.max_iters else ""
    plan = (f"budget {args.budget}: {', '.join(args.models)}; {args.epochs} epochs{cap}, {args.tile_size}-px tiles, "
            f"{args.crop_size}-px crops, TTA {args.tta}")
    try:
        mpx = lambda paths: sum(i.height * i.width for i in map(check_image, paths)) / 1e6  # noqa: E731
        train_mpx, test_mpx = mpx(train_images), mpx(test_images)
    except InputError:  # a missing or bad source: the step that reads it says so
        print(plan, flush=True)
        return
    minutes = estimate_minutes(args, model_kinds(args), train_mpx, test_mpx)
    print(f"{plan}; {train_mpx:.1f} Mpx of training and {test_mpx:.1f} Mpx of test imagery: expected about "
          f"{minutes:.0f} min on a 2-core CPU like the development machine (a GPU takes a fraction of that)",
          flush=True)


def final_pictures(test: Split, num_classes: int) -> None:
    """A picture of every final test map with its legend: ``IMAGE_predict_errors.png`` (the map, and where it is
    wrong as which class) where the image has a label, else ``IMAGE_predict_preview.png``."""
    names = class_names(num_classes)
    for image, src in zip(test.images, test.sources):
        final, label = test.map(image, None), label_path(src)
        out = errors_path(final) if label.exists() else preview_path(final)
        write_map_preview(final, src, out, names, label if label.exists() else None)
        print(f"picture of the final map: {out}")


def finish(args: argparse.Namespace, table: Table, best_single: dict) -> list[dict]:
    """The final map (the candidate best on validation) copied to ``IMAGE_predict``, the table printed and
    written to ``submit/scores/pipeline.json``."""
    rows, names = table.rows, args.models
    final = choose(rows)
    for split in (table.val, table.test):
        for image in split.images:
            copy_atomic(split.map(image, final["key"]), split.map(image, None))
    final_row = dict(final, stage=f"final map = {final['key']} (chosen on validation)", candidate=False)
    rows.append(final_row)
    print(f"\nbest single model on validation: {best_single['key']}; final map chosen on validation: {final['key']}")
    if any(r["test"] is not None for r in rows):
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
    write_scores(table.test.submit / "scores" / "pipeline.json", rows, best_single, final)
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
