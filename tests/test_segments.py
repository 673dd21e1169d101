"""Segment vote (fill_hole.py --method segments): gradient, threshold, vote, bands, the command."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cropmap.maps.postprocess import fill_map
from cropmap.raster import IGNORE, read_png, write_png
from cropmap.maps.segments import QUANT, edge_threshold, gradient_magnitude, segment_stage, vote_segments

ROOT = Path(__file__).resolve().parents[1]


def test_gradient_of_a_step_is_the_sobel_value():
    rgb = np.zeros((6, 10, 3), np.uint8)
    rgb[:, 5:, 0] = 100  # a step of 100 grey levels in the red channel between columns 4 and 5
    mag = gradient_magnitude(rgb, sigma=0)
    want = np.zeros((6, 10), np.uint16)
    want[:, 4:6] = 4 * 100 * QUANT  # Sobel x: (right - left) * (1 + 2 + 1) on a vertical edge
    np.testing.assert_array_equal(mag, want)
    # the column chunks of a wide block give the same result as one piece
    wide = np.random.default_rng(0).integers(0, 256, (9, 5000, 3)).astype(np.uint8)
    from cropmap.maps import segments

    whole = gradient_magnitude(wide, 1.5)
    old = segments.COL_CHUNK
    try:
        segments.COL_CHUNK = 777
        np.testing.assert_array_equal(gradient_magnitude(wide, 1.5), whole)
    finally:
        segments.COL_CHUNK = old


def test_edge_threshold_is_the_percentile_of_valid_pixels(tmp_path):
    rgba = np.zeros((6, 10, 4), np.uint8)
    rgba[:, 5:, 0] = 100
    rgba[..., 3] = 255
    write_png(tmp_path / "s.png", rgba)
    # 80% of the pixels have magnitude 0, 20% have 400 (bin 1600)
    assert edge_threshold(tmp_path / "s.png", 6, 10, 0, 80) == 1
    assert edge_threshold(tmp_path / "s.png", 6, 10, 0, 81) == 4 * 100 * QUANT + 1
    rgba[:, :3, 3] = 0  # no-data does not count: 7 valid columns, 2 of them edges (71% zero)
    write_png(tmp_path / "s.png", rgba)
    assert edge_threshold(tmp_path / "s.png", 6, 10, 0, 71) == 1
    assert edge_threshold(tmp_path / "s.png", 6, 10, 0, 72) == 1601


def test_vote_segments_exact():
    work = np.array([[1, 1, 2, 0, 3, 3],
                     [1, 2, 1, 0, 3, 0],
                     [0, 1, 1, 0, 2, 1]], np.uint8)
    inside = np.ones_like(work, bool)
    inside[:, 3] = False  # an edge column: two segments, left (6 of 9 pixels class 1) and right
    work[2, 5] = IGNORE
    inside[2, 5] = False
    got = vote_segments(work, inside, 4, 0.5)
    want = work.copy()
    want[:, :3] = 1  # 6/9 >= 0.5
    want[0:2, 4:6] = 3
    want[2, 4] = 3  # right segment: 3 of 5 valid pixels class 3 -> all 3
    np.testing.assert_array_equal(got, want)
    assert got[2, 5] == IGNORE and (got[:, 3] == 0).all()
    # at a least share of 0.7 neither segment is voted (left 6/9, right 3/5)
    np.testing.assert_array_equal(vote_segments(work, inside, 4, 0.7), work)


def fields_image(h=64, w=80, seed=0):
    """Flat-coloured fields split by bright 2-px lines, their labels, a noisy map of them and a no-data corner."""
    rng = np.random.default_rng(seed)
    rgba = np.zeros((h, w, 4), np.uint8)
    label = np.zeros((h, w), np.uint8)
    ys, xs = [0, 20, 45, h], [0, 30, 55, w]
    k = 0
    for i in range(3):
        for j in range(3):
            rgba[ys[i]:ys[i + 1], xs[j]:xs[j + 1], :3] = rng.integers(40, 160, 3)
            label[ys[i]:ys[i + 1], xs[j]:xs[j + 1]] = k % 4
            k += 1
    for y in ys[1:-1]:
        rgba[y - 1:y + 1, :, :3] = 250
    for x in xs[1:-1]:
        rgba[:, x - 1:x + 1, :3] = 250
    rgba[..., 3] = 255
    rgba[:10, :12, 3] = 0
    noisy = label.copy()
    flip = rng.random(label.shape) < 0.25
    noisy[flip] = rng.integers(0, 4, flip.sum())
    noisy[rgba[..., 3] == 0] = 0
    return rgba, label, noisy


def test_fill_map_segments_cleans_each_field(tmp_path):
    rgba, label, noisy = fields_image()
    write_png(tmp_path / "s.png", rgba)
    write_png(tmp_path / "m.png", noisy)
    fill_map(tmp_path / "m.png", tmp_path / "s.png", tmp_path / "o.png", method="segments", edge_percentile=60,
             edge_sigma=1.0, progress=False)
    got = read_png(tmp_path / "o.png")
    valid = rgba[..., 3] == 255
    mag = gradient_magnitude(rgba, 1.0)
    flat = (mag == 0) & valid  # field interiors, away from the lines
    assert flat.sum() > 0.5 * valid.sum()
    np.testing.assert_array_equal(got[flat], label[flat])  # every field interior takes its true class
    assert (got[~valid] == 0).all()
    edges = valid & (mag >= edge_threshold(tmp_path / "s.png", *label.shape, 1.0, 60))
    np.testing.assert_array_equal(got[edges], noisy[edges])  # edge pixels keep their class
    assert (noisy[flat] != label[flat]).mean() > 0.1  # (there was noise to clean)


@pytest.mark.parametrize("band_rows", [5, 16, 40])
def test_segment_bands_match_whole_map(band_rows):
    rgba, _, noisy = fields_image(seed=3)
    work = np.where(rgba[..., 3] == 255, noisy, IGNORE).astype(np.uint8)
    h = len(work)

    def strips(step):
        return [(y, [work[y:y + step].copy(), rgba[y:y + step].copy()]) for y in range(0, h, step)]

    whole = np.concatenate([s for _, s in segment_stage(strips(h), h, 4, 1, 1.0, 0.5, 10_000)])
    # with a halo as tall as the image every band sees whole segments: the same map
    banded = np.concatenate([s for _, s in segment_stage(strips(7), h, 4, 1, 1.0, 0.5, band_rows, halo=h)])
    np.testing.assert_array_equal(banded, whole)
    assert whole.shape == work.shape and (whole[work == IGNORE] == IGNORE).all()
    assert not np.array_equal(whole, work)


def test_fill_hole_cli_segments(tmp_path):
    rgba, label, noisy = fields_image()
    write_png(tmp_path / "s.png", rgba)
    write_png(tmp_path / "m.png", noisy)
    cmd = [sys.executable, str(ROOT / "fill_hole.py"), "--input", str(tmp_path / "m.png"), "--source",
           str(tmp_path / "s.png"), "--output", str(tmp_path / "o.png"), "--method", "segments", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    valid = rgba[..., 3] == 255
    assert (read_png(tmp_path / "o.png") == label)[valid].mean() > (noisy == label)[valid].mean() + 0.1
    r = subprocess.run(cmd + ["--edge_percentile", "0"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "--edge_percentile" in r.stderr and "Traceback" not in r.stderr
