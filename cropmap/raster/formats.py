"""Which module reads and writes a file, chosen by its suffix.

A format is a module with ``FORMAT`` (its name), ``info(path) -> RasterInfo`` (header facts, cheap, no
decode), ``Reader(path, rgba)`` (sequential rows into caller arrays: ``width``, ``height``,
``row_shape``, ``y``, ``read_into(out)``, ``skip(n)``), ``StripWriter(path, width, height, channels,
like=..., role=...)`` (top-to-bottom writer renamed into place when complete) and ``histogram(path)``
(value counts of a single-channel file). Adding a format is one such module and one line in :data:`FORMATS`.

PNG is read by pyvips (its sequential decoder is faster than GDAL's for PNG, and a PNG has nothing for
GDAL to add); GeoTIFF by rasterio/GDAL (georeferencing, masks and nodata, BigTIFF, every TIFF compression,
and windows read straight from the blocks that hold them). See the README's figures.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cropmap.core.errors import InputError
from cropmap.raster import geotiff, png
from cropmap.raster.base import RasterInfo

#: file suffix (lower case) -> format module
FORMATS = {".png": png, ".tif": geotiff, ".tiff": geotiff}


def format_of(path: str | os.PathLike):
    """The format module of ``path`` by its suffix; :class:`InputError` for a suffix no format reads."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"{path}: unsupported file type {suffix or '(none)'!r} (expected {', '.join(FORMATS)})")
    return FORMATS[suffix]


def raster_info(path: str | os.PathLike) -> RasterInfo:
    """Header facts of a raster file (no decode); :class:`InputError` if missing, damaged or unsupported."""
    return format_of(path).info(path)


def open_reader(path: str | os.PathLike, rgba: bool = False):
    """A sequential reader of ``path`` (see the module docstring); ``rgba`` appends alpha 255 to RGB files."""
    return format_of(path).Reader(path, rgba=rgba)


def open_writer(path: str | os.PathLike, width: int, height: int, channels: int = 1,
                like: RasterInfo | None = None, role: str = "map"):
    """A streaming writer of an 8-bit raster in the format of ``path``'s suffix.

    ``like``: the source the output belongs to (a format that can keeps its georeferencing).
    ``role`` of a single-channel output: ``map`` (class map), ``label`` or ``data`` (e.g. probabilities);
    a format that can marks it (GeoTIFF: colour table for maps and labels, nodata 0 for maps).
    """
    return format_of(path).StripWriter(path, width, height, channels, like=like, role=role)


def histogram(path: str | os.PathLike) -> np.ndarray:
    """Counts of each value 0..255 of a single-channel 8-bit raster, one streaming pass: ``int64 [256]``."""
    return format_of(path).histogram(path)
