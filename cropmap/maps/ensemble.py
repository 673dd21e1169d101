"""Weighted ensembling: which checkpoint made a map, how much each model's vote weighs.

Every map that ``predict.py`` writes gets a sidecar ``X.json`` beside ``X.png`` (:func:`write_sidecar`)
naming the checkpoint that made it and that checkpoint's validation scores (per-class IoU, mIoU, the
classes absent from its validation set), and how it was predicted (TTA, blending). ``vote.py
--weights auto`` reads the sidecars and weighs each model per class (:func:`auto_weights`):

    w[i, c] = IoU[i, c] ** power / sum_j IoU[j, c] ** power

so every class's weights sum to 1 (no class is favoured over another, which would shift the class
priors of the vote, worst for rare classes), and within a class the models that validated better on
it weigh more. A class a model could not be measured on (absent from its validation set, or no
per-class scores in the checkpoint) takes that model's validation mIoU instead. The weighted vote of
``N`` maps scores class ``c`` at a pixel as ``sum_i w[i, c] * [map_i == c]`` (hard) or
``sum_i w[i, c] * p_i(c)`` (``--soft``).

No weighting makes an ensemble better than its best member by itself: that is decided on validation
data. ``run_pipeline.py`` predicts the validation blocks of the training images (``make_val_images.py``)
with every model, scores each single model and each ensemble there, and keeps the best; the best
single model is always a candidate, so the chosen map is never worse than it on validation data.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from cropmap.core.errors import InputError
from cropmap.core.files import atomic_path

#: Ways ``vote.py`` weighs its inputs: ``equal`` (one vote each) or ``auto`` (per class, from the sidecars).
WEIGHT_MODES = ("equal", "auto")


def sidecar_path(map_path: str | os.PathLike) -> Path:
    """``X.json`` beside the map ``X.png``."""
    p = Path(map_path)
    return p.with_suffix(".json")


def checkpoint_summary(path: str | os.PathLike, state: dict) -> dict:
    """What a sidecar says about a checkpoint: path, model, epoch and its validation scores.

    ``val_iou`` lists the per-class validation IoU (``None`` where not measured: absent from the
    validation labels, or undefined); ``val_absent`` the absent classes.
    """
    args = state.get("args", {})
    metrics = state.get("metrics") or {}
    absent = [int(c) for c in metrics.get("absent", [])]
    iou = metrics.get("iou")
    clean = lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)  # noqa: E731
    return {
        "checkpoint": str(Path(path).resolve()),
        "model": args.get("model"),
        "backbone": args.get("backbone"),
        "exp": args.get("exp"),
        "loss": args.get("loss"),
        "epoch": state.get("epoch"),
        "val_iou": None if iou is None else [None if c in absent else clean(v) for c, v in enumerate(iou)],
        "val_mIoU": clean(metrics.get("mIoU")),
        "val_absent": absent,
    }


def write_sidecar(map_path: str | os.PathLike, info: dict) -> Path:
    """Write ``info`` as JSON beside ``map_path`` (atomically); returns the sidecar's path."""
    path = sidecar_path(map_path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")
    return path


def read_sidecar(map_path: str | os.PathLike) -> dict:
    """The sidecar of a map (InputError naming the map when there is none or it is not JSON)."""
    path = sidecar_path(map_path)
    if not path.is_file():
        raise InputError(f"{map_path}: no sidecar {path.name} saying which checkpoint made it "
                         "(maps of predict.py have one; --weights auto needs it)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None


def is_vote(map_path: str | os.PathLike) -> bool:
    """True for a map that vote.py wrote (its sidecar says so): not a model's map to vote again."""
    side = sidecar_path(map_path)
    try:
        return side.is_file() and "vote" in json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return False


def class_scores(info: dict, num_classes: int) -> np.ndarray:
    """``float64 [C]`` validation IoU per class of one sidecar, unmeasured classes filled with its mIoU.

    InputError when the sidecar carries no validation score at all.
    """
    iou = info.get("val_iou")
    miou = info.get("val_mIoU")
    if iou is None and miou is None:
        raise InputError(f"sidecar of {info.get('map', '?')}: checkpoint {info.get('checkpoint')} has no validation "
                         "scores (trained without validation?); use --weights equal or give weights")
    if iou is not None and len(iou) != num_classes:
        raise InputError(f"sidecar of {info.get('map', '?')}: {len(iou)} class scores, expected {num_classes}")
    measured = [v for v in (iou or [])[1:] if v is not None]
    fill = miou if miou is not None else (float(np.mean(measured)) if measured else 0.0)
    out = np.array([fill if iou is None or iou[c] is None else iou[c] for c in range(num_classes)], np.float64)
    return np.clip(out, 0.0, 1.0)


def normalise_weights(scores: np.ndarray, power: float = 1.0) -> np.ndarray:
    """Per-class weights ``float32 [N, C]`` from scores ``[N, C]``: ``s ** power`` divided by its sum over
    the models (equal weights for a class where every model scores 0)."""
    s = np.asarray(scores, np.float64) ** float(power)
    total = s.sum(axis=0, keepdims=True)
    n = s.shape[0]
    return np.where(total > 0, s / np.where(total > 0, total, 1.0), 1.0 / n).astype(np.float32)


def auto_weights(map_paths: Sequence[str | os.PathLike], num_classes: int, power: float = 1.0) -> np.ndarray:
    """Per-class vote weights ``float32 [N, C]`` of the maps, from their sidecars (see the module notes)."""
    scores = []
    for p in map_paths:
        info = read_sidecar(p)
        info.setdefault("map", str(p))
        scores.append(class_scores(info, num_classes))
    return normalise_weights(np.stack(scores), power)


def parse_weights(text: str, n_inputs: int, num_classes: int) -> np.ndarray:
    """``--weights`` given as numbers, one per input (``0.5,0.3,0.2``): ``float32 [N, C]`` (same for every class)."""
    try:
        values = [float(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise InputError(f"--weights {text!r}: expected {', '.join(WEIGHT_MODES)} or one number per input") from None
    if len(values) != n_inputs or min(values) < 0 or sum(values) <= 0:
        raise InputError(f"--weights {text!r}: need {n_inputs} non-negative numbers (one per input) with a positive sum")
    return np.repeat(np.array(values, np.float32)[:, None], num_classes, axis=1)


def weighted_scores(maps: np.ndarray, weights: np.ndarray, probs: np.ndarray | None = None) -> np.ndarray:
    """Class scores of a weighted vote of one strip: ``float32 [C, h, W]``.

    Args:
        maps: ``uint8 [N, h, W]`` the inputs' class maps.
        weights: ``float32 [N, C]`` weight of input ``i``'s vote for class ``c``.
        probs: ``uint8 [N, C, h, W]`` the inputs' probabilities (255 = 1) for a soft vote; None: hard.
    """
    n, c = weights.shape
    scores = np.zeros((c,) + maps.shape[1:], np.float32)
    for i in range(n):
        if probs is None:
            scores += (np.arange(c, dtype=maps.dtype)[:, None, None] == maps[i][None]) * weights[i][:, None, None]
        else:
            scores += probs[i].astype(np.float32) * weights[i][:, None, None]
    return scores


# ---- validation images: the validation blocks of the training images, in the test layout --------


def val_rectangles(rows: Sequence[dict], image: str) -> np.ndarray:
    """``int64 [K, 3]`` (y, x, size) of the ``val`` tiles of ``image`` in ``tiles.csv`` rows."""
    sel = [(int(r["y"]), int(r["x"]), int(r["size"])) for r in rows if r["image"] == image and r.get("split") == "val"]
    return np.array(sel, np.int64).reshape(-1, 3)


def val_mask_rows(rects: np.ndarray, y0: int, y1: int, width: int) -> np.ndarray:
    """``bool [y1 - y0, width]``: the pixels of rows ``y0..y1`` inside one of the rectangles ``rects`` (y, x, size)."""
    mask = np.zeros((y1 - y0, width), bool)
    hit = rects[(rects[:, 0] < y1) & (rects[:, 0] + rects[:, 2] > y0)]
    for y, x, s in hit:
        mask[max(y - y0, 0) : min(y + s - y0, y1 - y0), max(x, 0) : min(x + s, width)] = True
    return mask


def write_val_image(image: str | os.PathLike, label: str | os.PathLike, rects: np.ndarray,
                    out_image: str | os.PathLike, out_label: str | os.PathLike, progress: bool = False) -> float:
    """Copy a training image and its label with everything outside the validation tiles made no-data.

    ``out_image`` is RGBA: the source pixels inside ``rects`` (alpha 255 where the source is valid), alpha 0
    and RGB 0 elsewhere; ``out_label`` the label there, 0 elsewhere. Both stream in strips (memory: a
    strip of each). Returns the share of the image's pixels that stay valid.
    """
    from cropmap.core.cli import progress as progress_bar
    from cropmap.raster import check_image, check_label, iter_zip, open_writer, strip_rows, valid_mask

    info = check_image(image)
    check_label(label, info)
    h, w = info.height, info.width
    kept = 0
    with open_writer(out_image, w, h, 4, like=info, role="data") as wi, open_writer(
        out_label, w, h, 1, like=info, role="label"
    ) as wl, progress_bar(total=h, desc=Path(out_image).name, unit="row", disable=not progress, leave=False) as bar:
        for y, (rgba, lab) in iter_zip([image, label], strip_rows(w, bytes_per_pixel=4 + 1)):
            keep = val_mask_rows(rects, y, y + len(lab), w) & valid_mask(rgba[..., 3])
            out = np.where(keep[..., None], rgba, 0).astype(np.uint8)
            out[..., 3] = np.where(keep, 255, 0)
            wi.write(out)
            wl.write(np.where(keep, lab, 0).astype(np.uint8))
            kept += int(keep.sum())
            bar.update(len(lab))
    return kept / max(h * w, 1)
