"""Tests of cropmap.data.dataset: augmentations keep image and label aligned, padding, the tiles.csv data set
and its errors (with colour jitter or another acquisition), the seeded multi-scale sampler and oversampling."""

import csv
from collections import Counter

import cv2
import numpy as np
import pytest
import torch

from _train_fixtures import make_tiles
from cropmap.data import dataset as data
from cropmap.data.dataset import TileDataset
from cropmap.core.errors import InputError
from cropmap.raster import IGNORE, write_png


def coded_tile(size=64, seed=0):
    """Label of 8x8 blocks of classes 0..3; image channel 0 = 60 * label, channels 1, 2 = x, y."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 4, (size // 8, size // 8))
    label = np.kron(blocks, np.ones((8, 8), np.int64)).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    image = np.stack([label.astype(np.int64) * 60, xx, yy], axis=-1).astype(np.uint8)
    return image, label


def test_flip_rot90_keeps_alignment_and_covers_the_8_symmetries():
    image, label = coded_tile(64)
    seen = set()
    for seed in range(64):
        img, lab = data.random_flip_rot90(image, label, np.random.default_rng(seed))
        assert img.flags.c_contiguous and lab.flags.c_contiguous
        assert np.array_equal(img[..., 0], lab.astype(np.uint8) * 60)
        # the coordinates moved as a whole: each output pixel came from exactly one input pixel
        src = img[..., 2].astype(np.int64) * 64 + img[..., 1]
        assert np.array_equal(np.sort(src.ravel()), np.arange(64 * 64))
        assert np.array_equal(lab, label[img[..., 2], img[..., 1]])
        seen.add((int(src[0, 0]), int(src[0, 1])))  # where the top-left corner and its neighbour came from
    assert len(seen) == 8


def test_scale_crop_identity_at_scale_one():
    image, label = coded_tile(64)
    img, lab = data.random_scale_crop(image, label, 64, np.random.default_rng(0), scale_range=(1.0, 1.0))
    assert np.array_equal(img, image) and np.array_equal(lab, label)


def test_scale_crop_keeps_alignment():
    image, label = coded_tile(64)
    for seed in range(20):
        img, lab = data.random_scale_crop(image, label, 96, np.random.default_rng(seed))
        assert img.shape == (96, 96, 3) and lab.shape == (96, 96)
        assert set(np.unique(lab)) <= {0, 1, 2, 3, IGNORE}  # nearest neighbour: no new values
        valid = lab != IGNORE
        assert valid.any()
        # away from block edges (3x3 neighbourhood of one class) the bilinear image shows exactly
        # the nearest-neighbour label's class; a shift of one pixel would break that
        kernel = np.ones((3, 3), np.uint8)
        interior = (cv2.erode(lab, kernel) == cv2.dilate(lab, kernel)) & valid
        interior[[0, -1], :] = interior[:, [0, -1]] = False  # the crop's own edge has unseen neighbours
        assert interior.sum() > 300
        assert np.array_equal(img[..., 0][interior], lab[interior] * 60)
        assert np.all(img[~valid] == 0)  # padding: black image under label 255
        # the coordinate channels grow along x and y (no flip or transpose sneaked in)
        rows = img[..., 1][valid].astype(float), np.nonzero(valid)[1]
        assert np.corrcoef(*rows)[0, 1] > 0.99


def test_scale_crop_pads_with_ignore():
    image, label = coded_tile(64)
    img, lab = data.random_scale_crop(image, label, 64, np.random.default_rng(1), scale_range=(0.5, 0.5))
    padded = lab == IGNORE
    # the tile shrinks to 32x32 inside a 64x64 crop: three quarters are padding
    assert abs(int(padded.sum()) - 64 * 64 * 3 // 4) <= 2 * 64
    assert np.all(img[padded] == 0)


def test_pad_to_multiple():
    img, lab = data.pad_to_multiple(np.ones((40, 50, 3), np.uint8), np.zeros((40, 50), np.uint8), 32)
    assert img.shape == (64, 64, 3) and lab.shape == (64, 64)
    assert np.all(lab[40:] == IGNORE) and np.all(lab[:, 50:] == IGNORE) and np.all(lab[:40, :50] == 0)
    assert np.all(img[40:] == 0)


def test_dataset_train_and_val(tmp_path):
    make_tiles(tmp_path, n_train=6, n_val=2, size=48)
    train = data.TileDataset(tmp_path, "train", augment=True, crop_size=64)
    val = data.TileDataset(tmp_path, "val")
    assert len(train) == 6 and len(val) == 2
    assert all(r["split"] == "train" for r in train.rows)
    x, y = train[(0, 32, 123)]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.shape == (32, 32) and y.dtype == torch.int64
    x2, y2 = train[(0, 32, 123)]
    assert torch.equal(x, x2) and torch.equal(y, y2)  # the key's seed decides the augmentation
    x3, _ = train[(0, 32, 124)]
    assert not torch.equal(x, x3)
    x, y = val[1]
    assert x.shape == (3, 64, 64) and y.shape == (64, 64)  # 48 padded up to a multiple of 32
    assert torch.all(y[48:] == IGNORE)


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_dataset_errors(tmp_path):
    with pytest.raises(InputError, match="tiles.csv: file not found"):
        data.TileDataset(tmp_path / "nowhere", "train")
    make_tiles(tmp_path, n_train=3, n_val=1, size=32)
    csv_path = tmp_path / "train" / "tiles.csv"
    rows = list(csv.DictReader(open(csv_path)))
    name = rows[0]["name"]
    # a label value outside 0..3 (and not 255) names the file
    write_png(tmp_path / "train" / "label" / name, np.full((32, 32), 7, np.uint8))
    with pytest.raises(InputError, match=f"{name}: label value 7 outside 0..3"):
        data.TileDataset(tmp_path, "train").load(0)
    # through a loader (workers included) the error travels as data and comes out as that one line
    ds = data.TileDataset(tmp_path, "train")
    assert ds[0] == data.LoadError(ds[0].message) and "label value 7" in ds[0].message
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, collate_fn=data.collate)
    with pytest.raises(InputError, match=f"^{tmp_path}.*{name}: label value 7 outside 0..3"):
        list(data.checked(loader))
    # label size different from its image
    write_png(tmp_path / "train" / "label" / name, np.zeros((16, 32), np.uint8))
    with pytest.raises(InputError, match="differs from its image"):
        data.TileDataset(tmp_path, "train").load(0)
    (tmp_path / "train" / "data" / name).unlink()
    with pytest.raises(InputError, match=f"{name}: file not found"):
        data.TileDataset(tmp_path, "train")
    with pytest.raises(InputError, match="no tile has split 'val'"):
        write_csv(csv_path, [r for r in rows if r["split"] != "val"])
        data.TileDataset(tmp_path, "val")
    write_csv(csv_path, [{k: v for k, v in r.items() if k != "split"} for r in rows])
    with pytest.raises(InputError, match="no 'split' column"):
        data.TileDataset(tmp_path, "train")


def test_sampler_is_seeded_by_epoch_and_cycles_scales():
    s = data.MultiScaleBatchSampler(20, [64, 32], [2, 3], seed=5)
    s.set_epoch(0)
    a = list(s)
    assert list(s) == a  # same epoch, same batches (and seeds)
    s.set_epoch(1)
    assert list(s) != a
    assert [len(b) for b in a] == [2, 3, 2, 3, 2, 3, 2, 3] and len(s) == len(a)
    assert all(crop == (64 if i % 2 == 0 else 32) for i, b in enumerate(a) for _, crop, _ in b)
    idx = [k for b in a for k, _, _ in b]
    assert len(set(idx)) == len(idx)  # a permutation, incomplete last batch dropped
    assert data.MultiScaleBatchSampler(20, [64, 32], [2, 3], seed=6).__iter__().__next__() != a[0]


def test_sampler_shards_for_ddp():
    parts = []
    for rank in range(3):
        s = data.MultiScaleBatchSampler(10, [32], [2], seed=1, rank=rank, world_size=3)
        s.set_epoch(4)
        parts.append([k for b in s for k, _, _ in b])
        assert len(s) == 2  # ceil(10 / 3) = 4 samples per process -> 2 batches of 2
    flat = [k for p in parts for k in p]
    assert len(flat) == 12 and set(flat) == set(range(10))  # every tile, two repeated as padding


def test_oversample_weights_favour_rare_classes():
    rows = [{"c0": 900, "c1": 100}] * 9 + [{"c0": 0, "c1": 1000}]
    assert np.allclose(data.oversample_weights(rows, 2, 0.0), 0.1)
    w = data.oversample_weights(rows, 2, 1.0)
    assert w.sum() == pytest.approx(1.0)
    assert w[9] > 3 * w[0]
    # expected share of class-1 pixels among the drawn tiles: 0.19 without oversampling, growing with the power
    counts = np.array([[r["c0"], r["c1"]] for r in rows], float)
    shares = [(data.oversample_weights(rows, 2, p)[:, None] * counts / 1000).sum(0)[1] for p in (0, 0.5, 1, 2)]
    assert shares[0] == pytest.approx(0.19)
    assert shares[0] < shares[1] < shares[2] < shares[3]


def test_weighted_sampler_draws_rare_tiles_more_often():
    w = np.array([0.05] * 10 + [0.5])
    w = w / w.sum()
    s = data.MultiScaleBatchSampler(11, [32], [1], weights=w, seed=0)
    counts = Counter()
    for epoch in range(30):
        s.set_epoch(epoch)
        counts.update(k for b in s for k, _, _ in b)
    assert counts[10] > 3 * np.mean([counts[i] for i in range(10)])


# ---- colour jitter and another acquisition through the data set ---------------------------------


def test_dataset_jitter_keeps_labels_and_nodata(tmp_path):
    root = make_tiles(tmp_path, n_train=4, n_val=1)
    plain = TileDataset(root, "train", augment=True, crop_size=64, scale_range=(1, 1))
    jitter = TileDataset(root, "train", augment=True, crop_size=64, scale_range=(1, 1), color_jitter=0.08)
    acquisition = TileDataset(root, "train", augment=True, crop_size=64, scale_range=(1, 1), acquisition_jitter=0.15)
    for i in range(4):
        key = (i, 64, 1234 + i)
        (x0, y0), (x1, y1) = plain[key], acquisition[key]
        assert torch.equal(y0, y1)
        assert torch.equal(x0[:, y0 == IGNORE], x1[:, y0 == IGNORE])
        assert not torch.equal(x0[:, y0 != IGNORE], x1[:, y0 != IGNORE])
    for i in range(4):
        key = (i, 64, 1234 + i)
        (x0, y0), (x1, y1) = plain[key], jitter[key]
        assert torch.equal(y0, y1)  # same geometry, same labels
        ignored = y0 == IGNORE
        assert torch.equal(x0[:, ignored], x1[:, ignored])  # no-data pixels identical (black)
        assert not torch.equal(x0[:, ~ignored], x1[:, ~ignored])
