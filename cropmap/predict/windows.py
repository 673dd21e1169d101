"""Where prediction windows come from: batches of windows on the model's device, in ascending ``(y, x)``.

Two sources of windows give the same batches:

* :func:`source_batches` cuts them from the source image itself: a thread decodes the image once, top
  to bottom, in pieces of rows (into pinned memory on CUDA), ahead of the model; the pieces are copied
  into a band of source rows on the device and the windows are cut there. Each source pixel is decoded
  once and copied to the device once, whatever the overlap of the windows.
* :func:`window_file_batches` reads the windows that ``generate_test_data.py`` wrote, one PNG each,
  in DataLoader worker processes (the original's way).

The window rows of an image are taken in *groups* of consecutive rows (:func:`group_rows`: one row,
unless a row holds fewer windows than a batch), and a group's windows in near-equal batches
(:func:`batch_bounds`); a batch never spans two groups. The batches are thus a function of the image
alone, not of where a process starts, which is what lets several processes share an image
(:func:`share_groups`) and still write the map of one process byte for byte.

A batch is ``(ys, xs, rgba)``: the windows' top-left pixels and ``uint8 [B, 4, T, T]`` RGBA (RGB sources
get alpha 255; pixels past the image's edges are 0, no-data) on the device. Windows whose pixels are all
no-data are skipped (as ``generate_test_data.py`` does not write them).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cropmap.core.errors import InputError
from cropmap.raster import RasterInfo, open_reader, read_png, strip_rows, valid_mask
from cropmap.raster.preview import PreviewCanvas

#: Pixels per decoded piece of rows (a piece is the unit the decode thread hands over: 8 Mpixel, 32 MB).
PIECE_PIXELS = 1 << 23
#: Pieces in flight between the decode thread and the device (bounds host memory: 4 x 32 MB).
PIECES = 4

Batch = tuple[list[int], list[int], torch.Tensor]


# ---- groups, batches, shares ----------------------------------------------------------------------


def group_rows(ys: Sequence[int], columns: int, batch_size: int) -> list[list[int]]:
    """Consecutive window rows ``ys`` (ascending) in groups of ``ceil(batch_size / columns)`` rows, so that a
    group holds at least a batch of windows when a row holds fewer (narrow images)."""
    k = max(1, -(-int(batch_size) // max(int(columns), 1)))
    ys = list(ys)
    return [ys[i : i + k] for i in range(0, len(ys), k)]


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of ``ceil(n / batch_size)`` consecutive batches of near-equal size covering ``0..n``."""
    if n <= 0:
        return []
    m = -(-n // max(int(batch_size), 1))
    base, extra = divmod(n, m)
    out, start = [], 0
    for i in range(m):
        stop = start + base + (i < extra)
        out.append((start, stop))
        start = stop
    return out


def share_groups(groups: Sequence[Sequence[int]], tile: int, height: int, rank: int,
                 world_size: int) -> tuple[list[list[int]], tuple[int, int]]:
    """Process ``rank``'s share of an image: ``(groups to run, (start, stop) map rows it emits)``.

    The groups are dealt out in ``world_size`` contiguous runs of near-equal count; a process emits the
    map rows from the first row of its first group to that of the next process's (the first process from
    0, the last to ``height``), and runs its own groups plus the earlier ones whose windows reach into its
    rows, so that every map row gets every window that covers it, in the same order, in every process.
    """
    n = len(groups)
    cut = [r * n // world_size for r in range(world_size + 1)]

    def first_row(r: int) -> int:
        if r == 0:
            return 0
        return groups[cut[r]][0] if cut[r] < n else height

    start, stop = first_row(rank), (first_row(rank + 1) if rank + 1 < world_size else height)
    if start >= stop:
        return [], (start, start)
    mine = [list(g) for g in groups[: cut[rank + 1]] if g[-1] + tile > start]
    return mine, (start, stop)


# ---- windows cut from the source -----------------------------------------------------------------


def _column_blocks(xs: Sequence[int], tile: int, width: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Column blocks whose boundaries are every window edge: ``(block starts, per window (first, stop) block)``."""
    starts = sorted({0, *xs, *(x + tile for x in xs if x + tile < width)})
    index = {s: i for i, s in enumerate(starts)}
    spans = [(index[x], index[x + tile] if x + tile < width else len(starts)) for x in xs]
    return np.asarray(starts, np.intp), spans


def _valid_blocks(rows: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``bool [n, blocks]``: whether each row of ``rows`` (``uint8 [n, W, 4]``) has a valid pixel in each block."""
    if sys.byteorder == "little" and rows.flags.c_contiguous:  # alpha is the top byte of a little-endian uint32
        valid = rows.view(np.uint32)[..., 0] >= np.uint32(0xFF000000)
    else:
        valid = valid_mask(rows[..., 3])
    return np.logical_or.reduceat(valid, starts, axis=1)


class _Decoder(threading.Thread):
    """Decode the rows of each group ahead of the consumer, into a pool of reusable pieces.

    Messages on ``out``: ``("group", g, start)`` (the group's rows ``start..`` follow; rows ``g[0]..start``
    are the previous group's), ``("rows", y, n, k)`` (rows ``y..y+n`` are in piece ``k``), ``("windows",
    [(y, x), ...])`` (the group's windows with a valid pixel), ``("end",)`` or ``("error", exc)``.
    The consumer gives piece ``k`` back with ``free.put((k, event or None))``.
    """

    def __init__(self, path, info: RasterInfo, tile: int, xs: Sequence[int], groups, pieces: list,
                 piece_rows: int, preview: PreviewCanvas | None):
        super().__init__(daemon=True, name="cropmap-decode")
        self.path, self.info, self.tile, self.xs, self.groups = path, info, tile, list(xs), groups
        self.pieces, self.piece_rows, self.preview = pieces, piece_rows, preview
        self.out: queue.Queue = queue.Queue()
        self.free: queue.Queue = queue.Queue()
        for k in range(len(pieces)):
            self.free.put((k, None))
        self.stop = threading.Event()

    def _piece(self) -> int | None:
        while not self.stop.is_set():
            try:
                k, event = self.free.get(timeout=0.1)
            except queue.Empty:
                continue
            if event is not None:
                event.synchronize()
            return k
        return None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            self.out.put(("error", e))

    def _run(self) -> None:
        height, width, tile = self.info.height, self.info.width, self.tile
        reader = open_reader(self.path, rgba=True)
        has_alpha = self.info.channels == 4
        starts, spans = _column_blocks(self.xs, tile, width)
        cap = max(g[-1] - g[0] for g in self.groups) + tile
        blocks = np.zeros((cap, len(starts)), bool)  # per band row: a valid pixel in each column block?
        band_y, decoded = 0, 0  # blocks[i] is image row band_y + i; rows < decoded were read
        for g in self.groups:
            y0, end = g[0], min(g[-1] + tile, height)
            start = max(decoded, y0)
            keep = start - y0
            if keep > 0 and y0 > band_y:
                blocks[:keep] = blocks[y0 - band_y : start - band_y]
            blocks[keep:] = False
            band_y = y0
            if start > reader.y:
                reader.skip(start - reader.y)
            self.out.put(("group", g, start))
            for y in range(start, end, self.piece_rows):
                n = min(self.piece_rows, end - y)
                k = self._piece()
                if k is None:
                    return
                rows = self.pieces[k][:n]
                got = reader.read_into(rows)
                if got != n:
                    raise InputError(f"{self.path}: {got} rows decoded at row {y}, expected {n}")
                if has_alpha:
                    blocks[y - y0 : y - y0 + n] = _valid_blocks(rows, starts)
                if self.preview is not None:
                    self.preview.add_image(y, 0, rows)
                self.out.put(("rows", y, n, k))
            decoded = max(decoded, end)
            windows = []
            for y in g:
                rows_valid = blocks[y - y0 : y - y0 + tile].any(axis=0) if has_alpha else None
                for x, (b0, b1) in zip(self.xs, spans):
                    if not has_alpha or rows_valid[b0:b1].any():
                        windows.append((y, x))
            self.out.put(("windows", windows))
        self.out.put(("end",))


def source_batches(
    path: str | os.PathLike,
    info: RasterInfo,
    tile: int,
    xs: Sequence[int],
    groups: Sequence[Sequence[int]],
    batch_size: int,
    device: torch.device | str = "cpu",
    preview: PreviewCanvas | None = None,
) -> Iterator[Batch]:
    """Batches of the windows at rows ``groups`` (see :func:`group_rows`) and columns ``xs``, cut from the source.

    Args:
        path, info: the source image and its :class:`~cropmap.raster.RasterInfo` (checked by the caller).
        tile: window side T.
        xs: window columns (ascending).
        groups: groups of window rows to run, ascending (a process's share, or all of them).
        batch_size: most windows per batch.
        device: where the band of source rows lives and the batches are cut.
        preview: a canvas that gets every decoded row.

    Memory: a band of ``max group height`` source rows, ``uint8 [4, rows, max(W, T)]``, on the device, and
    :data:`PIECES` pieces of ``~PIECE_PIXELS`` pixels on the host, whatever the image height.
    """
    device = torch.device(device)
    groups = [list(g) for g in groups]
    if not groups:
        return
    width = info.width
    cap = max(g[-1] - g[0] for g in groups) + tile
    piece_rows = min(strip_rows(width, PIECE_PIXELS), cap)
    cuda = device.type == "cuda"
    pieces_t = [torch.empty((piece_rows, width, 4), dtype=torch.uint8, pin_memory=cuda) for _ in range(PIECES)]
    pieces = [p.numpy() for p in pieces_t]
    # planar, so that windows are cut as contiguous [4, T, T] blocks
    band = torch.zeros((4, cap, max(width, tile)), dtype=torch.uint8, device=device)
    decoder = _Decoder(path, info, tile, xs, groups, pieces, piece_rows, preview)
    decoder.start()
    band_y, filled = 0, 0  # band rows 0..filled hold image rows band_y..band_y+filled
    try:
        while True:
            msg = decoder.out.get()
            kind = msg[0]
            if kind == "error":
                raise msg[1]
            if kind == "end":
                return
            if kind == "group":
                g, start = msg[1], msg[2]
                y0 = g[0]
                keep, shift = start - y0, y0 - band_y
                if keep > 0 and shift > 0:  # rows y0..start are already here: move them up, without overlap
                    for i in range(0, keep, shift):
                        j = min(i + shift, keep)
                        band[:, i:j].copy_(band[:, shift + i : shift + j])
                band_y, filled, group = y0, keep, g
            elif kind == "rows":
                y, n, k = msg[1:]
                rows = pieces_t[k][:n]
                event = None
                if cuda:  # copy as decoded, then interleaved -> planar on the device
                    rows = rows.to(device, non_blocking=True)
                    event = torch.cuda.Event()
                    event.record()
                band[:, y - band_y : y - band_y + n, :width].copy_(rows.permute(2, 0, 1))
                decoder.free.put((k, event))
                filled = y - band_y + n
            else:  # the group's windows: the band is complete
                windows = msg[1]
                need = group[-1] - band_y + tile
                if filled < need:
                    band[:, filled:need].zero_()  # past the bottom edge: no-data
                for s, e in batch_bounds(len(windows), batch_size):
                    part = windows[s:e]
                    cut = torch.stack([band[:, y - band_y : y - band_y + tile, x : x + tile] for y, x in part])
                    yield [y for y, _ in part], [x for _, x in part], cut
    finally:
        decoder.stop.set()
        decoder.join(timeout=10)


# ---- windows from files ----------------------------------------------------------------------------


class WindowDataset(Dataset):
    """The test windows of one image, in the order of ``rows``.

    Item ``i`` is ``(i, rgba, error)``: ``rgba`` ``uint8 [4, T, T]`` (RGB sources get alpha 255), and
    ``error`` an empty string, or the one-line message of a missing/corrupt window (then ``rgba`` is
    zeros), so that worker processes never raise user errors with their tracebacks.
    """

    def __init__(self, folder: str | os.PathLike, rows: Sequence[dict]):
        self.folder = Path(folder)
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = self.rows[i]
        size = int(row["size"])
        path = self.folder / row["name"]
        try:
            arr = read_png(path)
            if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[:2] != (size, size):
                raise InputError(f"{path}: expected an RGB(A) window of {size}x{size}, got shape {arr.shape}")
        except InputError as e:
            return i, torch.zeros((4, size, size), dtype=torch.uint8), str(e)
        if arr.shape[2] == 3:
            arr = np.concatenate([arr, np.full(arr.shape[:2] + (1,), 255, np.uint8)], axis=2)
        return i, torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))), ""


