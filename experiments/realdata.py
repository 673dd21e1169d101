"""Place-wise cross-validation of the pipeline on real imagery (any folder of ``NAME.png`` + ``NAME_label.png``).

Run by hand from the repository root::

    python -m experiments.realdata --config quick -- --budget quick          # one setting: run_pipeline flags after --
    python -m experiments.realdata --config quick_imagenet -- --budget quick --input_norm imagenet
    python -m experiments.realdata --baseline                                # the pixel baseline alone
    python -m experiments.realdata --table                                   # every setting measured so far

The places (the images of ``--data``, default ``../shared/real/naip_fields``) are dealt into ``--folds``
folds (place ``i`` of the sorted list goes to fold ``i % folds``); each fold's places are the test images of
one ``run_pipeline.py`` run whose training images are all the other places, so that no test place is seen
in training or validation. Each run's table (``submit/scores/pipeline.json``) gives every stage's validation
and test scores; the study keeps, per fold, the final map's test IoU of every class and the run's minutes,
and prints per setting the IoU of ``--class_index`` (default 1: the field class) per fold, its mean and its
spread (max - min), and the same for every stage the runs share (each single model, the votes, the
clean-ups), so that a test-time choice can be read off one setting's runs.

The pixel baseline (``--baseline``): a linear discriminant (shared covariance) on each pixel's colour and
the mean and standard deviation of each band in the 15 x 15 window around it, fitted on up to
``--baseline_pixels`` pixels of the fold's training places, scored with the same metric on its test places:
the floor every table is read against.

Everything lands in ``--work`` (default ``/tmp/realdata``): one folder per setting and fold (delete it to
rerun that fold; a finished fold is not run again) and ``results.json`` with every number printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from cropmap.core.cli import positive_int, run_cli
from cropmap.core.errors import InputError
from cropmap.core.metrics import ConfusionMatrix, iou_from_confusion
from cropmap.raster import read_png

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "real" / "naip_fields"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Place-wise cross-validation of run_pipeline.py on real imagery.",
                                add_help=add_help)
    p.add_argument("--data", default=str(DEFAULT_DATA),
                   help="folder of NAME.png images with NAME_label.png beside them (default: %(default)s)")
    p.add_argument("--work", default="/tmp/realdata", help="working folder of the runs and results (default: %(default)s)")
    p.add_argument("--folds", type=positive_int, default=5, help="number of folds (default: %(default)s)")
    p.add_argument("--only", type=int, nargs="+", default=None, help="run these folds only (default: all)")
    p.add_argument("--config", default=None, help="name of the setting; its run_pipeline.py flags follow a --")
    p.add_argument("--models_from", default=None,
                   help="reuse the trained models of this setting (its checkpoints, hard-linked; run_pipeline.py "
                        "--skip_training): for settings that change only prediction and clean-up (default: none)")
    p.add_argument("--num_classes", type=positive_int, default=2, help="classes of the labels (default: %(default)s)")
    p.add_argument("--class_index", type=int, default=1, help="the class whose IoU the tables show (default: %(default)s)")
    p.add_argument("--baseline", action="store_true", help="measure the pixel baseline (linear discriminant)")
    p.add_argument("--baseline_pixels", type=positive_int, default=400_000,
                   help="training pixels the baseline is fitted on, drawn evenly (default: %(default)s)")
    p.add_argument("--table", action="store_true", help="print the table of every setting measured")
    return p


def places(data: Path) -> list[str]:
    names = sorted(p.stem for p in data.glob("*.png") if not p.stem.endswith("_label"))
    if not names:
        raise InputError(f"{data}: no NAME.png images")
    return names


def folds(names: list[str], k: int) -> list[list[str]]:
    """Place ``i`` of the sorted names goes to fold ``i % k``."""
    return [names[i::k] for i in range(k)]


def link_places(data: Path, names: list[str], folder: Path) -> list[str]:
    """Symbolic links to the images and their labels in ``folder``; returns the images' paths."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        for stem in (name, f"{name}_label"):
            link = folder / f"{stem}.png"
            if not link.exists():
                os.symlink(data / f"{stem}.png", link)
        out.append(str(folder / f"{name}.png"))
    return out


