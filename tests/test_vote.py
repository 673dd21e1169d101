"""vote: majority, both tie rules, soft voting over saved probabilities, and size errors."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cropmap.raster import read_png, write_png
from cropmap.maps.postprocess import vote_maps, vote_strip

ROOT = Path(__file__).resolve().parents[1]


def test_vote_strip_known_answers():
    a = np.array([[1, 1, 2, 0, 3, 2]], np.uint8)
    b = np.array([[1, 2, 3, 3, 3, 1]], np.uint8)
    c = np.array([[2, 2, 1, 0, 1, 3]], np.uint8)
    maps = np.stack([a, b, c])
    # majority where there is one; three-way ties go to the earliest input (a)
    np.testing.assert_array_equal(vote_strip(maps, 4), [[1, 2, 2, 0, 3, 2]])
    # the same inputs, most trusted last: ties now follow c
    np.testing.assert_array_equal(vote_strip(maps[::-1], 4), [[1, 2, 1, 0, 3, 3]])
    # a class order instead: 1 beats 3 beats 2 beats 0 in any tie
    np.testing.assert_array_equal(vote_strip(maps, 4, priority=[1, 3, 2, 0]), [[1, 2, 1, 0, 3, 1]])


def test_two_inputs_tie_goes_to_first():
    a = np.array([[0, 1, 2, 3]], np.uint8)
    b = np.array([[3, 2, 1, 0]], np.uint8)
    np.testing.assert_array_equal(vote_strip(np.stack([a, b]), 4), a)
    np.testing.assert_array_equal(vote_strip(np.stack([b, a]), 4), b)
    np.testing.assert_array_equal(vote_strip(np.stack([a, b]), 4, priority=[0, 1, 2, 3]), [[0, 1, 1, 0]])


def test_soft_vote_sums_probabilities():
    maps = np.array([[[1]], [[2]], [[2]]], np.uint8)
    probs = np.zeros((3, 4, 1, 1), np.uint8)
    probs[0, :, 0, 0] = [0, 250, 5, 0]  # confident 1
    probs[1, :, 0, 0] = [0, 100, 120, 35]
    probs[2, :, 0, 0] = [0, 100, 130, 25]
    assert vote_strip(maps, 4) == 2  # hard: two votes for 2
    assert vote_strip(maps, 4, probs=probs) == 1  # soft: 450 for 1 against 255 for 2


def test_vote_maps_streams_large_file(tmp_path):
    rng = np.random.default_rng(0)
    ms = [rng.integers(0, 4, (300, 77)).astype(np.uint8) for _ in range(3)]
    paths = []
    for i, m in enumerate(ms):
        paths.append(tmp_path / f"m{i}.png")
        write_png(paths[-1], m)
    vote_maps(paths, tmp_path / "out.png", 4, progress=False)
    np.testing.assert_array_equal(read_png(tmp_path / "out.png"), vote_strip(np.stack(ms), 4))


def _cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "vote.py"), "--quiet", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_sizes_differ_is_one_line_error(tmp_path):
    write_png(tmp_path / "a.png", np.zeros((10, 12), np.uint8))
    write_png(tmp_path / "b.png", np.zeros((10, 13), np.uint8))
    out = tmp_path / "out.png"
    r = _cli("--inputs", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--output", str(out))
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "b.png" in r.stderr and "differs" in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.png*"))


def test_cli_default_votes_per_model_maps_with_soft(tmp_path):
    sub = tmp_path / "submit"
    a = np.array([[1, 2], [3, 0]], np.uint8)
    b = np.array([[2, 2], [1, 0]], np.uint8)
    write_png(sub / "image_3_predict_a.png", a)
    write_png(sub / "image_3_predict_b.png", b)
    write_png(sub / "image_3_predict_a_preview.png", np.zeros((2, 2, 3), np.uint8))  # not a model's map
    r = _cli("--data_root", str(tmp_path), "--images", "image_3")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(read_png(sub / "image_3_predict.png"), [[1, 2], [3, 0]])  # ties -> a (sorted first)
    r = _cli("--data_root", str(tmp_path), "--images", "image_3", "--models", "b", "a")
    np.testing.assert_array_equal(read_png(sub / "image_3_predict.png"), [[2, 2], [1, 0]])
    # soft: b is sure of class 1 at (1, 0); a barely prefers 3
    probs = {"a": [0, 120, 0, 135], "b": [0, 250, 0, 5]}
    for name, vals in probs.items():
        for c in range(4):
            arr = np.zeros((2, 2), np.uint8)
            arr[1, 0] = vals[c]
            write_png(sub / f"image_3_predict_{name}_prob{c}.png", arr)
    r = _cli("--data_root", str(tmp_path), "--images", "image_3", "--models", "a", "b", "--soft")
    assert r.returncode == 0, r.stderr
    assert read_png(sub / "image_3_predict.png")[1, 0] == 1


@pytest.mark.parametrize("priority", ["1,2,3", "1,1,2,3", "a,b"])
def test_cli_bad_priority(tmp_path, priority):
    write_png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    r = _cli("--inputs", str(tmp_path / "a.png"), "--output", str(tmp_path / "o.png"), "--priority", priority)
    assert r.returncode != 0 and "priority" in r.stderr and "Traceback" not in r.stderr
