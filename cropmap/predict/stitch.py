"""Stitch overlapping window predictions into a full-size map, one band of rows at a time, on any device.

Windows arrive sorted by their top row ``y`` (any ``x`` order within a row). Their class probabilities
are accumulated, weighted by a window of blending weights (:data:`WEIGHTS`), into a band of ``tile``
rows covering the current window row, on the device the probabilities are on (the model's). When the
next window row starts at ``y``, every row above ``y`` is finished (no later window covers it): those
rows are turned into ``uint8`` labels (argmax) and, on request, ``uint8`` probabilities, still on the
device, and handed to a sink (which copies them to the host and encodes them) and dropped.

Memory (on the device): the band is ``float32 [C, tile, W]`` (``4 * C * tile * W`` bytes, 32 MiB for
C=4, tile=512, W=4096) plus one finished strip at a time: independent of the image height,
proportional to its width.

A pixel is 0 in the map wherever no window marks it valid (alpha 255): no-data, or not covered at all.

Several processes can share one image by rows: a stitcher given ``rows=(start, stop)`` emits only map
rows ``start..stop``; it must be given every window that covers one of them, and then computes them
exactly as a stitcher of the whole image does (same windows, same order, same float operations).
"""

from __future__ import annotations

import inspect
from typing import Callable

import numpy as np

import torch

#: Blending modes: "gaussian" weights each window by a separable Gaussian centred on it (seams vanish);
#: "centre" keeps only each window's central ``keep`` x ``keep`` pixels (the competition winners' way:
#: large windows, only their centre kept; see :func:`centre_window`); "none" pastes windows without
#: weights, a later window overwriting an earlier one (the original's way).
BLEND_MODES = ("gaussian", "centre", "none")



def weight_window(size: int, sigma_scale: float = 0.125, floor: float = 1e-3) -> np.ndarray:
    """Blending weights of one ``size`` x ``size`` window: ``float32 [size, size]``, 1 at the centre.

    The outer product of a 1-D Gaussian (``sigma = sigma_scale * size``) with itself, the 1-D profile
    clipped below at ``floor`` so that the pixels at a window's edge (which may be the image's edge,
    covered by no other window) keep a positive weight (``floor**2`` at the corners). Clipping the
    profile rather than the product keeps the window separable: where two windows side by side
    overlap, the nearer centre wins on every row.
    """
    if size <= 0:
        raise ValueError("size must be positive")
    centre = (size - 1) / 2
    sigma = max(sigma_scale * size, 1e-6)
    ramp = np.exp(-0.5 * ((np.arange(size) - centre) / sigma) ** 2)
    ramp = np.maximum(ramp / ramp.max(), floor)
    return np.outer(ramp, ramp).astype(np.float32)


