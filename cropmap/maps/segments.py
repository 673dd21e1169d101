"""Segment vote: each image segment takes the class most of its pixels have in the map.

A post-processing step in the spirit of object-based image analysis (a field is one crop): the source
image is cut into segments along its edges, and the map is made uniform inside each segment when one
class holds at least ``min_share`` of it. ``fill_hole.py --method segments``.

Segments (:func:`segment_stage`, :func:`vote_segments`): the gradient magnitude of the source's RGB,
smoothed by a Gaussian of ``sigma`` px (per channel: Sobel x and y; magnitude = the root of the sum of
the six squares), quantised to 1/4. Pixels below the image's ``percentile``-th magnitude (over valid
pixels; the threshold comes from a first streamed pass, :func:`edge_threshold`) are *inside* pixels; the
segments are the 4-connected regions of inside pixels. Edge pixels and no-data keep their class. The
percentile adapts the threshold to the image's contrast, so a dimmer or hazier acquisition gets the same
share of edge pixels.

Streaming: both passes read the map and the source in strips; the vote runs on bands of ``band_rows``
rows with ``halo`` rows of context above and below (a segment taller than that is voted on the part of
it the band sees). Memory: about ``(band_rows + 2 * halo) * W * 20`` bytes (map, RGBA, gradient, mask,
labels, and the buffer while the next rows are read; python -m bench.fill).
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator

import cv2
import numpy as np

from cropmap.raster.bands import iter_halo_bands
from cropmap.raster import IGNORE, iter_zip, strip_rows, valid_mask

QUANT = 4  # magnitude steps per grey level
MAX_BIN = 1 << 16  # magnitudes are capped at (MAX_BIN - 1) / QUANT
COL_CHUNK = 2048  # columns per gradient computation (bounds the float32 temporaries)
VOTE_ROWS = 128  # rows per step of the vote's counting (bounds its int64 temporaries)


def blur_halo(sigma: float) -> int:
    """Rows (and columns) of context the smoothed gradient of one pixel depends on."""
    return int(math.ceil(4 * sigma)) + 2


def gradient_magnitude(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """Quantised gradient magnitude of a block of the source.

    Args:
        rgb: ``uint8 [h, w, >=3]`` (the first three channels are used).
        sigma: Gaussian smoothing in px before the Sobel derivatives (0: none).

    Returns:
        ``uint16 [h, w]``: ``floor(QUANT * magnitude)``, capped at ``MAX_BIN - 1``. Borders of the block
        are reflected (right for the image's own borders; callers give a halo elsewhere).
    """
    h, w = rgb.shape[:2]
    out = np.empty((h, w), np.uint16)
    m = blur_halo(sigma)
    for x0 in range(0, w, COL_CHUNK):
        x1 = min(x0 + COL_CHUNK, w)
        a, b = max(x0 - m, 0), min(x1 + m, w)
        acc = np.zeros((h, b - a), np.float32)
        for c in range(3):
            ch = rgb[:, a:b, c].astype(np.float32)
            if sigma > 0:
                ch = cv2.GaussianBlur(ch, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
            for dx, dy in ((1, 0), (0, 1)):
                d = cv2.Sobel(ch, cv2.CV_32F, dx, dy, ksize=3, borderType=cv2.BORDER_REFLECT_101)
                acc += d * d
        q = np.sqrt(acc, out=acc)[:, x0 - a : x1 - a]
        np.minimum(q * QUANT, MAX_BIN - 1, out=q)
        out[:, x0:x1] = q.astype(np.uint16)
    return out


def _stacked(strips: Iterable[tuple[int, list[np.ndarray]]]) -> Iterator[tuple[int, np.ndarray]]:
    """``(y, [arrays])`` of equal row counts -> ``(y, uint8 [h, W, k])``, stacked along the last axis."""
    for y, arrays in strips:
        yield y, np.concatenate([a.reshape(a.shape[:2] + (-1,)) for a in arrays], axis=2)


def edge_threshold(source, height: int, width: int, sigma: float, percentile: float, band_rows: int = 1024,
                   progress=None) -> int:
    """First pass: the quantised magnitude below which ``percentile`` % of the valid pixels lie.

    Returns the smallest bin ``t`` such that at least ``percentile`` % of valid pixels have a quantised
    magnitude ``< t`` (``MAX_BIN`` when the image has no valid pixel).
    """
    m = blur_halo(sigma)
    hist = np.zeros(MAX_BIN, np.int64)
    for start, stop, lo, block in iter_halo_bands(_stacked(iter_zip([source], strip_rows(width, 4))), height,
                                                  band_rows, m):
        mag = gradient_magnitude(block, sigma)[start - lo : stop - lo]
        ok = valid_mask(block[start - lo : stop - lo, :, 3])
        hist += np.bincount(mag[ok].ravel(), minlength=MAX_BIN)
        del block, mag, ok  # not held while the next band is read
        if progress is not None:
            progress(stop - start)
    total = hist.sum()
    if total == 0:
        return MAX_BIN
    cdf = np.cumsum(hist)
    return int(np.searchsorted(cdf, percentile / 100.0 * total, side="left")) + 1


def vote_segments(work: np.ndarray, inside: np.ndarray, num_classes: int, min_share: float) -> np.ndarray:
    """Make the map uniform in each segment of ``inside`` whose majority class holds ``min_share`` of it.

    Args:
        work: ``uint8 [h, W]`` map rows (``0..C-1``, IGNORE at no-data).
        inside: ``bool [h, W]`` inside pixels (never at no-data).
        num_classes: C.
        min_share: the majority's least share of a segment's pixels for the segment to be voted.

    Returns:
        ``uint8 [h, W]`` a new array; edge pixels and no-data unchanged; ties go to the lowest class.
    """
    n, labels = cv2.connectedComponents(inside.view(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    out = work.copy()
    if n <= 1:
        return out
    counts = np.zeros(n * num_classes, np.int64)
    for y in range(0, len(work), VOTE_ROWS):  # in chunks of rows: int64 temporaries of a chunk only
        lab = labels[y : y + VOTE_ROWS]
        sel = lab > 0
        counts += np.bincount(lab[sel].astype(np.int64) * num_classes + work[y : y + VOTE_ROWS][sel],
                              minlength=n * num_classes)
    counts = counts.reshape(n, num_classes)
    size = counts.sum(1)
    ok = counts.max(1) >= min_share * np.maximum(size, 1)
    ok[0] = False
    new = np.where(ok, counts.argmax(1), -1).astype(np.int16)  # ties: the lowest class
    for y in range(0, len(work), VOTE_ROWS):
        v = new[labels[y : y + VOTE_ROWS]]
        change = v >= 0
        out[y : y + VOTE_ROWS][change] = v[change].astype(np.uint8)
    return out


def segment_stage(strips: Iterable[tuple[int, list[np.ndarray]]], height: int, num_classes: int, threshold: int,
                  sigma: float, min_share: float, band_rows: int = 1024,
                  halo: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Second pass: the segment vote on streamed ``(y, [work rows uint8 [h, W], rgba uint8 [h, W, 4]])``.

    ``threshold`` from :func:`edge_threshold`; ``halo`` (default ``band_rows // 4``) rows of context
    above and below each band. Yields ``(y, rows)`` finished work strips, top to bottom.
    """
    halo = band_rows // 4 if halo is None else halo
    m = blur_halo(sigma)
    for start, stop, lo, block in iter_halo_bands(_stacked(strips), height, band_rows, halo + m):
        a = max(start - halo, lo)
        b = min(stop + halo, lo + len(block))
        mag = gradient_magnitude(block[:, :, 1:4], sigma)[a - lo : b - lo]
        work = block[a - lo : b - lo, :, 0]
        inside = (mag < threshold) & (work != IGNORE)
        done = np.ascontiguousarray(vote_segments(work, inside, num_classes, min_share)[start - a : stop - a])
        del block, mag, work, inside  # not held while the next band is read
        yield start, done
