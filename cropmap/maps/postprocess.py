"""Streaming post-processing of full-size maps: voting and hole filling.

Maps are single-channel ``uint8`` rasters (values ``0..C-1``, 0 at no-data). Everything here reads them
top to bottom in strips (:func:`cropmap.raster.iter_zip`) and writes with
:func:`cropmap.raster.open_writer`; memory depends on the map's width, never on its height.

Inside the fill pipelines no-data travels *in* the map as :data:`~cropmap.raster.IGNORE` (255), so that
one ``uint8`` band carries both (a "work" strip); it becomes 0 again when written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np

from cropmap.core.cli import progress as progress_bar
from cropmap.core.errors import InputError
from cropmap.maps.cleanup import area_stage, close_stage
from cropmap.maps.ensemble import weighted_scores
from cropmap.maps.segments import edge_threshold, segment_stage
from cropmap.raster.bands import RowBuffer, iter_banded
from cropmap.raster import (IGNORE, check_georef, check_image, check_map, check_map_values, iter_zip, open_writer, strip_rows,
                            valid_mask)

FILL_METHODS = ("morph", "square", "area", "close", "segments")  # area, close: cleanup.py; segments: segments.py


# ---- voting -------------------------------------------------------------------------------------


def resolve_ties(scores: np.ndarray, maps: np.ndarray, priority: Sequence[int] | None = None) -> np.ndarray:
    """Per pixel the class with the highest score, ties broken by the inputs' order or by ``priority``.

    Args:
        scores: ``[C, h, W]`` votes or summed probabilities per class.
        maps: ``uint8 [N, h, W]`` the inputs' own predictions, most trusted first.
        priority: class order for ties (``[1, 3, 2, 0]``: 1 wins any tie it is in, then 3 ...). Without it
            a tie goes to the tied class that the earliest input predicted (the lowest tied class
            index if no input predicted a tied class, possible in soft voting).

    Returns:
        ``uint8 [h, W]``.
    """
    best = scores.max(axis=0)
    tied = scores == best[None]
    out = np.argmax(tied, axis=0).astype(np.uint8)  # lowest tied class index
    if priority is not None:
        for c in reversed(list(priority)):
            out[tied[c]] = c
        return out
    for m in maps[::-1]:  # earliest input last, so it wins
        ok = np.take_along_axis(tied, m[None].astype(np.intp), axis=0)[0]
        out = np.where(ok, m, out)
    return out


def vote_strip(
    maps: np.ndarray,
    num_classes: int,
    priority: Sequence[int] | None = None,
    probs: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Vote one strip.

    Args:
        maps: ``uint8 [N, h, W]`` the inputs' class maps, most trusted first.
        num_classes: C.
        priority: see :func:`resolve_ties`.
        probs: for soft voting, ``uint8 [N, C, h, W]`` each input's probabilities (255 = 1); the class
            with the largest sum wins. Without it, the class with the most votes wins.
        weights: optional ``float32 [N, C]``: input ``i``'s vote (or probability) for class ``c`` counts
            ``weights[i, c]`` (:func:`cropmap.maps.ensemble.weighted_scores`); None: every vote counts 1.

    Returns:
        ``uint8 [h, W]``.
    """
    if weights is not None:
        return resolve_ties(weighted_scores(maps, weights, probs), maps, priority)
    if probs is None:
        scores = np.stack([(maps == c).sum(axis=0, dtype=np.uint16) for c in range(num_classes)])
    else:
        scores = probs.sum(axis=0, dtype=np.uint32)
    return resolve_ties(scores, maps, priority)


