"""Map clean-up by region size and shape: small-object and hole removal by area, morphological closing.

Two of the competition winners' post-processing steps, streamed over full-size maps like the rest of
:mod:`cropmap.maps.postprocess` (work strips carry no-data as :data:`~cropmap.raster.IGNORE`):

* :func:`area_stage` (``fill_hole.py --method area --min_area N``): for one class ``c``, every
  4-connected region of ``c`` smaller than ``N`` pixels takes the class that most of its outside
  4-neighbours have (no-data does not count; a region with only no-data or the border around it stays).
  Run for every class in turn (0 first), this removes small objects of the crops and fills small holes
  of any class inside another, whether the surroundings are one class or several.
* :func:`close_stage` (``--method close --radius R``): for each crop class, the morphological closing
  (dilation then erosion, elliptical ``2R+1`` kernel) of its mask; pixels of class 0 that the closing
  adds become that class. Gaps and notches narrower than about ``2R`` between parts of a field are
  filled; no crop pixel changes class, no-data stays no-data.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import cv2
import numpy as np

from cropmap.raster.bands import iter_banded, iter_halo_bands
from cropmap.raster import IGNORE


def remove_small_components(
    band: np.ndarray, select: np.ndarray, max_area: int, cut_top: bool, cut_bottom: bool, num_classes: int
) -> int | None:
    """Give each selected 4-connected region of at most ``max_area`` pixels its neighbours' majority class, in place.

    Args:
        band: ``uint8 [h, W]`` work rows (values ``0..C-1``, IGNORE for no-data); modified in place.
        select: ``bool [h, W]`` the pixels of one class (``band == c``).
        max_area: largest area removed (``min_area - 1``).
        cut_top / cut_bottom: the band's first / last row is not the image's edge; regions touching a cut
            row are decided by the band that holds them whole (see :func:`cropmap.maps.postprocess.fill_components`).
        num_classes: C.

    Returns:
        The first band row of the pending regions (small so far, cut by the bottom row), or None.
    """
    h, w = band.shape
    n, labels, stats, _ = cv2.connectedComponentsWithStats(select.view(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    if n <= 1:
        return None
    top = stats[:, cv2.CC_STAT_TOP]
    bottom = top + stats[:, cv2.CC_STAT_HEIGHT]
    area = stats[:, cv2.CC_STAT_AREA]
    small = area <= max_area
    ignored = (top == 0) if cut_top else np.zeros(n, bool)
    pending = ((bottom == h) if cut_bottom else np.zeros(n, bool)) & small & ~ignored
    decide = small & ~ignored & ~pending
    decide[0] = pending[0] = False
    if decide.any():
        ids = np.flatnonzero(decide)
        index = np.zeros(n, np.int64)  # component id -> 1 + its row in counts (0: not decided here)
        index[ids] = np.arange(1, len(ids) + 1)
        counts = np.zeros((len(ids) + 1) * num_classes, np.int64)
        lab_idx = index[labels]
        pairs = [
            (lab_idx[1:], band[:-1], labels[1:], labels[:-1]),  # neighbour above
            (lab_idx[:-1], band[1:], labels[:-1], labels[1:]),  # below
            (lab_idx[:, 1:], band[:, :-1], labels[:, 1:], labels[:, :-1]),  # left
            (lab_idx[:, :-1], band[:, 1:], labels[:, :-1], labels[:, 1:]),  # right
        ]
        for k, nb_val, lab, nb_lab in pairs:
            edge = (k > 0) & (nb_lab != lab) & (nb_val != IGNORE)
            counts += np.bincount(k[edge] * num_classes + nb_val[edge], minlength=len(counts))
        counts = counts.reshape(-1, num_classes)
        has = counts.sum(1) > 0
        new_class = np.where(has, counts.argmax(1), -1)  # ties: the lowest class
        lut = np.full(len(ids) + 1, -1, np.int16)
        lut[1:] = new_class[1:]
        new = lut[lab_idx]
        mask = new >= 0
        band[mask] = new[mask].astype(np.uint8)
    return int(top[pending].min()) if pending.any() else None


def area_stage(strips: Iterable[tuple[int, np.ndarray]], height: int, value: int, max_area: int,
               num_classes: int, band_rows: int = 1024) -> Iterator[tuple[int, np.ndarray]]:
    """Regions of ``value`` of at most ``max_area`` pixels take their neighbours' majority class, in streamed work strips."""

    def process(band, cut_top, cut_bottom):
        return remove_small_components(band, band == value, max_area, cut_top, cut_bottom, num_classes)

    return iter_banded(strips, height, process, band_rows)


def close_rows(block: np.ndarray, value: int, kernel: np.ndarray) -> np.ndarray:
    """Closing of ``block == value`` (``uint8 [h, W]`` work rows); class-0 pixels it adds become ``value``.

    Returns a new array. The rows within ``kernel`` size of the block's top and bottom are only right
    when the block is the whole image there (callers give a halo).
    """
    mask = (block == value).view(np.uint8)
    closed = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel, borderType=cv2.BORDER_REPLICATE)
    out = block.copy()
    out[(closed > 0) & (block == 0)] = value
    return out


def close_stage(strips: Iterable[tuple[int, np.ndarray]], height: int, value: int, radius: int,
                band_rows: int = 1024) -> Iterator[tuple[int, np.ndarray]]:
    """Morphological closing of class ``value`` (kernel: ellipse of side ``2 * radius + 1``) on streamed work strips.

    Each output band is computed with ``2 * radius`` rows of context above and below (the reach of a
    dilation followed by an erosion). Memory: about ``band_rows + 4 * radius`` rows.
    """
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    halo = 2 * radius
    for start, stop, lo, block in iter_halo_bands(strips, height, band_rows, halo):
        yield start, close_rows(block, value, kernel)[start - lo : stop - lo]
