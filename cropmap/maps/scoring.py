"""The contract's metric on full-size maps, streamed: IoU over the valid pixels (alpha 255) of an image."""

from __future__ import annotations

import os

import numpy as np

from cropmap.core.cli import progress as progress_bar

from cropmap.core.errors import InputError
from cropmap.raster import check_image, check_label, check_map, iter_zip, strip_rows, valid_mask
from cropmap.core.metrics import ConfusionMatrix


def score_map(
    pred: str | os.PathLike,
    label: str | os.PathLike,
    source: str | os.PathLike | None = None,
    num_classes: int = 4,
    progress: bool = True,
) -> ConfusionMatrix:
    """Confusion matrix of a predicted map against its label, over the source's valid pixels.

    Args:
        pred: map PNG, ``uint8 [H, W]`` in ``0..C-1`` (values at uncounted pixels are not checked).
        label: label PNG, same size, ``0..C-1`` or 255 (ignored).
        source: the source image; pixels whose alpha is not 255 are not counted (None: all counted).

    Streams the three files in strips (memory: one strip of each). Raises :class:`InputError` naming the
    file for a missing/corrupt file, different sizes or values out of range.
    """
    paths = [pred, label]
    if source is not None:
        src = check_image(source)
        paths.append(source)
        ref = src
    else:
        ref = None
    lab = check_label(label, ref)
    check_map(pred, lab)
    cm = ConfusionMatrix(num_classes)
    with progress_bar(total=lab.height, desc="score", unit="row", disable=not progress, leave=False) as bar:
        rows = strip_rows(lab.width, bytes_per_pixel=1 + 1 + 4)  # map, label, RGBA source
        for _, strips in iter_zip(paths, rows):
            p, t = strips[0], strips[1]
            valid = valid_mask(strips[2][..., 3]) if source is not None else None
            try:
                cm.update(p, t, valid)
            except ValueError as e:
                where = label if "label" in str(e) else pred
                raise InputError(f"{where}: {e}") from None
            bar.update(len(p))
    return cm


def score_dict(cm: ConfusionMatrix) -> dict:
    """``{"iou": [..], "mIoU", "mIoU_all", "confusion": [[..]]}`` (NaN becomes None, for JSON)."""
    res = cm.compute()

    def clean(v):
        return None if isinstance(v, float) and np.isnan(v) else v

    return {
        "iou": [clean(v) for v in res["iou"]],
        "mIoU": clean(res["mIoU"]),
        "mIoU_all": clean(res["mIoU_all"]),
        "confusion": res["confusion"],
    }