def vote_maps(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    num_classes: int = 4,
    priority: Sequence[int] | None = None,
    prob_inputs: Sequence[Sequence[str | os.PathLike]] | None = None,
    progress: bool = True,
    weights: np.ndarray | None = None,
) -> Path:
    """Vote full-size maps into ``output``, streaming in strips.

    ``prob_inputs[i]`` lists input ``i``'s per-class probability PNGs (soft voting); ``weights``
    (``[N, C]``) weighs each input's vote per class (see :func:`vote_strip`). All files must have
    the same size (InputError naming the odd one otherwise); nothing is written then.
    """
    if not inputs:
        raise InputError("no input maps to vote")
    first = check_map(inputs[0])
    for p in inputs[1:]:
        check_map(p, first)
    flat_probs = []
    if prob_inputs is not None:
        for group in prob_inputs:
            if len(group) != num_classes:
                raise ValueError("one probability file per class is needed")
            for p in group:
                check_map(p, first)
                flat_probs.append(p)
    if priority is not None and sorted(priority) != list(range(num_classes)):
        raise InputError(f"--priority must list each class 0..{num_classes - 1} once, got {list(priority)}")
    n = len(inputs)
    rows = strip_rows(first.width, bytes_per_pixel=n * (1 + num_classes * (prob_inputs is not None)))  # maps (+ probs)
    with open_writer(output, first.width, first.height, like=first) as writer, progress_bar(
        total=first.height, desc=Path(output).name, unit="row", disable=not progress, leave=False
    ) as bar:
        for y, strips in iter_zip(list(inputs) + flat_probs, rows):
            maps = np.stack(strips[:n])
            for p, s in zip(inputs, strips[:n]):
                check_map_values(s, num_classes, p)
            probs = None
            if flat_probs:
                probs = np.stack(strips[n:]).reshape((n, num_classes) + maps.shape[1:])
            writer.write(vote_strip(maps, num_classes, priority, probs, weights))
            bar.update(len(maps[0]))
    return Path(output)


# ---- hole filling: morph ------------------------------------------------------------------------


