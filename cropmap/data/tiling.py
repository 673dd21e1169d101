"""The one tile grid and tile iterator, and the ``tiles.csv`` index.

Grid (see the contract): tiles of ``tile`` pixels every ``stride`` pixels; the last row and column are
moved inward to end at the far edge, so the edge is covered without padding; a side shorter than one
tile gets one tile at 0, padded with no-data. Per axis that is ``ceil((size - tile) / stride) + 1`` tiles.

A pixel is valid where the source alpha is 255 (RGB sources: everywhere). The contract's metric counts
alpha-255 pixels only, so partly transparent pixels (0 < alpha < 255) are no-data too.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from cropmap.core.errors import InputError
from cropmap.core.files import atomic_path
from cropmap.core.layout import tile_name
from cropmap.raster import IGNORE, check_image, check_label, iter_row_windows, valid_mask


def grid_positions(length: int, tile: int, stride: int) -> list[int]:
    """Top-left coordinates of the tiles along one axis of ``length`` pixels.

    >>> grid_positions(1100, 512, 512)
    [0, 512, 588]
    >>> grid_positions(300, 512, 256)
    [0]
    """
    if tile <= 0 or stride <= 0:
        raise ValueError("tile and stride must be positive")
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / stride) + 1
    return [min(i * stride, length - tile) for i in range(n)]


@dataclass
class Tile:
    """One tile cut from a source.

    ``rgba``: ``uint8 [T, T, 4]`` (alpha 0 where the tile runs past the source); ``label``: ``uint8 [T, T]``
    with 255 wherever the pixel is not valid, or None without a label. Arrays are the tile's own copies.
    """

    image: str
    y: int
    x: int
    rgba: np.ndarray
    label: np.ndarray | None = None

    @property
    def name(self) -> str:
        return tile_name(self.image, self.y, self.x)

    @property
    def valid(self) -> np.ndarray:
        return valid_mask(self.rgba[..., 3])


def _cut(window: np.ndarray, x: int, tile: int) -> np.ndarray:
    part = window[:, x : x + tile]
    if part.shape[1] == tile:
        return np.ascontiguousarray(part)
    out = np.zeros((window.shape[0], tile) + window.shape[2:], np.uint8)
    out[:, : part.shape[1]] = part
    return out


def iter_tiles(
    image_path: str | os.PathLike,
    tile: int,
    stride: int,
    label_path: str | os.PathLike | None = None,
    image: str | None = None,
) -> Iterator[Tile]:
    """Cut a (huge) source image, and its label when given, into the contract's tile grid.

    Streams both files once, top to bottom; memory is a few rows of tiles whatever the image size.
    Yields every grid position (also all-no-data ones: callers decide what to keep) in row-major order.
    ``image`` names the tiles (default: the file name without its suffix).
    """
    info = check_image(image_path)
    if label_path is not None:
        check_label(label_path, info)
    image = image or Path(image_path).stem
    ys = grid_positions(info.height, tile, stride)
    xs = grid_positions(info.width, tile, stride)
    rows = iter_row_windows(image_path, ys, tile, rgba=True)
    labels = iter_row_windows(label_path, ys, tile) if label_path is not None else None
    for y, window in rows:
        lab_window = next(labels)[1] if labels is not None else None
        for x in xs:
            rgba = _cut(window, x, tile)
            label = None
            if lab_window is not None:
                label = _cut(lab_window, x, tile)
                label[~valid_mask(rgba[..., 3])] = IGNORE
            yield Tile(image, y, x, rgba, label)


# ---- tiles.csv ---------------------------------------------------------------------------------

BASE_COLUMNS = ["name", "image", "y", "x", "size", "valid_pixels"]
INT_COLUMNS = {"y", "x", "size", "valid_pixels", "height", "width"}


def class_columns(num_classes: int) -> list[str]:
    return [f"c{i}" for i in range(num_classes)]


def write_tiles_csv(path: str | os.PathLike, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Write ``tiles.csv`` atomically (temporary name, then rename)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def is_plain_name(name: str) -> bool:
    """True for a bare file name (no folder part, not ``.``/``..``): what ``tiles.csv`` may name."""
    return (bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name
            and "\x00" not in name and Path(name).name == name)


#: columns whose values must be > 0 (the others of :data:`INT_COLUMNS` and the class counts: >= 0)
POSITIVE_COLUMNS = {"size", "height", "width"}


def _check_row(r: dict, path: Path, line: int, n_fields: int, choices: dict) -> dict:
    """Convert and check one ``tiles.csv`` row (see :func:`read_tiles_csv`)."""
    if None in r:
        raise InputError(f"{path}, line {line}: more fields than the header's {n_fields}")
    for k, v in r.items():
        if v is None:
            raise InputError(f"{path}, line {line}: fewer fields than the header (no value of column '{k}')")
        if k in INT_COLUMNS or (k.startswith("c") and k[1:].isdigit()):
            try:
                value = int(v)
            except ValueError:
                raise InputError(f"{path}, line {line}, column '{k}': {v!r} is not a whole number") from None
            low = 1 if k in POSITIVE_COLUMNS else 0
            if value < low:
                raise InputError(f"{path}, line {line}, column '{k}': {value} is below {low}")
            r[k] = value
    for k, allowed in choices.items():
        if k in r and r[k] not in allowed:
            raise InputError(f"{path}, line {line}, column '{k}': {r[k]!r} is not one of {', '.join(allowed)}")
    if "name" in r and not is_plain_name(r["name"]):
        raise InputError(f"{path}, line {line}, column 'name': {r['name']!r} is not a plain file name "
                         "(tiles are named by their file name inside their folder)")
    return r


def read_tiles_csv(path: str | os.PathLike, required: Sequence[str] = BASE_COLUMNS, hint: str = "",
                   choices: dict[str, Sequence[str]] | None = None) -> list[dict]:
    """Read ``tiles.csv`` into dicts; integer columns (coordinates, sizes, counts) become ``int``.

    Refused with one :class:`InputError` line naming the file, line and column: a missing file, a
    column of ``required`` missing from the header (``hint`` is added to that message), a row with
    more or fewer fields than the header, a coordinate, size or count that is not a whole number
    ``>= 0`` (sizes ``>= 1``), a value of a column of ``choices`` not among its choices, and a ``name``
    that is not a plain file name (a path, ``..``): tiles are only ever read from their own folder.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found (run the tiling script first)")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a tiles.csv file")
    line = 1
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames
            if not fields:
                raise InputError(f"{path}: empty file (expected the header {','.join(required)},...)")
            for col in required:
                if col not in fields:
                    raise InputError(f"{path}: no '{col}' column{hint}")
            rows = []
            for r in reader:
                line = reader.line_num
                rows.append(_check_row(r, path, line, len(fields), choices or {}))
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file (tiles.csv is UTF-8 text)") from None
    except csv.Error as e:
        raise InputError(f"{path}, line {line}: malformed CSV ({e})") from None
    return rows
