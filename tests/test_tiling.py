"""Tiling: the grid, exact tile contents, tiles.csv, the split, reruns and bad input."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import generate_test_data
import generate_train_data
from cropmap.raster import IGNORE, read_png, write_png
from cropmap.data.tiling import grid_positions, read_tiles_csv

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SRC = "jingwei_round1_train_20190619"
TEST_SRC = "jingwei_round1_test_a_20190619"


def make_source(folder: Path, name: str, h: int, w: int, seed: int, alpha: bool = True, holes: bool = True):
    """A random RGBA (or RGB) image with no-data rectangles, and a random label; returns (image, label)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 4 if alpha else 3), dtype=np.uint8)
    label = rng.integers(0, 4, (h, w), dtype=np.uint8)
    # big label blobs of one class so "crop"/"no crop" tiles both exist
    label[: h // 3, : w // 3] = 0
    if alpha:
        img[..., 3] = 255
        if holes:
            img[h // 3 :, : w // 2, 3] = 0  # no-data covering whole tiles
            img[5:9, w - 20 :, 3] = 0
            img[..., :3][img[..., 3] == 0] = 0
    folder.mkdir(parents=True, exist_ok=True)
    write_png(folder / f"{name}.png", img)
    write_png(folder / f"{name}_label.png", label)
    return img, label


def run_train(root: Path, *extra: str):
    args = generate_train_data.get_args_parser().parse_args(["--data_root", str(root), "--quiet", *extra])
    return generate_train_data.main(args)


def run_test(root: Path, *extra: str):
    args = generate_test_data.get_args_parser().parse_args(["--data_root", str(root), "--quiet", *extra])
    return generate_test_data.main(args)


def expected_tile(src: np.ndarray, y: int, x: int, t: int, fill: int = 0) -> np.ndarray:
    out = np.full((t, t) + src.shape[2:], fill, np.uint8)
    part = src[y : y + t, x : x + t]
    out[: part.shape[0], : part.shape[1]] = part
    return out


@pytest.mark.parametrize(
    "length,tile,stride,expected",
    [(1100, 512, 512, [0, 512, 588]), (1024, 512, 512, [0, 512]), (512, 512, 256, [0]), (300, 512, 512, [0]),
     (1000, 256, 200, [0, 200, 400, 600, 744])],
)
def test_grid_positions(length, tile, stride, expected):
    assert grid_positions(length, tile, stride) == expected


@pytest.mark.parametrize("length,tile,stride", [(5000, 512, 384), (777, 100, 33), (4096, 512, 512)])
def test_grid_covers_to_far_edge(length, tile, stride):
    pos = grid_positions(length, tile, stride)
    assert len(pos) == math.ceil((length - tile) / stride) + 1
    assert pos[0] == 0 and pos[-1] == length - tile
    assert all(b - a <= stride for a, b in zip(pos, pos[1:]))


@pytest.mark.parametrize("tile,stride", [(256, 256), (256, 200)])
def test_train_tiles_exact(tmp_path, tile, stride):
    img1, lab1 = make_source(tmp_path / TRAIN_SRC, "image_1", 700, 1000, 1)
    img2, lab2 = make_source(tmp_path / TRAIN_SRC, "image_2", 530, 610, 2)
    rows = run_train(tmp_path, "--tile_size", str(tile), "--stride", str(stride), "--keep", "valid")
    sources = {"image_1": (img1, lab1), "image_2": (img2, lab2)}
    data_dir, label_dir = tmp_path / "train" / "data", tmp_path / "train" / "label"
    csv_rows = read_tiles_csv(tmp_path / "train" / "tiles.csv")
    assert len(csv_rows) == len(rows)
    # tiles.csv and the folders list the same tiles
    names = {r["name"] for r in csv_rows}
    assert names == {p.name for p in data_dir.iterdir()} == {p.name for p in label_dir.iterdir()}
    assert len(names) == len(csv_rows)
    # every grid position with a valid pixel is there, none other
    for image, (img, lab) in sources.items():
        ys = grid_positions(img.shape[0], tile, stride)
        xs = grid_positions(img.shape[1], tile, stride)
        want = {f"{image}_{y}_{x}.png" for y in ys for x in xs if (img[y : y + tile, x : x + tile, 3] == 255).any()}
        assert {r["name"] for r in csv_rows if r["image"] == image} == want
        assert len(want) < len(ys) * len(xs)  # the no-data band removed some
    for r in csv_rows:
        img, lab = sources[r["image"]]
        rgb = read_png(data_dir / r["name"])
        got_label = read_png(label_dir / r["name"])
        assert rgb.shape == (tile, tile, 3) and got_label.shape == (tile, tile)
        want_rgb = expected_tile(img, r["y"], r["x"], tile)[..., :3]
        want_label = expected_tile(lab, r["y"], r["x"], tile)
        alpha = expected_tile(img, r["y"], r["x"], tile)[..., 3]
        want_label[alpha == 0] = IGNORE
        np.testing.assert_array_equal(rgb, want_rgb)
        np.testing.assert_array_equal(got_label, want_label)
        assert r["valid_pixels"] == int((alpha == 255).sum())
        assert [r[f"c{i}"] for i in range(4)] == [int((want_label == i).sum()) for i in range(4)]
        assert r["split"] in ("train", "val", "gap")
    # far edges are reached exactly
    for image, (img, _) in sources.items():
        h, w = img.shape[:2]
        assert any(r["y"] == h - tile for r in csv_rows if r["image"] == image)
        assert any(r["x"] == w - tile for r in csv_rows if r["image"] == image)


def test_keep_crop_is_default(tmp_path):
    img, lab = make_source(tmp_path / TRAIN_SRC, "image_1", 600, 600, 3)
    make_source(tmp_path / TRAIN_SRC, "image_2", 300, 300, 4)
    rows = run_train(tmp_path, "--tile_size", "128")
    assert rows
    for r in rows:
        assert r["c1"] + r["c2"] + r["c3"] > 0
    # the all-"other" corner tile exists in the grid, has valid pixels, but holds no crop
    assert "image_1_0_0.png" not in {r["name"] for r in rows}


def test_source_smaller_than_tile_and_rgb_source(tmp_path):
    img, lab = make_source(tmp_path / TRAIN_SRC, "image_1", 100, 150, 5, alpha=False)
    make_source(tmp_path / TRAIN_SRC, "image_2", 90, 60, 6, alpha=False)
    rows = run_train(tmp_path, "--tile_size", "256", "--keep", "valid", "--val_fraction", "0")
    assert sorted(r["name"] for r in rows) == ["image_1_0_0.png", "image_2_0_0.png"]
    r = next(r for r in rows if r["image"] == "image_1")
    assert r["valid_pixels"] == 100 * 150
    rgb = read_png(tmp_path / "train" / "data" / "image_1_0_0.png")
    label = read_png(tmp_path / "train" / "label" / "image_1_0_0.png")
    np.testing.assert_array_equal(rgb[:100, :150], img)
    assert (rgb[100:] == 0).all() and (rgb[:, 150:] == 0).all()
    np.testing.assert_array_equal(label[:100, :150], lab)
    assert (label[100:] == IGNORE).all() and (label[:, 150:] == IGNORE).all()
    assert all(r["split"] == "train" for r in rows)


def test_split_is_spatially_disjoint_and_seeded(tmp_path):
    make_source(tmp_path / TRAIN_SRC, "image_1", 1200, 1300, 7, holes=False)
    make_source(tmp_path / TRAIN_SRC, "image_2", 900, 700, 8, holes=False)
    args = ["--tile_size", "128", "--stride", "96", "--keep", "valid", "--val_fraction", "0.2", "--split_block", "256"]
    rows = run_train(tmp_path, *args, "--seed", "3")
    for image in ("image_1", "image_2"):
        sel = [r for r in rows if r["image"] == image]
        val = [r for r in sel if r["split"] == "val"]
        train = [r for r in sel if r["split"] == "train"]
        assert val and train
        assert 0.1 < len(val) / len(sel) < 0.35
        for t in train:  # no training tile shares a pixel with a validation tile
            for v in val:
                assert abs(t["y"] - v["y"]) >= 128 or abs(t["x"] - v["x"]) >= 128
    again = run_train(tmp_path, *args, "--seed", "3")
    assert [r["split"] for r in again] == [r["split"] for r in rows]
    other = run_train(tmp_path, *args, "--seed", "4")
    assert [r["split"] for r in other] != [r["split"] for r in rows]


def test_rerun_replaces_old_tiles_and_partials(tmp_path):
    make_source(tmp_path / TRAIN_SRC, "image_1", 400, 500, 9)
    make_source(tmp_path / TRAIN_SRC, "image_2", 300, 300, 10)
    run_train(tmp_path, "--tile_size", "128", "--keep", "valid")
    data_dir = tmp_path / "train" / "data"
    (data_dir / ".image_1_0_0.png.abc.part").write_bytes(b"half")  # as an interrupted run leaves
    rows = run_train(tmp_path, "--tile_size", "200", "--keep", "valid")
    files = sorted(p.name for p in data_dir.iterdir())
    assert files == sorted(r["name"] for r in rows)


def test_test_windows_overlap_and_exact(tmp_path):
    img3, _ = make_source(tmp_path / TEST_SRC, "image_3", 610, 700, 11)
    img4, _ = make_source(tmp_path / TEST_SRC, "image_4", 300, 200, 12, alpha=False)
    rows = run_test(tmp_path, "--tile_size", "256")
    csv_rows = read_tiles_csv(tmp_path / "test" / "tiles.csv")
    assert len(csv_rows) == len(rows)
    assert {r["image"] for r in csv_rows} == {"image_3", "image_4"}
    ys3 = grid_positions(610, 256, 128)
    assert {r["y"] for r in csv_rows if r["image"] == "image_3"} == set(ys3)
    for r in csv_rows:
        src = img3 if r["image"] == "image_3" else img4
        folder = "image3" if r["image"] == "image_3" else "image4"
        assert (r["height"], r["width"]) == src.shape[:2]
        tile = read_png(tmp_path / "test" / folder / r["name"])
        assert tile.shape == (256, 256, 4)
        want = expected_tile(src, r["y"], r["x"], 256)
        if src.shape[2] == 3:  # RGB sources are all valid; padding is no-data
            a = np.zeros((256, 256, 1), np.uint8)
            a[: src.shape[0] - r["y"], : src.shape[1] - r["x"]] = 255
            want = np.concatenate([want, a], axis=2)
        np.testing.assert_array_equal(tile, want)


# ---- bad input: one clear line, non-zero exit, nothing that looks finished -------------------


def run_script(script: str, root: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), "--data_root", str(root), "--quiet", *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def assert_user_error(proc: subprocess.CompletedProcess, *words: str):
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, err


@pytest.fixture
def good_train(tmp_path):
    make_source(tmp_path / TRAIN_SRC, "image_1", 300, 300, 13)
    make_source(tmp_path / TRAIN_SRC, "image_2", 300, 300, 14)
    return tmp_path


def assert_nothing_written(root: Path):
    assert not (root / "train" / "tiles.csv").exists()
    assert not any((root / "train").rglob("*.png")) if (root / "train").exists() else True


def test_missing_file(good_train):
    (good_train / TRAIN_SRC / "image_2_label.png").unlink()
    proc = run_script("generate_train_data.py", good_train)
    assert_user_error(proc, "image_2_label.png", "not found")
    assert_nothing_written(good_train)


def test_label_size_mismatch(good_train):
    write_png(good_train / TRAIN_SRC / "image_2_label.png", np.zeros((300, 299), np.uint8))
    proc = run_script("generate_train_data.py", good_train)
    assert_user_error(proc, "image_2_label.png", "differs")
    assert_nothing_written(good_train)


def test_label_values_out_of_range(good_train):
    lab = np.zeros((300, 300), np.uint8)
    lab[10, 10] = 7
    write_png(good_train / TRAIN_SRC / "image_2_label.png", lab)
    proc = run_script("generate_train_data.py", good_train)
    assert_user_error(proc, "image_2_label.png", "7")
    assert_nothing_written(good_train)
    lab[10, 10] = 255  # 255 is allowed
    write_png(good_train / TRAIN_SRC / "image_2_label.png", lab)
    assert run_script("generate_train_data.py", good_train).returncode == 0


def test_truncated_png(good_train):
    p = good_train / TRAIN_SRC / "image_2.png"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    proc = run_script("generate_train_data.py", good_train)
    assert_user_error(proc, "image_2.png", "truncated")
    assert_nothing_written(good_train)


def test_corrupt_png_data(good_train):
    p = good_train / TRAIN_SRC / "image_2_label.png"
    data = bytearray(p.read_bytes())
    data[60:90] = b"\x00" * 30  # inside the first IDAT chunk: the header is fine, the data is not
    p.write_bytes(bytes(data))
    proc = run_script("generate_train_data.py", good_train)
    assert_user_error(proc, "image_2_label.png")
    assert_nothing_written(good_train)


def test_16bit_png(good_train):
    cv2.imwrite(str(good_train / TRAIN_SRC / "image_1.png"), np.zeros((300, 300, 4), np.uint16))
    proc = run_script("generate_train_data.py", good_train)
    assert_user_error(proc, "image_1.png", "bit depth 16")
    assert_nothing_written(good_train)


def test_grayscale_source(good_train):
    cv2.imwrite(str(good_train / TRAIN_SRC / "image_1.png"), np.zeros((300, 300), np.uint8))
    proc = run_script("generate_train_data.py", good_train)
    assert_user_error(proc, "image_1.png", "grayscale")
    assert_nothing_written(good_train)


def test_not_a_png(good_train):
    (good_train / TRAIN_SRC / "image_1.png").write_text("hello")
    proc = run_script("generate_test_data.py", good_train, "--source_dir", TRAIN_SRC, "--images", "image_1")
    assert_user_error(proc, "image_1.png", "not a PNG")
    assert not (good_train / "test" / "tiles.csv").exists()
