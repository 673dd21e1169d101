"""Cutting huge sources into tile files: what generate_train_data.py and generate_test_data.py share.

The main thread decodes (pyvips, streaming) and cuts; a pool of threads counts pixels and encodes and
writes the PNG tiles (OpenCV releases the GIL), so decoding and encoding overlap on several cores.

Tiles are written into temporary folders (:func:`staged_folders`) that replace the final ones only
when every source has been cut: damaged image data found halfway (the headers and the labels' values
are checked before, :func:`validate`, but an image's pixels only decode while it is cut) leaves the
previous tiles and ``tiles.csv`` as they were, and nothing new.
"""

from __future__ import annotations

import contextlib
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from cropmap.core.cli import positive_int, progress as progress_bar, warn
from cropmap.core.errors import InputError
from cropmap.core.files import replace_dir, temporary_dir
from cropmap.core.layout import label_path, source_path
from cropmap.raster import RasterInfo, check_image, check_label, check_label_values, write_png
from cropmap.data.tiling import Tile, class_columns, grid_positions, iter_tiles


#: Tiles queued per encoding thread: enough to keep the threads busy, few enough to bound memory.
TILES_PER_WORKER = 4


@dataclass
class Source:
    """One source image (and its label, for training) to be cut into tiles."""

    name: str
    image: Path
    label: Path | None = None
    info: RasterInfo | None = None  # filled by :func:`validate`
    hist: np.ndarray | None = None  # label value counts int64 [256], filled by :func:`validate`


