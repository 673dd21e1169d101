"""Training data: tiles listed in ``tiles.csv``, their augmentations, and the samplers.

Arrays: images ``uint8 [H, W, 3]`` RGB, labels ``uint8 [H, W]`` (``0..C-1``, 255 ignored) until
:func:`to_tensors` turns them into a normalised ``float32 [3, H, W]`` image and an ``int64 [H, W]``
label.

In training, randomness never comes from a global generator: the batch sampler draws one integer seed
per sample from its own generator (seeded by ``seed`` and the epoch), and the sample's augmentations use
a ``numpy.random.Generator`` made from that seed. So an epoch is a function of ``(seed, epoch)`` alone,
whatever the number of loader workers or processes; that is what makes ``--resume`` exact. (Only a
data set indexed by a plain integer, outside the training loop, draws its seed from torch's global
generator.)

The training augmentation (as the original, plus rotations by 90 degrees):
random scale in ``[0.5, 2]`` and random crop in one affine warp (image bilinear, label nearest; padding
is image 0 / label 255), horizontal and vertical flips, a rotation by ``k * 90`` degrees, then the
input normalisation (:func:`normalize`: the original's fixed ImageNet mean and std, or each window
standardised on its own, which a checkpoint records and prediction repeats).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from cropmap.data.augment import acquisition_jitter, color_jitter
from cropmap.core.errors import InputError
from cropmap.raster import IGNORE, read_png
from cropmap.core.layout import tiles_csv, train_dir, train_tile_dirs
from cropmap.data.normalize import INPUT_NORMS, normalize
from cropmap.data.tiling import BASE_COLUMNS, read_tiles_csv

SPLITS = ("train", "val", "gap")
#: Per-sample augmentation seeds are drawn in ``[0, SEED_BOUND)``: non-negative int64 values, which
#: ``numpy.random.default_rng`` accepts.
SEED_BOUND = 2**62
#: A prime larger than any epoch count: ``seed * EPOCH_STRIDE + epoch`` gives every (seed, epoch) pair
#: its own generator seed.
EPOCH_STRIDE = 1_000_003


# ---- per-sample transforms (numpy) -------------------------------------------------------------


def random_scale_crop(
    image: np.ndarray,
    label: np.ndarray,
    crop: int,
    rng: np.random.Generator,
    scale_range: tuple[float, float] = (0.5, 2.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Rescale by a random factor and cut a random ``crop x crop`` window, in one affine warp.

    Equivalent to "resize the tile by ``s``, pad it to at least ``crop`` (image 0, label 255) and
    take a random crop", but the cost is that of the output only. When the scaled tile is smaller
    than the crop it lands at a random place inside it.

    Args:
        image: ``uint8 [H, W, 3]``.
        label: ``uint8 [H, W]``.
        crop: output side in pixels.
        rng: the sample's generator.
        scale_range: ``(low, high)`` of the uniform scale factor.

    Returns:
        ``(uint8 [crop, crop, 3], uint8 [crop, crop])``; the label is resampled with nearest
        neighbour, so it only holds values of the input label (or 255 in the padding); the image is
        0 wherever the label is 255.
    """
    h, w = label.shape
    s = float(rng.uniform(*scale_range))
    sh, sw = h * s, w * s
    oy = float(rng.uniform(min(0.0, sh - crop), max(0.0, sh - crop)))
    ox = float(rng.uniform(min(0.0, sw - crop), max(0.0, sw - crop)))
    oy, ox = round(oy), round(ox)
    # dst = s * (src + 0.5) - 0.5 - offset: the pixel-centre convention of cv2.resize
    m = np.array([[s, 0.0, 0.5 * s - 0.5 - ox], [0.0, s, 0.5 * s - 0.5 - oy]], np.float64)
    # the image replicates its edge (no dark seam from blending with the padding), then every pixel
    # whose label is 255 - padding or no-data - is black, as no-data is in the sources
    img = cv2.warpAffine(image, m, (crop, crop), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    lab = cv2.warpAffine(label, m, (crop, crop), flags=cv2.INTER_NEAREST,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=IGNORE)
    img[lab == IGNORE] = 0
    return img, lab


def random_flip_rot90(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random horizontal flip, vertical flip (each p=0.5) and rotation by ``k * 90`` degrees, k in 0..3.

    ``image [H, W, C]`` and ``label [H, W]`` get the same operations; outputs are contiguous copies.
    """
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    if rng.random() < 0.5:
        image, label = image[::-1], label[::-1]
    k = int(rng.integers(4))
    if k:
        image, label = np.rot90(image, k, axes=(0, 1)), np.rot90(label, k, axes=(0, 1))
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def pad_to_multiple(image: np.ndarray, label: np.ndarray, multiple: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Pad bottom/right so both sides are multiples of ``multiple`` (image 0, label 255)."""
    h, w = label.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE)
    return image, label


def to_tensors(image: np.ndarray, label: np.ndarray, input_norm: str = "imagenet") -> tuple[torch.Tensor, torch.Tensor]:
    """``uint8 [H, W, 3]`` RGB and ``uint8 [H, W]`` label -> normalised ``float32 [3, H, W]`` image and
    ``int64 [H, W]`` label. With ``input_norm="window"`` the valid pixels are those with a label or a
    non-black colour (no-data and padding in the tiles are black and labelled 255, as alpha 0 is in a source)."""
    chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    lab = torch.from_numpy(np.ascontiguousarray(label))
    valid = None
    if input_norm == "window":
        valid = (lab != IGNORE) | (chw[:3] != 0).any(0)
    return normalize(chw, input_norm, valid), lab.long()


# ---- the data set -------------------------------------------------------------------------------


def read_split(data_root: str | os.PathLike, split: str, num_classes: int = 4) -> list[dict]:
    """Rows of ``{data_root}/train/tiles.csv`` whose ``split`` column equals ``split``.

    Raises :class:`InputError` when the file is missing, lacks the ``split`` or class-count columns,
    or lists no tile of that split, or when a listed image/label file does not exist.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = tiles_csv(train_dir(data_root))
    rows = read_tiles_csv(path, BASE_COLUMNS + ["split"], " (re-run generate_train_data.py)", {"split": SPLITS})
    missing = [f"c{k}" for k in range(num_classes) if rows and f"c{k}" not in rows[0]]
    if missing:
        raise InputError(f"{path}: no class-count column(s) {', '.join(missing)} for --num_classes {num_classes}")
    rows = [r for r in rows if r["split"] == split]
    if not rows:
        raise InputError(f"{path}: no tile has split '{split}'")
    for r in rows:
        for folder in train_tile_dirs(data_root):
            f = folder / r["name"]
            if not f.is_file():
                raise InputError(f"{f}: file not found (listed in {path})")
    return rows


class TileDataset(Dataset):
    """Training tiles of one split.

    Args:
        data_root: folder holding ``train/tiles.csv``, ``train/data/`` and ``train/label/``.
        split: ``"train"`` or ``"val"`` (or ``"gap"``).
        num_classes: label values must be ``0..num_classes-1`` or 255.
        augment: random scale/crop, flips and rot90 (training); without it the tile is only padded to
            a multiple of 32 (validation).
        crop_size: default crop side when augmenting (a key may carry its own, see ``__getitem__``).
        scale_range: range of the random scale.
        color_jitter: with ``augment``, amplitude of the colour jitter after the geometric steps
            (:func:`cropmap.data.augment.color_jitter`; labels and no-data untouched); 0 = off.
        acquisition_jitter: with ``augment``, strength of the rendering as another acquisition (blur,
            illumination, colour balance, gamma, haze, noise: :func:`cropmap.data.augment.acquisition_jitter`),
            applied before the colour jitter; 0 = off.
        input_norm: the input normalisation (:func:`normalize`), ``imagenet`` or ``window``.

    ``dataset[key]``: ``key`` is an index, or ``(index, crop_size, seed)`` as yielded by
    :class:`MultiScaleBatchSampler`. Returns ``(image float32 [3, h, w], label int64 [h, w])``.
    Attribute ``rows`` holds the ``tiles.csv`` rows of the split.
    """

    def __init__(
        self,
        data_root: str | os.PathLike,
        split: str = "train",
        num_classes: int = 4,
        augment: bool = False,
        crop_size: int = 512,
        scale_range: tuple[float, float] = (0.5, 2.0),
        color_jitter: float = 0.0,
        acquisition_jitter: float = 0.0,
        input_norm: str = "imagenet",
    ) -> None:
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"unknown input normalisation {input_norm!r}; valid: {INPUT_NORMS}")
        self.input_norm = input_norm
        self.image_dir, self.label_dir = train_tile_dirs(data_root)
        self.color_jitter = float(color_jitter)
        self.acquisition_jitter = float(acquisition_jitter)
        self.rows = read_split(data_root, split, num_classes)
        self.num_classes = num_classes
        self.augment = augment
        self.crop_size = crop_size
        self.scale_range = scale_range

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw tile: ``(uint8 [H, W, 3] RGB, uint8 [H, W] label)``, checked."""
        name = self.rows[index]["name"]
        image_path, label_path = self.image_dir / name, self.label_dir / name
        image, label = read_png(image_path), read_png(label_path)
        if image.ndim != 3 or image.shape[2] < 3:
            raise InputError(f"{image_path}: expected an RGB tile, got shape {image.shape}")
        if label.ndim != 2:
            raise InputError(f"{label_path}: expected a single-channel label, got shape {label.shape}")
        if label.shape != image.shape[:2]:
            raise InputError(f"{label_path}: label size {label.shape} differs from its image {image.shape[:2]}")
        bad = (label >= self.num_classes) & (label != IGNORE)
        if bad.any():
            raise InputError(
                f"{label_path}: label value {int(label[bad][0])} outside 0..{self.num_classes - 1} (and 255)"
            )
        return image[..., :3], label

    def __getitem__(self, key) -> "tuple[torch.Tensor, torch.Tensor] | LoadError":
        if isinstance(key, (tuple, list)):
            index, crop, seed = key
        else:
            index, crop, seed = key, self.crop_size, None
        try:
            image, label = self.load(int(index))
        except InputError as e:
            return LoadError(str(e))
        if self.augment:
            if seed is None:  # plain indexing: draw from torch's generator (seeded per worker)
                seed = int(torch.randint(0, SEED_BOUND, ()).item())
            rng = np.random.default_rng(seed)
            image, label = random_scale_crop(image, label, int(crop), rng, self.scale_range)
            image, label = random_flip_rot90(image, label, rng)
            if self.acquisition_jitter > 0:
                image = acquisition_jitter(image, label != IGNORE, self.acquisition_jitter, rng)
            if self.color_jitter > 0:
                image = color_jitter(image, label != IGNORE, self.color_jitter, rng)
        else:
            image, label = pad_to_multiple(image, label, 32)
        return to_tensors(image, label, self.input_norm)


# ---- sampling -----------------------------------------------------------------------------------


def class_frequencies(rows: Sequence[dict], num_classes: int) -> np.ndarray:
    """Pixel share of each class over ``rows`` (from the ``c0..`` columns): ``float64 [C]``, sums to 1."""
    counts = np.array([[r[f"c{k}"] for k in range(num_classes)] for r in rows], np.float64).sum(0)
    total = counts.sum()
    return counts / total if total > 0 else np.full(num_classes, 1.0 / num_classes)


def oversample_weights(rows: Sequence[dict], num_classes: int, power: float) -> np.ndarray:
    """Sampling weight of each tile for rare-class oversampling: ``float64 [N]``, sums to 1.

    A class of pixel share ``f_k`` weighs ``f_k ** -power``; a tile weighs the mean of that over its
    labelled pixels, ``sum_k (c_k / n) * f_k ** -power`` with ``n = sum_k c_k``. ``power = 0`` is
    uniform sampling; the larger the power, the larger the share of rare-class pixels among the
    drawn tiles (a heuristic: the shares do not become exactly equal). Tiles without a labelled
    pixel get the smallest class weight.
    """
    counts = np.array([[r[f"c{k}"] for k in range(num_classes)] for r in rows], np.float64)
    freq = class_frequencies(rows, num_classes)
    class_w = np.where(freq > 0, np.maximum(freq, 1e-12) ** -power, 0.0)
    n = counts.sum(1)
    w = (counts * class_w).sum(1) / np.maximum(n, 1)
    floor = class_w[class_w > 0].min() if (class_w > 0).any() else 1.0
    w = np.where(n > 0, w, floor)
    return w / w.sum()


class MultiScaleBatchSampler(Sampler[list]):
    """Batches of ``(index, crop_size, seed)`` keys for :class:`TileDataset`, for one process of ``world_size``.

    Each epoch draws an order of the ``num_samples`` tiles (a permutation, or with ``weights`` a
    draw with replacement of ``num_samples`` tiles), pads it so every process gets the same share,
    takes this process's share (``order[rank::world_size]``) and cuts it into batches whose crop
    size and batch size cycle through ``crop_sizes`` / ``batch_sizes`` (one scale: the usual
    single-scale batches). Incomplete last batches are dropped. Everything is drawn from a
    generator seeded with ``(seed, epoch)``: call :meth:`set_epoch` before iterating.

    Args:
        num_samples: number of tiles in the data set.
        crop_sizes: crop side of batch ``i`` is ``crop_sizes[i % len(crop_sizes)]``.
        batch_sizes: same length as ``crop_sizes``: batch size per scale (per process).
        weights: optional ``[num_samples]`` sampling weights (oversampling); ``None`` shuffles.
        seed: base seed.
        rank, world_size: this process and the number of processes (DDP).
    """

    def __init__(
        self,
        num_samples: int,
        crop_sizes: Sequence[int],
        batch_sizes: Sequence[int],
        weights: Sequence[float] | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(crop_sizes) != len(batch_sizes) or not crop_sizes:
            raise ValueError(f"need one batch size per crop size, got {list(crop_sizes)} and {list(batch_sizes)}")
        self.num_samples = int(num_samples)
        self.crop_sizes = [int(c) for c in crop_sizes]
        self.batch_sizes = [int(b) for b in batch_sizes]
        self.weights = None if weights is None else torch.as_tensor(np.asarray(weights), dtype=torch.float64)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation seeds are drawn."""
        self.epoch = int(epoch)

    def _batches(self) -> list[list[tuple[int, int, int]]]:
        g = torch.Generator().manual_seed(self.seed * EPOCH_STRIDE + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g)
        seeds = torch.randint(0, SEED_BOUND, (self.num_samples,), generator=g)
        per_rank = math.ceil(self.num_samples / self.world_size)
        pad = per_rank * self.world_size - self.num_samples
        if pad:
            order, seeds = torch.cat([order, order[:pad]]), torch.cat([seeds, seeds[:pad] + 1])
        order, seeds = order[self.rank :: self.world_size].tolist(), seeds[self.rank :: self.world_size].tolist()
        batches, start, i = [], 0, 0
        while True:
            k = i % len(self.crop_sizes)
            bs, crop = self.batch_sizes[k], self.crop_sizes[k]
            if start + bs > len(order):
                break
            batches.append([(order[j], crop, seeds[j]) for j in range(start, start + bs)])
            start, i = start + bs, i + 1
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        return iter(self._batches())

    def __len__(self) -> int:
        n = math.ceil(self.num_samples / self.world_size)
        count, start, i = 0, 0, 0
        while True:
            bs = self.batch_sizes[i % len(self.batch_sizes)]
            if start + bs > n:
                return count
            start, count, i = start + bs, count + 1, i + 1


def checked(loader):
    """Iterate a loader of :func:`collate` batches, raising :class:`InputError` for a :class:`LoadError`."""
    for batch in loader:
        if isinstance(batch, LoadError):
            raise InputError(batch.message)
        yield batch


def shard_indices(n: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """This process's share of ``range(n)`` for evaluation: ``range(rank, n, world_size)`` (no padding)."""
    return list(range(rank, n, world_size))


@dataclass(frozen=True)
class LoadError:
    """A tile that could not be read, carried through the loader as data: loader workers never raise
    user errors (PyTorch would wrap them in a worker traceback); :func:`checked` raises it in the main
    process as the one-line :class:`InputError` it is."""

    message: str


def collate(batch: list) -> "tuple[torch.Tensor, torch.Tensor] | LoadError":
    """Stack samples into ``(float32 [B, 3, H, W], int64 [B, H, W])``; the first :class:`LoadError` if any."""
    for item in batch:
        if isinstance(item, LoadError):
            return item
    images, labels = zip(*batch)
    return torch.stack(images), torch.stack(labels)
