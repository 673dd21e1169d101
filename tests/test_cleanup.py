"""Tests of cropmap.maps.cleanup: small-object / hole removal by area and morphological closing, in bands as
on the whole map, and fill_hole.py's checks of their flags."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from cropmap.maps.cleanup import close_stage, remove_small_components
from cropmap.raster import read_png, write_png
from cropmap.maps.postprocess import fill_map
from cropmap.raster.bands import iter_banded
from cropmap.raster import IGNORE

ROOT = Path(__file__).resolve().parents[1]


def run_fill(tmp_path, m, alpha=None, **kw):
    h, w = m.shape
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 3] = 255 if alpha is None else alpha
    write_png(tmp_path / "src.png", rgba)
    write_png(tmp_path / "map.png", m)
    fill_map(tmp_path / "map.png", tmp_path / "src.png", tmp_path / "out.png", progress=False, **kw)
    return read_png(tmp_path / "out.png")


def test_area_removes_exactly_the_small_components(tmp_path):
    m = np.zeros((40, 60), np.uint8)
    m[0:20, 0:30] = 1
    m[5:8, 5:8] = 2  # object of 9 px inside class 1: becomes 1
    m[10:14, 10:14] = 0  # hole of 16 px inside class 1: becomes 1
    m[10:15, 20:25] = 3  # 25 px: stays (min_area 20)
    m[20:40, 30:60] = 2
    m[25:27, 40:43] = 1  # 6 px inside class 2 -> 2
    m[30:33, 29:32] = 3  # 9 px straddling class 0 (5 neighbours) and class 2 (7 neighbours): majority -> 2
    m[38:40, 0:3] = 1  # 6 px at the image border inside class 0: removed too -> 0
    want = m.copy()
    want[5:8, 5:8] = 1
    want[10:14, 10:14] = 1
    want[25:27, 40:43] = 2
    want[30:33, 29:32] = 2
    want[38:40, 0:3] = 0
    got = run_fill(tmp_path, m, method="area", min_area=20)
    np.testing.assert_array_equal(got, want)
    # min_area is exclusive: a 25-px region survives min_area 25 and goes at 26
    assert (run_fill(tmp_path, m, method="area", min_area=25)[10:15, 20:25] == 3).all()
    assert (run_fill(tmp_path, m, method="area", min_area=26)[10:15, 20:25] == 1).all()


def test_area_neighbours_count_without_nodata(tmp_path):
    m = np.zeros((20, 20), np.uint8)
    m[:, 10:] = 2
    m[8:11, 8:11] = 1  # 9 px, neighbours: 0 on the left, 2 on the right, no-data above
    alpha = np.full(m.shape, 255, np.uint8)
    alpha[7, 8:11] = 0
    alpha[8:11, 7] = 0  # no-data hides the class-0 side: the majority of the valid neighbours is 2
    got = run_fill(tmp_path, m, alpha=alpha, method="area", min_area=10)
    assert (got[8:11, 8:11] == 2).all()
    assert (got[alpha == 0] == 0).all()
    # a region surrounded by no-data only stays as it is
    m2 = np.zeros((12, 12), np.uint8)
    m2[4:7, 4:7] = 3
    a2 = np.zeros(m2.shape, np.uint8)
    a2[4:7, 4:7] = 255
    assert (run_fill(tmp_path, m2, alpha=a2, method="area", min_area=50)[4:7, 4:7] == 3).all()


@pytest.mark.parametrize("band_rows", [3, 7, 16, 1000])
def test_area_bands_match_whole_map(band_rows):
    rng = np.random.default_rng(band_rows)
    m = (rng.random((60, 50)) < 0.3).astype(np.uint8) * rng.integers(1, 4, (60, 50)).astype(np.uint8)
    m = cv2.dilate(m, np.ones((2, 2), np.uint8))
    m[rng.random(m.shape) < 0.03] = IGNORE

    def run(rows):
        strips = [(y, m[y : y + 5].copy()) for y in range(0, len(m), 5)]
        out = m
        for c in range(4):
            def process(band, cut_top, cut_bottom, c=c):
                return remove_small_components(band, band == c, 11, cut_top, cut_bottom, 4)
            strips = list(iter_banded(strips, len(m), process, rows))
        return np.concatenate([s for _, s in strips])

    np.testing.assert_array_equal(run(band_rows), run(10_000))


def test_close_fills_narrow_gaps_only(tmp_path):
    m = np.zeros((30, 40), np.uint8)
    m[5:25, 5:15] = 1
    m[5:25, 17:27] = 1  # a 2-px gap between two parts of a field: closed
    m[5:25, 33:40] = 2  # 6 px from class 1: left alone
    m[12, 20] = 3  # a crop pixel inside: never changed by the closing of another class
    got = run_fill(tmp_path, m, method="close", radius=2)
    assert (got[6:24, 15:17] == 1).all()  # (the gap's two end pixels are corners the ellipse does not reach)
    assert (got[:, 27:33] == 0).all()
    assert got[12, 20] == 3 and (got[m > 0] == m[m > 0]).all()


@pytest.mark.parametrize("band_rows", [4, 9, 64])
def test_close_bands_match_whole_map(band_rows):
    rng = np.random.default_rng(1)
    m = (rng.random((50, 40)) < 0.5).astype(np.uint8)
    m[rng.random(m.shape) < 0.05] = IGNORE
    strips = [(y, m[y : y + 6].copy()) for y in range(0, 50, 6)]
    banded = np.concatenate([s for _, s in close_stage(strips, 50, 1, 2, band_rows)])
    whole = np.concatenate([s for _, s in close_stage([(0, m.copy())], 50, 1, 2, 1000)])
    np.testing.assert_array_equal(banded, whole)
    assert (banded[m == IGNORE] == IGNORE).all()


def test_fill_hole_cli_area_needs_min_area(tmp_path):
    write_png(tmp_path / "m.png", np.zeros((4, 4), np.uint8))
    write_png(tmp_path / "s.png", np.full((4, 4, 4), 255, np.uint8))
    r = subprocess.run([sys.executable, str(ROOT / "fill_hole.py"), "--input", str(tmp_path / "m.png"), "--source",
                        str(tmp_path / "s.png"), "--method", "area", "--quiet"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "--min_area" in r.stderr and "Traceback" not in r.stderr