def resolve(data_root: str | Path, source_dir: str, images: Sequence[str], with_label: bool) -> list[Source]:
    """Turn ``--images`` entries into sources.

    An entry is a name looked up as ``{data_root}/{source_dir}/{name}.png`` (or ``.tif``/``.tiff``; label
    ``{name}_label.png`` or ``.tif`` beside it), or a path to an image (its label, if needed, is
    ``{stem}_label{suffix}`` in the same folder).
    """
    out = []
    for entry in images:
        image = source_path(data_root, source_dir, entry)
        out.append(Source(image.stem, image, label_path(image) if with_label else None))
    names = [s.name for s in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise InputError(f"--images: two sources share the name {sorted(dup)[0]!r} (tile names would collide)")
    return out


def add_tiling_args(p, source_dir: str, images: list[str], what: str, stride_default: str,
                    label_help: str = "") -> None:
    """The flags both tiling scripts share (sources, grid, threads, compression, progress)."""
    p.add_argument("--data_root", default="data", help="data root folder (default: data)")
    p.add_argument("--source_dir", default=source_dir,
                   help=f"folder under --data_root holding the sources (default: {source_dir})")
    p.add_argument("--images", nargs="+", default=images,
                   help=f"names in --source_dir, or paths to PNGs or GeoTIFFs{label_help} (default: {' '.join(images)})")
    p.add_argument("--tile_size", type=positive_int, default=512, help=f"{what} side in pixels (default: %(default)s)")
    p.add_argument("--stride", type=positive_int, default=None, help=f"distance between {what}s (default: {stride_default})")
    p.add_argument("--workers", type=positive_int, default=2, help=f"threads encoding PNG {what}s (default: 2)")
    p.add_argument("--compression", type=int, default=0, choices=range(10), metavar="0-9",
                   help="PNG zlib level of the image tiles: 0 (default) stores them uncompressed, fastest to write "
                        "and to read, about twice the disk of level 1-9; label tiles are always compressed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def validate(sources: Sequence[Source], num_classes: int | None = None) -> None:
    """Check every source before anything is written: headers, sizes, and (streamed) label values."""
    for s in sources:
        s.info = check_image(s.image)
        if s.label is not None:
            check_label(s.label, s.info)
    for s in sources:  # the slower check (a decode of each label) only once all headers are fine
        if s.label is not None and num_classes is not None:
            s.hist = check_label_values(s.label, num_classes)


@contextlib.contextmanager
def staged_folders(folders: Sequence[Path]) -> Iterator[list[Path]]:
    """Yield one empty temporary folder beside each of ``folders`` (``.NAME.XXXXXXXX.part``) to write tiles in.

    When the block completes, each replaces its folder (the old tiles are deleted); on an error (or
    Ctrl-C) they are deleted and the folders stay as they were. Temporaries of a killed run are deleted
    by the next one. Disk: the old and the new tiles exist together until the end.
    """
    tmps: list[Path] = []
    try:
        for folder in folders:
            tmps.append(temporary_dir(folder))
        yield tmps
    except BaseException:
        for t in tmps:
            shutil.rmtree(t, ignore_errors=True)
        raise
    for t, folder in zip(tmps, folders):
        replace_dir(t, folder)


def cut_source(
    src: Source,
    tile: int,
    stride: int,
    image_dir: Path,
    label_dir: Path | None,
    keep: Callable[[Tile, np.ndarray], bool],
    rgba_out: bool,
    num_classes: int,
    workers: int = 2,
    progress: bool = True,
    compression: int | None = 0,
) -> list[dict]:
    """Cut one source into tiles on disk; returns the ``tiles.csv`` rows of the tiles written.

    ``keep(tile, class_counts)`` decides which tiles are written (all-no-data tiles never are).
    Data tiles are RGBA when ``rgba_out`` (test windows) else RGB, written with PNG ``compression``
    (see :func:`~cropmap.raster.write_png`); label tiles go to ``label_dir`` (default compression: they are
    small).
    """
    assert src.info is not None, "validate() first"
    info = src.info
    image_dir.mkdir(parents=True, exist_ok=True)
    if label_dir is not None:
        label_dir.mkdir(parents=True, exist_ok=True)
    n_tiles = len(grid_positions(info.height, tile, stride)) * len(grid_positions(info.width, tile, stride))

    seen_valid: list[bool] = []  # one True once a tile with a valid pixel was seen (threads append)

    def save(t: Tile) -> dict | None:
        valid = t.valid
        n_valid = int(np.count_nonzero(valid))
        if n_valid == 0:
            return None
        if not seen_valid:
            seen_valid.append(True)
        counts = np.bincount(t.label.ravel(), minlength=256)[:num_classes] if t.label is not None else None
        if not keep(t, counts):
            return None
        name = t.name
        # clean=False: the folder is cleaned once per run, not once per tile
        write_png(image_dir / name, t.rgba if rgba_out else t.rgba[..., :3], compression, clean=False)
        if label_dir is not None:
            write_png(label_dir / name, t.label, clean=False)
        row = {"name": name, "image": t.image, "y": t.y, "x": t.x, "size": tile, "valid_pixels": n_valid,
               "height": info.height, "width": info.width}
        if counts is not None:
            row.update(zip(class_columns(num_classes), (int(c) for c in counts)))
        return row

    rows: list[dict] = []
    pending: list[Future] = []
    bar = progress_bar(total=n_tiles, desc=f"{src.name} tiles", unit="tile", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        try:
            for t in iter_tiles(src.image, tile, stride, src.label, image=src.name):
                pending.append(pool.submit(save, t))
                while len(pending) > TILES_PER_WORKER * max(1, workers):  # bound the tiles held in memory
                    _collect(pending.pop(0), rows, bar)
            for f in pending:
                _collect(f, rows, bar)
        except BaseException:
            for f in pending:
                f.cancel()
            raise
    bar.close()
    if not seen_valid:
        warn(f"{src.image}: no valid pixel (alpha is 255 nowhere): no {'windows' if rgba_out else 'tiles'} written")
    return rows


def _collect(f: Future, rows: list[dict], bar) -> None:
    row = f.result()
    if row is not None:
        rows.append(row)
    bar.update(1)


def assign_split(rows: list[dict], val_fraction: float, seed: int, block: int | None = None) -> None:
    """Add a ``split`` column: ``train``, ``val`` or ``gap``, spatially disjoint and seeded.

    Each image is divided into square blocks of ``block`` pixels (default: 4 tile sizes, halved down to
    one tile size while the image has fewer than ``2 / val_fraction`` blocks); blocks are drawn at random
    until about ``val_fraction`` of the image's tiles (by centre) lie in them. An image whose tiles all lie
    in one block gets no validation tiles (it cannot be split in space): those tiles are ``val``. A tile that
    overlaps no ``val`` tile is ``train``; the others (overlapping both) are ``gap``, used by neither, so
    no pixel is seen in training and validation both.
    """
    rng = np.random.default_rng(seed)
    for image in sorted({r["image"] for r in rows}):
        sel = [r for r in rows if r["image"] == image]
        ys = np.array([r["y"] for r in sel])
        xs = np.array([r["x"] for r in sel])
        size = np.array([r["size"] for r in sel])

        def blocks(side: int):  # the block of each tile's centre, numbered row-major
            by, bx = (ys + size // 2) // side, (xs + size // 2) // side
            return np.unique(by * (int(bx.max()) + 1) + bx, return_inverse=True, return_counts=True)

        tile = int(size.max())
        side = block or 4 * tile
        uniq, inverse, counts = blocks(side)
        while block is None and side > tile and val_fraction > 0 and len(uniq) < 2 / val_fraction:
            side = max(tile, side // 2)
            uniq, inverse, counts = blocks(side)
        order = rng.permutation(len(uniq))
        target = val_fraction * len(sel)
        chosen = np.zeros(len(uniq), bool)
        total = 0
        for k in order:  # take blocks at random; skip one that would overshoot the target by far
            if total >= target or val_fraction <= 0 or len(uniq) < 2:
                break
            if total and total + counts[k] > 1.25 * target:
                continue
            chosen[k] = True
            total += counts[k]
        is_val = chosen[inverse]
        overlap = np.zeros(len(sel), bool)
        vy, vx, vs = ys[is_val], xs[is_val], size[is_val]
        for start in range(0, len(sel), 4096):  # |dy| < size and |dx| < size, in chunks
            sl = slice(start, start + 4096)
            oy = np.abs(ys[sl, None] - vy[None]) < np.maximum(size[sl, None], vs[None])
            ox = np.abs(xs[sl, None] - vx[None]) < np.maximum(size[sl, None], vs[None])
            overlap[sl] = (oy & ox).any(axis=1)
        for r, v, o in zip(sel, is_val, overlap):
            r["split"] = "val" if v else ("gap" if o else "train")
