"""Bands of rows over an image that arrives in strips: the two band iterators of the streaming steps.

Strips are ``(y, rows)`` pairs, top to bottom (:func:`cropmap.raster.iter_zip` and the like); a band is a
``numpy`` block of whole rows. Memory depends on the band height and the image's width, never on its
height. Only ``numpy``: every stage that works in bands (hole filling, the clean-ups, the segment vote)
imports this module, and it imports none of them.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np


class RowBuffer:
    """Rows of an image arriving in strips, kept from ``y0`` on until dropped."""

    def __init__(self, strips: Iterable[tuple[int, np.ndarray]]):
        self._it = iter(strips)
        self.buf: np.ndarray | None = None
        self.y0 = 0
        self.done = False

    @property
    def end(self) -> int:
        return self.y0 + (0 if self.buf is None else len(self.buf))

    def fill_to(self, row: int) -> None:
        """Read strips until rows up to ``row`` (exclusive) are buffered or the input ends."""
        pieces = [] if self.buf is None else [self.buf]
        end = self.end
        while end < row and not self.done:
            nxt = next(self._it, None)
            if nxt is None:
                self.done = True
                break
            pieces.append(nxt[1])
            end += len(nxt[1])
        if pieces:
            self.buf = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def pop_to(self, row: int) -> np.ndarray:
        """Remove and return the buffered rows above ``row``."""
        k = row - self.y0
        out, self.buf = self.buf[:k], self.buf[k:]
        self.y0 = row
        return out


def iter_halo_bands(strips: Iterable[tuple[int, np.ndarray]], height: int, band_rows: int,
                    halo: int) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """Bands of rows with context: yield ``(start, stop, lo, block)`` for output rows ``start..stop``.

    ``block`` holds the rows ``lo .. min(stop + halo, height)`` with ``lo = max(start - halo, 0)`` (a view
    of a rolling buffer: drop it before asking for the next band). Bands of ``band_rows`` cover
    ``0..height`` once; memory: about ``band_rows + 2 * halo`` rows plus one strip.
    """
    buf = RowBuffer(strips)
    start = 0
    while start < height:
        stop = min(start + band_rows, height)
        buf.fill_to(stop + halo)
        lo = max(start - halo, buf.y0)
        yield start, stop, lo, buf.buf[lo - buf.y0 :]
        buf.pop_to(max(stop - halo, buf.y0))  # keep the context rows above the next band, drop the rest
        start = stop


def iter_banded(
    strips: Iterable[tuple[int, np.ndarray]],
    height: int,
    process: Callable[[np.ndarray, bool, bool], int | None],
    band_rows: int = 1024,
) -> Iterator[tuple[int, np.ndarray]]:
    """Run a region ``process`` over a map in bands of rows, growing a band while a region is pending.

    ``process(band, cut_top, cut_bottom)`` edits ``band`` in place and returns the first band row of
    the regions it could not decide yet (see :func:`cropmap.maps.postprocess.fill_components`). The next band starts one row
    above them (that row is its top cut row) and keeps the rows already processed; a band whose pending
    region starts at its own second row grows by ``band_rows`` instead. Memory: about ``band_rows``
    rows plus the tallest pending region (at most ``max_area`` rows for an area limit).

    Yields ``(y, rows)`` finished strips, top to bottom, covering ``0..height`` once.
    """
    buf = RowBuffer(strips)
    length = band_rows
    while True:
        buf.fill_to(buf.y0 + length)
        cut_top, cut_bottom = buf.y0 > 0, buf.end < height
        if buf.buf is None or len(buf.buf) == 0:
            return
        pending = process(buf.buf, cut_top, cut_bottom)
        if not cut_bottom:
            y0 = buf.y0
            yield y0, buf.pop_to(buf.end)
            return
        start = buf.y0 + pending - 1 if pending is not None else buf.end - 1
        if start <= buf.y0:
            length += band_rows  # the pending region starts at the band's top: read more rows
            continue
        y0 = buf.y0
        yield y0, buf.pop_to(start).copy()
        length = band_rows