def centre_window(size: int, keep: int | None = None, floor: float = 1e-4) -> np.ndarray:
    """Weights of centre-keep stitching: ``float32 [size, size]``, 1 on the central ``keep`` x ``keep``
    square (default: half the window) and ``floor`` elsewhere.

    With windows every ``keep`` pixels the central squares tile the image, so each pixel takes the
    prediction of the one window whose centre holds it, where the model saw the most context (at least
    ``(size - keep) / 2`` pixels on every side). The ``floor`` keeps a tiny weight on the margins for the
    pixels that no central square covers (the image's outer margin, or windows moved inward at the far
    edges): they blend the margins of the windows that cover them.
    """
    keep = max(1, size // 2) if keep is None else int(keep)
    if not 0 < keep <= size:
        raise ValueError(f"keep must be in 1..{size}, got {keep}")
    lo = (size - keep) // 2
    ramp = np.full(size, floor, np.float32)
    ramp[lo : lo + keep] = 1.0
    return np.outer(ramp, ramp).astype(np.float32)


#: Weighted blending modes: name -> ``fn(size, **options) -> float32 [size, size]`` weights (positive).
#: Adding a mode is one entry here and its name in :data:`BLEND_MODES`; "none" (paste) has no weights.
WEIGHTS: dict[str, Callable[..., np.ndarray]] = {"gaussian": weight_window, "centre": centre_window}


def blend_weight(blend: str, size: int, **options) -> np.ndarray | None:
    """The weights of blending mode ``blend`` for ``size`` x ``size`` windows, or None for "none" (paste).

    ``options`` go to the mode's weight function, those it does not take are ignored (``keep``, the
    centre size of "centre", means nothing to "gaussian"); None values are left out (the function's
    default). ``ValueError`` for an unknown mode.
    """
    if blend not in BLEND_MODES:
        raise ValueError(f"unknown blend {blend!r}; valid: {', '.join(BLEND_MODES)}")
    if blend == "none":
        return None
    fn = WEIGHTS[blend]
    accepted = inspect.signature(fn).parameters
    return fn(size, **{k: v for k, v in options.items() if k in accepted and v is not None})


def labels_from_acc(acc: torch.Tensor) -> torch.Tensor:
    """``uint8 [h, W]`` argmax labels of accumulated scores ``float32 [C, h, W]``; 0 where they sum to 0.

    ``acc`` is the weighted sum of the class probabilities of every window covering each pixel (all zero
    where no window marked the pixel valid; elsewhere its largest class is positive). Ties go to the
    lowest class, as ``argmax`` does. Same device as ``acc``.
    """
    # a loop over the classes: torch's argmax over the outer dimension is ~10x slower on CPUs
    best = acc[0].clone()
    labels = torch.zeros(acc.shape[1:], dtype=torch.uint8, device=acc.device)
    for c in range(1, acc.shape[0]):
        better = acc[c] > best  # strictly: a tie keeps the lower class; all-zero pixels stay 0
        labels.masked_fill_(better, c)
        torch.maximum(best, acc[c], out=best)
    return labels


def probs_from_acc(acc: torch.Tensor) -> torch.Tensor:
    """``uint8 [C, h, W]`` quantised probabilities ``round(255 * acc / acc.sum(0))``, 0 where the sum is 0."""
    total = acc.sum(dim=0)
    covered = total > 0
    scale = torch.where(covered, 255.0 / torch.where(covered, total, torch.ones_like(total)), torch.zeros_like(total))
    return torch.round(acc * scale[None]).clamp_(0, 255).to(torch.uint8)


# sink(y, labels uint8 [h, W], probs uint8 [C, h, W] or None): tensors on the stitcher's device
Sink = Callable[[int, torch.Tensor, "torch.Tensor | None"], None]


class BandStitcher:
    """Accumulate window probabilities into a band of rows; emit finished rows top to bottom.

    Args:
        height, width: size of the full map (the source image), in pixels.
        num_classes: C, the number of probability planes of each window.
        tile: window side T (windows are ``T x T``; they may run past the image's far edge, e.g. when
            the source is smaller than one tile: the outside part is ignored).
        sink: called as ``sink(y, labels, probs)`` for consecutive row ranges covering ``start..stop``
            exactly once, in order: ``labels`` ``uint8 [h, W]``; ``probs`` ``uint8 [C, h, W]`` when
            ``keep_probs`` else None; tensors on ``device``, the sink's to keep.
        blend: a mode of :data:`BLEND_MODES` (``"gaussian"``: weighted by :func:`weight_window`;
            ``"centre"``: :func:`centre_window`; ``"none"``: paste, last one wins).
        keep_probs: also hand quantised probabilities to the sink.
        device: where the band lives and the arithmetic runs (the model's device).
        rows: ``(start, stop)``, the map rows to emit (default: all); see the module docstring.
        blend_options: passed to the weight function of ``blend`` (:func:`blend_weight`), e.g. ``keep``.

    Call :meth:`add` (or :meth:`add_batch`) for every window in ascending ``y``, then :meth:`finish`.
    """

    def __init__(
        self,
        height: int,
        width: int,
        num_classes: int,
        tile: int,
        sink: Sink,
        blend: str = "gaussian",
        keep_probs: bool = False,
        device: torch.device | str = "cpu",
        rows: tuple[int, int] | None = None,
        blend_options: dict | None = None,
    ):
        self.height, self.width, self.num_classes, self.tile = int(height), int(width), int(num_classes), int(tile)
        self.sink, self.blend, self.keep_probs = sink, blend, keep_probs
        self.device = torch.device(device)
        weight = blend_weight(blend, self.tile, **(blend_options or {}))
        self.weight = None if weight is None else torch.from_numpy(weight).to(self.device)
        self.band = torch.zeros((self.num_classes, self.tile, self.width), dtype=torch.float32, device=self.device)
        start, stop = rows if rows is not None else (0, self.height)
        self.start, self.stop = max(0, int(start)), min(self.height, int(stop))
        self.band_y = 0  # image row of band row 0
        self.emitted = 0  # rows up to here are finished (handed to the sink, or outside start..stop)
        self._last_y = 0

    def _emit(self, upto: int) -> None:
        """Finish rows ``emitted..upto``: hand those in ``start..stop`` to the sink; rows below the band
        are all-zero (uncovered)."""
        upto = min(upto, self.stop)
        self.emitted = max(self.emitted, min(self.start, upto))  # rows above start: another process's
        while self.emitted < upto:
            y = self.emitted
            if y < self.band_y + self.tile:
                stop = min(upto, self.band_y + self.tile)
                acc = self.band[:, y - self.band_y : stop - self.band_y]
            else:  # rows between band and next window row: no window covers them
                stop = min(upto, y + self.tile)
                acc = torch.zeros((self.num_classes, stop - y, self.width), dtype=torch.float32, device=self.device)
            self.sink(y, labels_from_acc(acc), probs_from_acc(acc) if self.keep_probs else None)
            self.emitted = stop

    def _advance(self, y: int) -> None:
        """Finish every row above ``y`` and move the band to start at ``y``."""
        if y <= self.band_y:
            return
        self._emit(y)
        shift = y - self.band_y
        if shift < self.tile:
            keep = self.tile - shift
            # move the rows still open up, in pieces that never overlap their source
            for i in range(0, keep, shift):
                j = min(i + shift, keep)
                self.band[:, i:j].copy_(self.band[:, shift + i : shift + j])
            self.band[:, keep:].zero_()
        else:
            self.band.zero_()
        self.band_y = y

    def add(self, y: int, x: int, probs, valid) -> None:
        """Add one window.

        Args:
            y, x: the window's top-left pixel in the image (``y`` not less than the previous window's).
            probs: ``float32 [C, T, T]`` class probabilities (each pixel's sum 1), tensor or array.
            valid: ``bool [T, T]``, True where the source pixel is valid (alpha 255).
        """
        probs = torch.as_tensor(probs, device=self.device)
        valid = torch.as_tensor(valid, device=self.device)
        wv = valid if self.weight is None else self.weight * valid
        self._add(int(y), int(x), probs, wv)

    def add_batch(self, ys, xs, probs: torch.Tensor, valid: torch.Tensor) -> None:
        """Add windows ``i`` at ``(ys[i], xs[i])``: ``probs`` ``float32 [B, C, T, T]``, ``valid`` ``bool [B, T, T]``
        (on the stitcher's device); ``ys`` ascending."""
        wv = valid if self.weight is None else self.weight * valid  # one kernel for the batch
        for i, (y, x) in enumerate(zip(ys, xs)):
            self._add(int(y), int(x), probs[i], wv[i])

    def _add(self, y: int, x: int, probs: torch.Tensor, wv: torch.Tensor) -> None:
        if y < self._last_y:
            raise ValueError("windows must be added in ascending y")
        self._last_y = y
        self._advance(y)
        h = min(self.tile, self.height - y)
        w = min(self.tile, self.width - x)
        if h <= 0 or w <= 0:
            return
        p = probs[:, :h, :w]
        region = self.band[:, :h, x : x + w]
        if self.weight is None:  # paste where valid
            region.copy_(torch.where(wv[:h, :w], p, region))
        else:
            region.addcmul_(p, wv[:h, :w])

    def finish(self) -> None:
        """Emit every remaining row (call once, after the last :meth:`add`)."""
        self._emit(self.height)
