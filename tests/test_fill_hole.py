"""fill_hole: both methods on hand-made maps with known answers, banding, and the CLI: named maps of several
images, its errors."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cropmap.raster import IGNORE, read_png, write_png
from cropmap.maps.postprocess import fill_components, fill_map, square_stage
from cropmap.raster.bands import iter_banded

ROOT = Path(__file__).resolve().parents[1]


def save(tmp_path, m, alpha=None):
    h, w = m.shape
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 3] = 255 if alpha is None else alpha
    write_png(tmp_path / "src.png", rgba)
    write_png(tmp_path / "map.png", m)
    return tmp_path / "map.png", tmp_path / "src.png"


def run_fill(tmp_path, m, alpha=None, **kw):
    mp, src = save(tmp_path, m, alpha)
    out = tmp_path / "out.png"
    fill_map(mp, src, out, progress=False, **kw)
    return read_png(out)


def test_morph_known_answer(tmp_path):
    m = np.zeros((40, 60), np.uint8)
    m[2:20, 2:20] = 1
    m[8:12, 8:12] = 0  # hole A inside class 1: filled
    m[2:20, 30:50] = 2
    m[5:9, 35:40] = 0  # hole B inside class 2, area 20: filled
    m[12:16, 35:45] = 0  # hole C inside class 2, area 40 > max_hole: stays
    m[22:35, 2:20] = 3
    m[25:30, 5:8] = 0  # hole D touching no-data: stays
    m[22:38, 30:40] = 1
    m[22:38, 40:50] = 2
    m[26:30, 37:43] = 0  # hole E bordered by classes 1 and 2: stays
    m[30:40, 52:58] = 3
    m[33:40, 54:56] = 0  # hole F touching the image border: stays
    alpha = np.full(m.shape, 255, np.uint8)
    alpha[27, 6] = 0  # no-data inside hole D
    want = m.copy()
    want[8:12, 8:12] = 1
    want[5:9, 35:40] = 2
    got = run_fill(tmp_path, m, alpha, method="morph", max_hole=30)
    np.testing.assert_array_equal(got, want)
    got = run_fill(tmp_path, m, alpha, method="morph", max_hole=40)  # max_hole is inclusive: C fills too
    want[12:16, 35:45] = 2
    np.testing.assert_array_equal(got, want)


def test_morph_nodata_stays_zero_and_is_not_a_class(tmp_path):
    """A no-data pixel inside a crop field is 0 in the map; it must not be filled (nor fill others)."""
    m = np.zeros((20, 20), np.uint8)
    m[3:17, 3:17] = 2
    m[9, 9] = 0
    alpha = np.full(m.shape, 255, np.uint8)
    alpha[9, 9] = 0
    got = run_fill(tmp_path, m, alpha, method="morph", max_hole=100)
    np.testing.assert_array_equal(got, m)


def test_min_area_islands(tmp_path):
    m = np.zeros((30, 30), np.uint8)
    m[2:28, 2:28] = 2
    m[5:7, 5:7] = 1  # island of 4 px of tobacco inside corn: -> 2
    m[10:15, 10:15] = 3  # island of 25 px: stays with min_area 10
    m[20:22, 20:21] = 0  # class-0 hole of 2 px: filled as a hole with max_hole
    want = m.copy()
    want[5:7, 5:7] = 2
    want[20:22, 20:21] = 2
    got = run_fill(tmp_path, m, method="morph", max_hole=5, min_area=10)
    np.testing.assert_array_equal(got, want)
    got = run_fill(tmp_path, m, method="morph", max_hole=5, min_area=26)
    want[10:15, 10:15] = 2
    np.testing.assert_array_equal(got, want)


def _blocky(rng, h, w, cell, p0):
    coarse = rng.integers(1, 4, (h // cell + 1, w // cell + 1)).astype(np.uint8)
    m = np.kron(coarse, np.ones((cell, cell), np.uint8))[:h, :w]
    m[rng.random((h, w)) < p0] = 0
    return m


@pytest.mark.parametrize("band_rows", [3, 7, 16])
def test_morph_bands_match_whole_map(band_rows):
    """Processing in bands (with pending regions carried over) equals processing the whole map at once."""
    rng = np.random.default_rng(5)
    m = _blocky(rng, 90, 70, 9, 0.25)
    m[40:60, 20:50] = 1
    m[42:58, 22:48] = 0  # a tall hole spanning several bands
    work = m.copy()
    nodata = rng.random(m.shape) < 0.01
    nodata[38:62, 18:52] = False
    work[nodata] = IGNORE

    def run(rows):
        strips = ((y, work[y : y + 5].copy()) for y in range(0, len(work), 5))
        proc = lambda b, t, bt: fill_components(b, b == 0, 500, t, bt)
        return np.concatenate([s for _, s in iter_banded(strips, len(work), proc, rows)])

    whole = run(10_000)
    assert (whole[42:58, 22:48] == 1).all()
    assert (whole != work).sum() > 416 + 50  # many small holes filled too
    np.testing.assert_array_equal(run(band_rows), whole)


def _square_reference(m, size, stride):
    """The rule written plainly: windows in raster order, qualification on the map before the pass."""
    before = m.copy()
    out = m.copy()
    h, w = m.shape
    for i in range(0, h - size + 1, stride):
        for j in range(0, w - size + 1, stride):
            win = before[i : i + size, j : j + size]
            v = win[0, 0]
            borders = np.concatenate([win[0], win[-1], win[:, 0], win[:, -1]])
            if v in (0, IGNORE) or not (borders == v).all():
                continue
            o = out[i : i + size, j : j + size]
            o[o == 0] = v  # first qualifying window wins: filled pixels are no longer 0
    return out


@pytest.mark.parametrize("size,stride,h,w", [(10, 2, 53, 47), (8, 4, 40, 41), (6, 3, 31, 64)])
def test_square_matches_plain_rule(size, stride, h, w):
    rng = np.random.default_rng(size)
    m = _blocky(rng, h, w, size + 3, 0.03)
    m[rng.random(m.shape) < 0.005] = IGNORE
    strips = ((y, m[y : y + 9].copy()) for y in range(0, h, 9))
    got = np.concatenate([s for _, s in square_stage(strips, h, w, size, stride)])
    want = _square_reference(m, size, stride)
    assert (want != m).any()  # the case exercises some filling
    np.testing.assert_array_equal(got, want)


def test_square_known_answer(tmp_path):
    m = np.zeros((30, 30), np.uint8)
    m[0:10, 0:10] = 1
    m[3:6, 3:6] = 0  # inside a window with borders all 1: filled
    m[10:19, 10:19] = 2  # only one 8-px window fits (at 10, 10)...
    m[14:16, 14:16] = 0
    m[17, 12] = 3  # ...and its bottom border has another class: the hole stays
    alpha = np.full(m.shape, 255, np.uint8)
    alpha[4, 4] = 0  # no-data stays 0
    want = m.copy()
    want[3:6, 3:6] = 1
    want[4, 4] = 0
    got = run_fill(tmp_path, m, alpha, method="square", sizes=[10, 8], stride=2)
    np.testing.assert_array_equal(got, want)


def _cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "fill_hole.py"), "--quiet", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_in_place_and_size_error(tmp_path):
    m = np.zeros((20, 20), np.uint8)
    m[2:18, 2:18] = 3
    m[8:10, 8:10] = 0
    mp, src = save(tmp_path, m)
    r = _cli("--input", str(mp), "--source", str(src), "--max_hole", "10")
    assert r.returncode == 0, r.stderr
    assert (read_png(mp)[2:18, 2:18] == 3).all()
    write_png(tmp_path / "small.png", np.zeros((5, 5, 4), np.uint8))
    r = _cli("--input", str(mp), "--source", str(tmp_path / "small.png"), "--output", str(tmp_path / "o.png"))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "differs" in r.stderr
    assert not (tmp_path / "o.png").exists()


def test_fill_hole_cli_named_maps(tmp_path):
    """--name / --output_name: fill IMAGE_predict_NAME.png of several images into IMAGE_predict_OUT.png."""
    src_dir = tmp_path / "jingwei_round1_test_a_20190619"
    m = np.zeros((20, 20), np.uint8)
    m[2:18, 2:18] = 2
    m[8:10, 8:10] = 1  # a 4-px object: removed with --min_area 5
    for im in ("image_3", "image_4"):
        write_png(src_dir / f"{im}.png", np.full((20, 20, 4), 255, np.uint8))
        write_png(tmp_path / "submit" / f"{im}_predict_v.png", m)
    r = subprocess.run([sys.executable, str(ROOT / "fill_hole.py"), "--data_root", str(tmp_path), "--images", "image_3",
                        "image_4", "--name", "v", "--output_name", "v_area", "--method", "area", "--min_area", "5",
                        "--quiet"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    for im in ("image_3", "image_4"):
        np.testing.assert_array_equal(read_png(tmp_path / "submit" / f"{im}_predict_v.png"), m)  # input kept
        out = read_png(tmp_path / "submit" / f"{im}_predict_v_area.png")
        assert (out[8:10, 8:10] == 2).all() and (out[m != 1] == m[m != 1]).all()