def window_file_batches(
    dataset: WindowDataset,
    groups: Sequence[Sequence[int]],
    batch_size: int,
    device: torch.device | str = "cpu",
    workers: int = 0,
    preview: PreviewCanvas | None = None,
) -> Iterator[Batch]:
    """Batches of the window files of ``dataset`` (rows sorted by ``(y, x)``) at the window rows ``groups``.

    Windows are decoded by ``workers`` DataLoader processes (into pinned memory on CUDA). A missing or
    corrupt window raises :class:`InputError`.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    by_row: dict[int, list[int]] = {}
    for i, r in enumerate(dataset.rows):
        by_row.setdefault(int(r["y"]), []).append(i)
    batches = []
    for g in groups:
        members = [i for y in g for i in by_row.get(y, [])]
        batches += [members[s:e] for s, e in batch_bounds(len(members), batch_size)]
    if not batches:
        return
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=cuda,
                        prefetch_factor=4 if workers > 0 else None)
    for idx, rgba, errors in loader:
        for err in errors:
            if err:
                raise InputError(err)
        rows = [dataset.rows[i] for i in idx.tolist()]
        ys, xs = [int(r["y"]) for r in rows], [int(r["x"]) for r in rows]
        if preview is not None:
            host = rgba.numpy()
            for k, (y, x) in enumerate(zip(ys, xs)):
                preview.add_image(y, x, host[k, :3].transpose(1, 2, 0))
        yield ys, xs, rgba.to(device, non_blocking=cuda)