def _neighbour_range(labels: np.ndarray, band: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest value of the 4-neighbours outside each component (256 / -1 if none).

    ``labels`` ``int32 [h, W]`` (0 = not selected), ``band`` ``uint8 [h, W]``; returns two ``int16 [n]``.
    """
    lo = np.full(n, 256, np.int16)
    hi = np.full(n, -1, np.int16)
    pairs = [
        (labels[1:], band[:-1], labels[:-1]),  # neighbour above
        (labels[:-1], band[1:], labels[1:]),  # below
        (labels[:, 1:], band[:, :-1], labels[:, :-1]),  # left
        (labels[:, :-1], band[:, 1:], labels[:, 1:]),  # right
    ]
    for lab, nb_val, nb_lab in pairs:
        edge = (lab > 0) & (nb_lab != lab)
        ids = lab[edge]
        vals = nb_val[edge].astype(np.int16)
        np.minimum.at(lo, ids, vals)
        np.maximum.at(hi, ids, vals)
    return lo, hi


def fill_components(
    band: np.ndarray, select: np.ndarray, max_area: int, cut_top: bool, cut_bottom: bool
) -> int | None:
    """Fill, in place, the selected 4-connected regions that are enclosed by one class.

    A region of ``select`` becomes class ``c`` when its area is at most ``max_area``, it touches neither
    the image border nor :data:`~cropmap.raster.IGNORE`, and every 4-neighbour outside it has the value ``c``.

    Args:
        band: ``uint8 [h, W]`` work rows (values ``0..C-1``, IGNORE for no-data); modified in place.
        select: ``bool [h, W]`` candidate pixels (e.g. ``band == 0``).
        cut_top / cut_bottom: the band's first / last row is not the image's edge. Regions touching a cut
            row are not decided here: those at the top were decided by the band above; those at the
            bottom that could still be filled are *pending*.

    Returns:
        The first band row of the pending regions, or None when no region is pending.
    """
    h, w = band.shape
    n, labels, stats, _ = cv2.connectedComponentsWithStats(select.view(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    if n <= 1:
        return None
    lo, hi = _neighbour_range(labels, band, n)
    left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    bottom, right = top + stats[:, cv2.CC_STAT_HEIGHT], left + stats[:, cv2.CC_STAT_WIDTH]
    area = stats[:, cv2.CC_STAT_AREA]
    at_top, at_bottom = top == 0, bottom == h
    border = (left == 0) | (right == w)
    if not cut_top:
        border |= at_top
    if not cut_bottom:
        border |= at_bottom
    # what the pixels seen so far already rule out (true of the whole region, seen or not)
    ruled_out = border | (area > max_area) | (hi == IGNORE) | ((lo != hi) & (hi >= 0))
    ignored = at_top if cut_top else np.zeros(n, bool)
    pending = (at_bottom if cut_bottom else np.zeros(n, bool)) & ~ruled_out & ~ignored
    fill = ~ruled_out & ~ignored & ~pending & (hi >= 0)
    fill[0] = False
    if fill.any():
        lut = np.where(fill, lo, -1).astype(np.int16)
        new = lut[labels]
        mask = new >= 0
        band[mask] = new[mask].astype(np.uint8)
    pending[0] = False
    return int(top[pending].min()) if pending.any() else None


def morph_stage(strips, height: int, select_value: int, max_area: int, band_rows: int = 1024):
    """Fill enclosed regions of ``select_value`` (area <= ``max_area``) in streamed work strips."""

    def process(band, cut_top, cut_bottom):
        return fill_components(band, band == select_value, max_area, cut_top, cut_bottom)

    return iter_banded(strips, height, process, band_rows)


# ---- hole filling: square (the original's rule) -------------------------------------------------


def _run_right(row: np.ndarray) -> np.ndarray:
    """``int64 [W]``: length of the run of equal values starting at each position of ``row``."""
    w = len(row)
    change = np.flatnonzero(row[1:] != row[:-1]) + 1  # first index of each new run
    nxt = np.full(w, w, np.int64)
    nxt[change - 1] = change  # the run containing index i ends before nxt[i]
    nxt = np.minimum.accumulate(nxt[::-1])[::-1]
    return nxt - np.arange(w)


def square_stage(strips, height: int, width: int, size: int = 500, stride: int = 50):
    """The original's square rule on streamed work strips, vectorised.

    Windows of ``size`` x ``size`` at every ``stride`` pixels (inside the image). A window qualifies when
    its four borders all carry one class ``v`` (not 0, not no-data), judged on the map as it is before
    this pass. Every class-0 pixel inside a qualifying window becomes ``v``; where qualifying windows
    overlap, the first in raster order (top to bottom, left to right) wins, as in the original's loop.
    ``size`` must be a multiple of ``stride``: the map is handled in ``stride``-square cells, each taking
    the value of the first qualifying window that covers it. Memory: about ``size + stride`` rows.

    Yields ``(y, rows)`` finished strips.
    """
    if size % stride:
        raise ValueError("size must be a multiple of stride")
    k = size // stride
    n_wi = (height - size) // stride + 1 if height >= size else 0
    n_wj = (width - size) // stride + 1 if width >= size else 0
    n_cj = -(-width // stride)
    js = np.arange(n_wj) * stride
    buf = RowBuffer(strips)
    covers: dict[int, np.ndarray] = {}  # window row -> uint8 [n_cj]: value each cell gets from that row
    cj = np.arange(n_cj)

    def cover(wi: int) -> np.ndarray:
        i = wi * stride
        block = buf.buf[i - buf.y0 : i - buf.y0 + size]
        top, bot = block[0], block[-1]
        v = top[js]
        q = (v != 0) & (v != IGNORE)
        q &= _run_right(top)[js] >= size
        q &= _run_right(bot)[js] >= size
        q &= (block[:, js] == v).all(axis=0)
        q &= (block[:, js + size - 1] == v).all(axis=0)
        # for each cell, the first qualifying window (in j) among those covering it
        nq = np.full(n_wj + 1, n_wj, np.int64)
        nq[:-1][q] = np.flatnonzero(q)
        nq = np.minimum.accumulate(nq[::-1])[::-1]
        first = nq[np.clip(cj - k + 1, 0, n_wj)]
        ok = first <= np.minimum(cj, n_wj - 1)
        return np.where(ok, np.append(v, 0)[np.minimum(first, n_wj)], 0).astype(np.uint8)

    emitted = 0
    for ci in range(-(-height // stride)):
        if ci < n_wi:
            buf.fill_to(ci * stride + size)
            covers[ci] = cover(ci)
            covers.pop(ci - k, None)
        buf.fill_to(min((ci + 1) * stride, height))
        cell = np.zeros(n_cj, np.uint8)
        for wi in range(min(ci, n_wi - 1), max(ci - k + 1, 0) - 1, -1):  # the earliest window row wins
            c = covers[wi]
            cell = np.where(c > 0, c, cell)
        rows = buf.pop_to(min((ci + 1) * stride, height)).copy()
        if cell.any():
            cols = np.repeat(cell, stride)[:width]
            mask = (rows == 0) & (cols[None] > 0)
            rows[mask] = np.broadcast_to(cols, rows.shape)[mask]
        yield emitted, rows
        emitted += len(rows)


# ---- the whole fill pipeline -----------------------------------------------------------------------


@dataclass(frozen=True)
class FillOptions:
    """How :func:`fill_map` fills a map (``fill_hole.py``'s flags of the same names).

    Attributes:
        method: one of :data:`FILL_METHODS` (see :func:`fill_map`).
        max_hole: morph: largest class-0 region filled, in pixels.
        min_area: morph: crop regions smaller than this take the one class around them; area: regions of
            any class smaller than this take their neighbours' majority class; 0: off.
        num_classes: C; map values are ``0..C-1``.
        sizes: square: window sides, applied in turn.
        stride: square: window step; divides every size.
        band_rows: morph, area, close, segments: rows per band.
        progress: show progress bars.
        radius: close: radius of the elliptical closing kernel.
        edge_percentile: segments: the share in % of valid pixels that are inside pixels (the weakest gradients).
        edge_sigma: segments: Gaussian smoothing in px of the source before its gradient.
        min_share: segments: a segment is voted only when its majority class holds this share of it.
    """

    method: str = "morph"
    max_hole: int = 250_000
    min_area: int = 0
    num_classes: int = 4
    sizes: Sequence[int] = (500, 400)
    stride: int = 50
    band_rows: int = 1024
    progress: bool = True
    radius: int = 3
    edge_percentile: float = 70.0
    edge_sigma: float = 1.0
    min_share: float = 0.5


def fill_map(
    map_path: str | os.PathLike,
    source_path: str | os.PathLike,
    output: str | os.PathLike,
    opts: FillOptions | None = None,
    **overrides,
) -> Path:
    """Fill holes in a full-size map, streaming; no-data (alpha != 255 in ``source_path``) stays 0.

    ``opts`` (default: :class:`FillOptions`'s defaults) with ``overrides``, its fields by name
    (``method="area", min_area=400``), say how:

    ``morph``: class-0 regions enclosed by one crop class, of area at most ``max_hole``, become that
    class (:func:`fill_components`); then, with ``min_area`` > 0, for each crop class c in turn, regions of
    c smaller than ``min_area`` enclosed by one other class become that class. ``square``: the
    original's rule (:func:`square_stage`) with window ``sizes`` in turn. ``area``: for each class
    0..C-1 in turn, regions smaller than ``min_area`` take their neighbours' majority class
    (:func:`cropmap.maps.cleanup.area_stage`). ``close``: morphological closing of each crop class with an
    ellipse of ``radius`` (:func:`cropmap.maps.cleanup.close_stage`). ``segments``: the source image cut into
    segments along its edges (the ``edge_percentile`` % of valid pixels with the weakest gradient, smoothed
    by ``edge_sigma``, are inside pixels); each segment whose majority class holds ``min_share`` of it takes
    that class (:mod:`cropmap.maps.segments`; two passes over the source).

    Each step is one streamed pass (chained generators, one input decode, one output encode). Memory
    per pass is a band of rows (plus OpenCV's ``int32`` component labels of the band for ``morph``).
    ``output`` may be ``map_path`` itself: it is replaced only when complete. A GeoTIFF output keeps the
    georeferencing of the map, or of the source if the map has none.
    """
    opts = replace(opts or FillOptions(), **overrides)
    if opts.method not in FILL_METHODS:
        raise ValueError(f"unknown method {opts.method!r}; valid: {', '.join(FILL_METHODS)}")
    info = check_map(map_path)
    src = check_image(source_path)
    if src.shape != info.shape:
        raise InputError(
            f"{map_path}: size {info.height}x{info.width} differs from its source {source_path} ({src.height}x{src.width})"
        )
    check_georef(info, src, "map")
    strips = _fill_stages(map_path, source_path, Path(output).name, info.shape, opts)
    height, width = info.shape
    with open_writer(output, width, height, like=info if info.georef else src) as writer, progress_bar(
        total=height, desc=Path(output).name, unit="row", disable=not opts.progress, leave=False
    ) as bar:
        for _, rows in strips:
            writer.write(np.where(rows == IGNORE, 0, rows).astype(np.uint8))
            bar.update(len(rows))
    return Path(output)


def _work_strips(map_path: str | os.PathLike, source_path: str | os.PathLike, width: int, num_classes: int,
                 with_source: bool = False) -> Iterator[tuple[int, np.ndarray | list[np.ndarray]]]:
    """Work strips (the map, IGNORE at no-data); ``with_source``: ``[work, rgba]`` per strip."""
    rows = strip_rows(width, bytes_per_pixel=1 + 4)  # map, RGBA source
    for y, (m, rgba) in iter_zip([map_path, source_path], rows):
        check_map_values(m, num_classes, map_path)
        w = np.where(valid_mask(rgba[..., 3]), m, IGNORE).astype(np.uint8)
        yield y, ([w, rgba] if with_source else w)


def _fill_stages(map_path: str | os.PathLike, source_path: str | os.PathLike, name: str, shape: tuple[int, int],
                 opts: FillOptions) -> Iterable[tuple[int, np.ndarray]]:
    """The finished work strips of ``opts.method``: its stages chained on the map's work strips.

    ``segments`` makes its first pass over the source (the edge threshold) here, with a progress bar
    named after ``name``, the output file's name.
    """
    height, width = shape
    c = opts.num_classes
    if opts.method == "segments":
        with progress_bar(total=height, desc=f"{name} edges", unit="row", disable=not opts.progress,
                          leave=False) as bar:
            threshold = edge_threshold(source_path, height, width, opts.edge_sigma, opts.edge_percentile,
                                       opts.band_rows, bar.update)
        return segment_stage(_work_strips(map_path, source_path, width, c, with_source=True), height, c, threshold,
                             opts.edge_sigma, opts.min_share, opts.band_rows)
    strips: Iterable = _work_strips(map_path, source_path, width, c)
    if opts.method == "morph":
        strips = morph_stage(strips, height, 0, opts.max_hole, opts.band_rows)
        if opts.min_area > 0:
            for value in range(1, c):
                strips = morph_stage(strips, height, value, opts.min_area - 1, opts.band_rows)
    elif opts.method == "area":
        if opts.min_area > 1:
            for value in range(c):
                strips = area_stage(strips, height, value, opts.min_area - 1, c, opts.band_rows)
    elif opts.method == "close":
        if opts.radius > 0:
            for value in range(1, c):
                strips = close_stage(strips, height, value, opts.radius, opts.band_rows)
    else:
        for size in opts.sizes:
            strips = square_stage(strips, height, width, size, opts.stride)
    return strips
