"""Checks of sources, labels and maps before any work starts (one clear :class:`InputError` line each)."""

from __future__ import annotations

import os

import numpy as np

from cropmap.core.errors import InputError
from cropmap.raster.base import IGNORE, RasterInfo
from cropmap.raster.formats import histogram, raster_info


def check_image(path: str | os.PathLike) -> RasterInfo:
    """Validate a source image: 8-bit RGB or RGBA. Returns its :class:`RasterInfo`."""
    info = raster_info(path)
    if info.bit_depth != 8:
        raise InputError(f"{info.path}: unsupported bit depth {info.bit_depth} (expected 8-bit RGB or RGBA)")
    if info.channels not in (3, 4):
        raise InputError(f"{info.path}: unsupported colour type {info.color} (expected 8-bit RGB or RGBA)")
    return info


def _same_size(info: RasterInfo, like: RasterInfo | None, what: str) -> None:
    if like is not None and info.shape != like.shape:
        raise InputError(
            f"{info.path}: {what} size {info.height}x{info.width} differs from {like.path} "
            f"({like.height}x{like.width}, H x W)"
        )


def check_georef(info: RasterInfo, like: RasterInfo | None, what: str) -> None:
    """:class:`InputError` when ``info`` and ``like`` are both georeferenced and lie differently
    (CRS, when both have one, or transform): a label or map must lie on its image."""
    if like is None or info.georef is None or like.georef is None:
        return
    problem = like.georef.differs(info.georef)
    if problem:
        raise InputError(f"{info.path}: {what} {problem} of {like.path}")


def check_label(path: str | os.PathLike, image: RasterInfo | None = None) -> RasterInfo:
    """Validate a label's header: 8-bit single channel, the size of ``image`` when given, and its
    CRS and transform when both are georeferenced.

    Label values are checked separately with :func:`check_label_values` (that needs a decode).
    """
    info = raster_info(path)
    if info.bit_depth != 8:
        raise InputError(f"{info.path}: unsupported bit depth {info.bit_depth} (labels must be 8-bit single-channel)")
    if info.channels != 1 or info.color == "palette":
        raise InputError(f"{info.path}: labels must be 8-bit single-channel (grayscale), got {info.color}")
    _same_size(info, image, "label")
    check_georef(info, image, "label")
    return info


def check_map(path: str | os.PathLike, like: RasterInfo | None = None) -> RasterInfo:
    """Validate a map's header: 8-bit single channel, the size (and georeferencing, when both have
    one) of ``like`` when given."""
    info = raster_info(path)
    if info.bit_depth != 8 or info.channels != 1 or info.color == "palette":
        raise InputError(f"{info.path}: maps must be 8-bit single-channel, got {info.bit_depth}-bit {info.color}")
    _same_size(info, like, "map")
    check_georef(info, like, "map")
    return info


def check_label_values(path: str | os.PathLike, num_classes: int) -> np.ndarray:
    """Check that every label value is in ``0..num_classes-1`` or 255; return the histogram ``int64 [256]``."""
    hist = histogram(path)
    allowed = np.zeros(256, bool)
    allowed[:num_classes] = True
    allowed[IGNORE] = True
    bad = np.flatnonzero((hist > 0) & ~allowed)
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:8])
        raise InputError(f"{path}: label values outside 0..{num_classes - 1} (and not 255): {shown}")
    return hist


def check_map_values(strip: np.ndarray, num_classes: int, path) -> None:
    """A strip of a map holds only ``0..num_classes-1`` (:class:`InputError` naming ``path`` otherwise)."""
    if strip.size and int(strip.max()) >= num_classes:
        bad = int(strip[strip >= num_classes][0])
        raise InputError(f"{path}: map value {bad} outside 0..{num_classes - 1}")
