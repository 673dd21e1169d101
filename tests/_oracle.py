"""A source image whose red channel encodes its label, its test windows, and the oracle model that reads the
label back: the prediction tests' known answer (every map must equal the label on valid pixels); and
:func:`same_files`, for outputs that must be byte for byte equal."""

import csv
from pathlib import Path

import numpy as np
import torch

from cropmap.core.layout import window_folder
from cropmap.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from cropmap.data.tiling import iter_tiles
from cropmap.raster import read_png, write_png

NUM_CLASSES = 4
STEP = 60  # the source's red channel is label * STEP, so an oracle can read the label back


def make_source(tmp_path: Path, h: int, w: int, seed: int = 0, nodata: bool = True):
    """A source RGBA image whose red channel encodes a blocky label; a no-data corner and a hole."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, NUM_CLASSES, (h // 7 + 1, w // 7 + 1))
    label = np.kron(coarse, np.ones((7, 7), np.int64))[:h, :w].astype(np.uint8)
    alpha = np.full((h, w), 255, np.uint8)
    if nodata:
        alpha[: h // 3, : w // 4] = 0  # a no-data corner
        alpha[h // 2 : h // 2 + 3, w // 2 : w // 2 + 5] = 0  # a small no-data hole
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 0] = label * STEP
    rgba[..., 1] = rng.integers(0, 256, (h, w))
    rgba[..., 3] = alpha
    rgba[alpha == 0, :3] = 0
    path = tmp_path / "image_3.png"
    write_png(path, rgba)
    return path, label, alpha


def write_windows(tmp_path: Path, source: Path, tile: int, stride: int, image: str = "image_3"):
    """Cut test windows per the contract's layout; returns (rows, tile folder)."""
    folder = tmp_path / "test" / window_folder(image)
    folder.mkdir(parents=True, exist_ok=True)
    h, w = read_png(source).shape[:2]
    rows = []
    for t in iter_tiles(source, tile, stride, image=image):
        valid = int(t.valid.sum())
        if valid == 0:
            continue
        write_png(folder / t.name, t.rgba)
        rows.append(dict(name=t.name, image=image, y=t.y, x=t.x, size=tile, valid_pixels=valid, height=h, width=w))
    with open(tmp_path / "test" / "tiles.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    return rows, folder


def oracle(x: torch.Tensor) -> dict:
    """Reads the label back from the normalised red channel and returns its one-hot logits."""
    red = (x[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255
    cls = torch.round(red / STEP).long().clamp(0, NUM_CLASSES - 1)
    onehot = torch.nn.functional.one_hot(cls, NUM_CLASSES).permute(0, 3, 1, 2).float()
    return {"out": onehot * 20.0, "aux": onehot}


def expected(label, alpha):
    return np.where(alpha == 255, label, 0).astype(np.uint8)


def same_files(a, b) -> bool:
    return Path(a).read_bytes() == Path(b).read_bytes()
