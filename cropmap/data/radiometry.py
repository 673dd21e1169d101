"""Relative radiometric normalisation: bring a new acquisition's colours to the training images' statistics.

A test scene taken on another date (other illumination, colour balance, haze) differs from the training
scenes by, to a first approximation, a per-channel gain and offset. Training computes the per-channel mean
and standard deviation of the valid pixels of its training tiles (:func:`tile_stats`) and stores them in
the checkpoint (``input_stats``, with per-channel 256-level histograms); ``predict.py --radiometry``
computes the same statistics over the valid pixels of each test image (its windows, :func:`window_stats`, or
the source, :func:`source_stats`) and maps the image's values before the model sees them, either through
the per-channel affine transform that gives them the training mean and standard deviation (``match``:
:func:`match_affine`, :func:`apply_affine`) or through the per-channel look-up table that gives them the
training histogram (``histogram``: :func:`match_histogram`, :func:`apply_lut`), which also undoes a change of
the tone curve (gamma). No-data pixels stay 0. On an image of the training acquisition both transforms are
close to the identity. Both assume that the new image holds about the same mix of land cover as the training
images: on an image that is mostly one class, matching it to the training mix distorts it.

Statistics are sums over ``float64`` pixel values of a bounded sample of tiles/windows (``max_tiles``,
evenly spread), so their cost does not grow with the image size beyond that.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cropmap.core.cli import progress as progress_bar
from cropmap.core.layout import train_tile_dirs
from cropmap.raster import IGNORE, check_image, iter_strips, read_png, strip_rows, valid_mask


class ChannelStats:
    """Running per-channel sums and 256-level histograms over valid pixels: ``mean``, ``std`` (``float64 [C]``)
    and ``hist`` (``int64 [C, 256]``, of the values rounded to 0..255)."""

    def __init__(self, channels: int = 3):
        self.n = 0
        self.s = np.zeros(channels, np.float64)
        self.s2 = np.zeros(channels, np.float64)
        self.hist = np.zeros((channels, 256), np.int64)

    def update(self, pixels: np.ndarray) -> None:
        """Add ``pixels`` ``[N, C]`` (any numeric dtype; the histogram counts them rounded to 0..255)."""
        x = pixels.astype(np.float64, copy=False)
        self.n += len(x)
        self.s += x.sum(0)
        self.s2 += np.square(x).sum(0)
        levels = pixels if pixels.dtype == np.uint8 else np.clip(np.rint(x), 0, 255).astype(np.uint8)
        for c in range(self.hist.shape[0]):
            self.hist[c] += np.bincount(levels[:, c], minlength=256)

    @property
    def mean(self) -> np.ndarray:
        return self.s / max(self.n, 1)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.s2 / max(self.n, 1) - np.square(self.mean), 0.0))

    def as_dict(self) -> dict:
        """``{"mean": [...], "std": [...], "hist": [[...] * 256] * C, "pixels": n}`` (plain numbers, for
        checkpoints and JSON)."""
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std],
                "hist": self.hist.tolist(), "pixels": int(self.n)}


def _spread(n: int, k: int) -> list[int]:
    """Up to ``k`` indices evenly spread over ``range(n)``."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, k)})


def tile_stats(data_root: str | os.PathLike, rows: Sequence[dict], max_tiles: int = 256) -> dict:
    """RGB statistics of training tiles: valid pixels are those whose label is not 255.

    Args:
        data_root: the data root whose training tiles are read (:func:`cropmap.core.layout.train_tile_dirs`).
        rows: the tiles' ``tiles.csv`` rows (``name``).
        max_tiles: at most this many tiles, evenly spread over ``rows``, are read.
    """
    image_dir, label_dir = train_tile_dirs(data_root)
    st = ChannelStats(3)
    for i in _spread(len(rows), max_tiles):
        name = rows[i]["name"]
        image, label = read_png(image_dir / name), read_png(label_dir / name)
        st.update(image[..., :3][label != IGNORE])
    return st.as_dict()


def window_stats(tile_dir: str | os.PathLike, rows: Sequence[dict], max_tiles: int = 256) -> dict:
    """RGB statistics of an image's pre-cut test windows (RGBA: valid where alpha is 255; RGB: all valid)."""
    st = ChannelStats(3)
    for i in _spread(len(rows), max_tiles):
        arr = read_png(Path(tile_dir) / rows[i]["name"])
        valid = valid_mask(arr[..., 3]) if arr.shape[2] == 4 else np.ones(arr.shape[:2], bool)
        st.update(arr[..., :3][valid])
    return st.as_dict()


