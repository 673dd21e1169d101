"""Tiny seeded training tiles for the training and data tests (regenerated on every run, no blobs).

Each tile is a few vertical stripes of random classes; a class has its own colour (plus noise), so a
small network learns it in a few dozen iterations. A corner of some tiles is no-data: black image,
label 255.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from cropmap.raster import IGNORE, write_png

# class -> RGB colour
PALETTE = np.array([[90, 90, 90], [220, 60, 60], [60, 200, 60], [60, 80, 230]], np.int32)


def make_tile(rng: np.random.Generator, size: int = 64, stripes: int = 4, num_classes: int = 4,
              nodata: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One tile: ``(uint8 [size, size, 3] RGB, uint8 [size, size] label)``."""
    classes = rng.integers(0, num_classes, stripes)
    classes[: min(num_classes, stripes)] = rng.permutation(num_classes)[: min(num_classes, stripes)]
    width = size // stripes
    label = np.repeat(np.repeat(classes, width)[None, :], size, axis=0).astype(np.uint8)
    if rng.random() < 0.5:
        label = np.ascontiguousarray(label.T)
    image = PALETTE[label] + rng.integers(-20, 21, (size, size, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    if nodata:
        q = size // 4
        image[:q, :q] = 0
        label[:q, :q] = IGNORE
    return image, label


def make_tiles(root: str | Path, n_train: int = 16, n_val: int = 4, size: int = 64, seed: int = 0,
               num_classes: int = 4, n_gap: int = 1, rare_every: int = 0) -> Path:
    """Write ``{root}/train/{data,label}/*.png`` and ``{root}/train/tiles.csv``; returns ``root``.

    ``rare_every`` > 0: the last class appears only in every ``rare_every``-th tile (a rare class).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    splits = ["train"] * n_train + ["val"] * n_val + ["gap"] * n_gap
    for i, split in enumerate(splits):
        y, x = (i // 8) * size, (i % 8) * size
        name = f"image_1_{y}_{x}.png"
        classes = num_classes - 1 if rare_every and i % rare_every else num_classes
        image, label = make_tile(rng, size, num_classes=classes, nodata=i % 3 == 0)
        write_png(root / "train" / "data" / name, image)
        write_png(root / "train" / "label" / name, label)
        counts = [int((label == k).sum()) for k in range(num_classes)]
        rows.append({"name": name, "image": "image_1", "y": y, "x": x, "size": size,
                     "valid_pixels": int((label != IGNORE).sum()),
                     **{f"c{k}": c for k, c in enumerate(counts)}, "split": split})
    with open(root / "train" / "tiles.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def tiny_args(root: str | Path, *extra: str) -> list[str]:
    """Command-line flags of a quick CPU run of a light model on :func:`make_tiles` data."""
    return ["--train", "--data_root", str(root), "--backbone", "resnet18", "--device", "cpu",
            "--batch_size", "4", "--crop_size", "64", "--workers", "0", "--threads", "1", "--quiet", "--exp", "t",
            "--base_lr", "0.01", *extra]
