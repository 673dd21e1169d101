"""Reading huge rasters top to bottom in bounded memory, whatever their format."""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np

from cropmap.raster.base import valid_mask
from cropmap.raster.formats import open_reader, raster_info

#: Bytes per strip (all files together) when several rasters are read in step: 8 MiB.
STRIP_BYTES = 8 << 20


def iter_strips(path: str | os.PathLike, strip_height: int, rgba: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """Decode a raster top to bottom in strips of ``strip_height`` rows (the last may be shorter).

    Yields ``(y, strip)`` with ``strip`` a ``uint8 [h, W]`` array for single-channel files, else
    ``uint8 [h, W, C]`` (with ``rgba=True`` an RGB file gets an alpha channel of 255). Each strip is a
    new array. Memory is one strip, whatever the image size. Decode errors raise ``InputError``.
    """
    reader = open_reader(path, rgba=rgba)
    for y in range(0, reader.height, strip_height):
        strip = np.empty((min(strip_height, reader.height - y),) + reader.row_shape, np.uint8)
        reader.read_into(strip)
        yield y, strip


def iter_row_windows(
    path: str | os.PathLike,
    rows: Sequence[int],
    height: int,
    rgba: bool = False,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(y, rows y..y+height)`` for each ``y`` of the ascending ``rows``, decoding the file once.

    Windows may overlap (``rows`` closer than ``height``) and may run past the bottom edge, where they
    are padded with zeros (no-data). Yields ``uint8 [height, W(, C)]`` views of one buffer that the
    next step overwrites (copy what you keep). Memory: one window, whatever the image size; rows shared
    by consecutive windows are moved up, not decoded again.
    """
    rows = list(rows)
    if any(b < a for a, b in zip(rows, rows[1:])):
        raise ValueError("rows must be ascending")
    reader = open_reader(path, rgba=rgba)
    win = np.zeros((height,) + reader.row_shape, np.uint8)
    win_y, filled = 0, 0  # win[:filled] holds image rows win_y .. win_y + filled
    for y in rows:
        shift = y - win_y
        if shift >= filled:  # nothing reusable: skip to y
            if y > reader.y:
                reader.skip(y - reader.y)
            filled = 0
        elif shift > 0:  # move the shared rows up, in chunks that never overlap their source
            keep = filled - shift
            for i in range(0, keep, shift):
                j = min(i + shift, keep)
                win[i:j] = win[shift + i : shift + j]
            filled = keep
        win_y = y
        if filled < height:
            got = reader.read_into(win[filled:])
            win[filled + got :] = 0  # past the bottom edge: no-data
            filled += got
        yield y, win


def strip_rows(width: int, bytes_per_pixel: int = 1, budget: int = STRIP_BYTES) -> int:
    """Rows per strip so that one strip of every file read in step (``bytes_per_pixel`` summed over the
    files: 1 per map or label, 4 per RGBA source) holds about ``budget`` bytes; at least 16 rows."""
    return max(16, budget // max(width * bytes_per_pixel, 1))


def iter_zip(paths: Sequence[str | os.PathLike], rows: int) -> Iterator[tuple[int, list[np.ndarray]]]:
    """Decode several same-size rasters in step: yields ``(y, [strip per path])``.

    Strips are ``uint8 [h, W]`` for single-channel files and ``[h, W, 4]`` (RGBA; RGB gets alpha 255)
    otherwise. Sizes must have been checked by the caller.
    """
    iters = [iter_strips(p, rows, rgba=raster_info(p).channels > 1) for p in paths]
    while True:
        got = [next(it, None) for it in iters]
        if got[0] is None:
            return
        yield got[0][0], [s for _, s in got]


def any_valid(path: str | os.PathLike, strip_height: int = 256) -> bool:
    """True when the raster has a valid pixel (alpha 255; files without alpha: always).

    Decodes from the top until the first valid pixel (the whole file when there is none).
    """
    if raster_info(path).channels in (1, 3):
        return True
    for _, strip in iter_strips(path, strip_height, rgba=True):
        if valid_mask(strip[..., 3]).any():
            return True
    return False