def source_stats(path: str | os.PathLike, row_step: int = 4, progress: bool = False) -> dict:
    """RGB statistics of a source image's valid pixels, one streaming pass in strips (bounded memory).

    Every ``row_step``-th row is counted (the decode costs the same either way; the sums cost less).
    """
    info = check_image(path)
    st = ChannelStats(3)
    with progress_bar(total=info.height, desc=f"{Path(path).name} statistics", unit="row", disable=not progress,
                      leave=False) as bar:
        for y, strip in iter_strips(path, strip_rows(info.width, bytes_per_pixel=4), rgba=True):
            sel = strip[(-y) % row_step :: row_step]
            st.update(sel[..., :3][valid_mask(sel[..., 3])])
            bar.update(len(strip))
    return st.as_dict()


def match_affine(source: dict, reference: dict, max_gain: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(gain, offset)`` (``float32 [3]`` each) with ``gain * source + offset`` having the
    reference's mean and standard deviation; the gain is clipped to ``[1 / max_gain, max_gain]`` (a flat
    channel is not blown up)."""
    sm, ss = np.asarray(source["mean"], np.float64), np.asarray(source["std"], np.float64)
    rm, rs = np.asarray(reference["mean"], np.float64), np.asarray(reference["std"], np.float64)
    gain = np.clip(rs / np.maximum(ss, 1e-6), 1 / max_gain, max_gain)
    return gain.astype(np.float32), (rm - gain * sm).astype(np.float32)


def match_histogram(source: dict, reference: dict) -> np.ndarray:
    """Per-channel look-up table ``uint8 [3, 256]`` that maps the source's value distribution onto the
    reference's (histogram matching): a level whose share of the source's pixels at or below it is ``q``
    goes to the reference level with the same share ``q`` (linear between levels). Monotone in each channel,
    so it undoes any increasing per-channel change (gain, offset, gamma) of one image's colours; levels the
    source does not use map by the same interpolation. Both dicts need ``"hist"`` (``[3][256]`` counts).

    Raises:
        ValueError: a histogram is missing or empty.
    """
    lut = np.zeros((3, 256), np.uint8)
    levels = np.arange(256, dtype=np.float64)
    for c in range(3):
        hs = np.asarray(source.get("hist", [[]] * 3)[c], np.float64)
        hr = np.asarray(reference.get("hist", [[]] * 3)[c], np.float64)
        if hs.shape != (256,) or hr.shape != (256,) or hs.sum() <= 0 or hr.sum() <= 0:
            raise ValueError("histogram matching needs 256-level histograms with pixels in both images")
        # mid-rank quantiles: level v holds the pixels between cdf[v-1] and cdf[v]
        qs = (np.cumsum(hs) - hs / 2) / hs.sum()
        cr = (np.cumsum(hr) - hr / 2) / hr.sum()
        used = hr > 0  # strictly increasing quantiles of the reference's used levels
        lut[c] = np.clip(np.rint(np.interp(qs, cr[used], levels[used])), 0, 255).astype(np.uint8)
    return lut


def apply_lut(rgba: torch.Tensor, lut: np.ndarray) -> torch.Tensor:
    """``uint8 [B, 4 or 3, H, W]`` windows with each RGB channel mapped through ``lut`` (``uint8 [3, 256]``);
    alpha and no-data pixels (alpha != 255, which stay 0) untouched. Returns a new tensor."""
    table = torch.as_tensor(lut, dtype=torch.uint8, device=rgba.device)
    out = rgba.clone()
    y = torch.stack([table[c][rgba[:, c].long()] for c in range(3)], 1)
    if rgba.shape[1] == 4:
        y = torch.where(valid_mask(rgba[:, 3:4]), y, rgba[:, :3])
    out[:, :3] = y
    return out


def apply_affine(rgba: torch.Tensor, gain: np.ndarray, offset: np.ndarray) -> torch.Tensor:
    """``uint8 [B, 4 or 3, H, W]`` windows with their RGB mapped to ``gain * x + offset`` (rounded, clipped to
    0..255); alpha and no-data pixels (alpha != 255, which stay 0) untouched. Returns a new tensor."""
    x = rgba[:, :3].float()
    g = torch.as_tensor(gain, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    o = torch.as_tensor(offset, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    y = (x * g + o).round_().clamp_(0, 255).to(torch.uint8)
    out = rgba.clone()
    if rgba.shape[1] == 4:
        y = torch.where(valid_mask(rgba[:, 3:4]), y, rgba[:, :3])
    out[:, :3] = y
    return out