def run_fold(args, fold: int, test: list[str], train: list[str], flags: list[str]) -> dict:
    """One run_pipeline.py run; its table, read back, and its minutes."""
    root = Path(args.work) / args.config / f"fold{fold}"
    scores = root / "submit" / "scores" / "pipeline.json"
    done = root / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    data = Path(args.data)
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "--data_root", str(root / "run"),
           "--train_images", *link_places(data, train, root / "train"),
           "--test_images", *link_places(data, test, root / "test"),
           "--num_classes", str(args.num_classes), "--quiet", *flags]
    root.mkdir(parents=True, exist_ok=True)
    if args.models_from:
        src = Path(args.work) / args.models_from / f"fold{fold}" / "run" / "model"
        if not src.is_dir():
            raise InputError(f"{src}: no models of setting {args.models_from} for fold {fold}")
        dst = root / "run" / "model"
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.glob("*.pth"):
            if not (dst / f.name).exists():
                os.link(f, dst / f.name)
        cmd.append("--skip_training")
    print(f"fold {fold}: {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    t0 = time.perf_counter()
    with open(root / "log.txt", "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    minutes = (time.perf_counter() - t0) / 60
    if rc:
        raise InputError(f"fold {fold} failed (exit {rc}); see {root / 'log.txt'}")
    scores = root / "run" / "submit" / "scores" / "pipeline.json"
    table = json.loads(scores.read_text())
    stages = {s["key"] if not s["stage"].startswith("final map") else "final": s for s in table["stages"]}
    result = {"fold": fold, "test_places": test, "minutes": round(minutes, 2), "final": table["final"],
              "stages": {k: {"test_iou": (s["test"] or {}).get("iou"), "val_mIoU": (s["val"] or {}).get("mIoU"),
                             "test_confusion": (s["test"] or {}).get("confusion")} for k, s in stages.items()}}
    done.write_text(json.dumps(result, indent=1) + "\n")
    return result


# ---- the pixel baseline -------------------------------------------------------------------------------------------


def pixel_features(rgb: np.ndarray, window: int = 15) -> np.ndarray:
    """``uint8 [H, W, C]`` -> ``float32 [H * W, 3C]``: each band's value, local mean and local standard deviation
    over ``window`` x ``window`` pixels (reflected at the border)."""
    x = rgb.astype(np.float32) / 255.0
    mean = cv2.blur(x, (window, window), borderType=cv2.BORDER_REFLECT)
    sq = cv2.blur(x * x, (window, window), borderType=cv2.BORDER_REFLECT)
    std = np.sqrt(np.clip(sq - mean * mean, 0, None))
    return np.concatenate([x, mean, std], axis=-1).reshape(-1, 3 * rgb.shape[-1])


def fit_lda(x: np.ndarray, y: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear discriminant with a shared covariance: ``(W [D, K], b [K])`` so that ``argmax(x @ W + b)`` is the
    class; priors from the training pixels."""
    x = x.astype(np.float64)
    means = np.stack([x[y == c].mean(0) for c in range(num_classes)])
    centred = x - means[y]
    cov = centred.T @ centred / max(len(x) - num_classes, 1) + 1e-6 * np.eye(x.shape[1])
    inv = np.linalg.inv(cov)
    prior = np.bincount(y, minlength=num_classes) / len(y)
    w = inv @ means.T
    b = -0.5 * np.einsum("kd,dk->k", means, w) + np.log(prior)
    return w, b


def baseline_fold(args, test: list[str], train: list[str]) -> np.ndarray:
    """Confusion matrix of the pixel baseline on the fold's test places."""
    data, n = Path(args.data), args.num_classes
    per_image = max(1, args.baseline_pixels // len(train))
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for name in train:
        label = read_png(data / f"{name}_label.png").reshape(-1)
        feats = pixel_features(read_png(data / f"{name}.png")[..., :3])
        keep = np.flatnonzero(label < n)
        pick = rng.choice(keep, min(per_image, len(keep)), replace=False)
        xs.append(feats[pick])
        ys.append(label[pick].astype(np.int64))
    w, b = fit_lda(np.concatenate(xs), np.concatenate(ys), n)
    cm = ConfusionMatrix(n)
    for name in test:
        label = read_png(data / f"{name}_label.png")
        pred = (pixel_features(read_png(data / f"{name}.png")[..., :3]) @ w + b).argmax(1).reshape(label.shape)
        cm.update(pred.astype(np.uint8), label)
    return np.asarray(cm.matrix.numpy())


# ---- tables -------------------------------------------------------------------------------------------------------


def summary(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ({max(values) - min(values):.3f})" if values else "-"


def print_table(results: dict, k: int, cls: int) -> None:
    print(f"\nclass {cls} IoU on the held-out places, per fold; mean (spread = max - min):\n")
    print("| setting | stage | " + " | ".join(f"fold {i}" for i in range(k)) + " | mean (spread) | minutes/fold |")
    print("|---|---|" + "---|" * (k + 2))
    for name, runs in results.items():
        if name == "baseline":
            vals = [runs[str(i)][cls] for i in range(k) if str(i) in runs]
            print(f"| pixel baseline (LDA) | - | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {summary(vals)} | - |")
            continue
        folds_done = [runs[str(i)] for i in range(k) if str(i) in runs]
        stages = [s for s in folds_done[0]["stages"]] if folds_done else []
        for stage in stages:
            vals = [r["stages"][stage]["test_iou"][cls] for r in folds_done
                    if stage in r["stages"] and r["stages"][stage]["test_iou"]]
            if len(vals) != len(folds_done):
                continue
            minutes = summary([r["minutes"] for r in folds_done]).split()[0] if stage == "final" else ""
            print(f"| {name} | {stage} | " + " | ".join(f"{v:.3f}" for v in vals)
                  + " | -" * (k - len(vals)) + f" | {summary(vals)} | {minutes} |")


def main(args: argparse.Namespace, flags: list[str] | None = None) -> dict:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    store = work / "results.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    names = places(Path(args.data))
    split = folds(names, args.folds)
    todo = args.only if args.only is not None else range(args.folds)
    for fold in todo:
        test = split[fold]
        train = [n for n in names if n not in test]
        if args.baseline:
            cm = baseline_fold(args, test, train)
            results.setdefault("baseline", {})[str(fold)] = [None if np.isnan(v) else float(v)
                                                             for v in iou_from_confusion(cm)[0]]
            print(f"baseline fold {fold}: IoU {results['baseline'][str(fold)]}", flush=True)
        if args.config:
            results.setdefault(args.config, {})[str(fold)] = run_fold(args, fold, test, train, flags or [])
            print(f"{args.config} fold {fold}: final IoU {results[args.config][str(fold)]['stages']['final']['test_iou']}, "
                  f"{results[args.config][str(fold)]['minutes']} min", flush=True)
        store.write_text(json.dumps(results, indent=1) + "\n")
    print_table(results, args.folds, args.class_index)
    return results


if __name__ == "__main__":
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    sys.exit(run_cli(lambda a: main(a, extra), get_args_parser().parse_args(argv)))
