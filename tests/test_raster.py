"""Tests of cropmap.raster: the PNG reader/writer, row windows with overlap and padding, label values."""

from __future__ import annotations

import numpy as np
import pytest

from cropmap.core.errors import InputError
from cropmap.raster import check_label_values, iter_row_windows, iter_strips, raster_info, read_png, write_png
from cropmap.raster.png import StripWriter as PngStripWriter


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_strip_writer_roundtrip(tmp_path, channels):
    rng = np.random.default_rng(channels)
    shape = (333, 257) if channels == 1 else (333, 257, channels)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    p = tmp_path / "a.png"
    with PngStripWriter(p, 257, 333, channels) as w:
        for y in range(0, 333, 100):
            w.write(a[y : y + 100])
    info = raster_info(p)
    assert (info.height, info.width, info.channels) == (333, 257, channels)
    np.testing.assert_array_equal(read_png(p), a)
    # the streaming reader gives back the same rows, strip by strip
    got = np.concatenate([s for _, s in iter_strips(p, 64)])
    np.testing.assert_array_equal(got, a)


def test_strip_writer_leaves_nothing_when_interrupted(tmp_path):
    p = tmp_path / "a.png"
    with pytest.raises(RuntimeError):
        with PngStripWriter(p, 10, 10, 1) as w:
            w.write(np.zeros((5, 10), np.uint8))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    w = PngStripWriter(p, 10, 10, 1)
    w.write(np.zeros((5, 10), np.uint8))
    with pytest.raises(ValueError):
        w.close()  # too few rows
    assert list(tmp_path.iterdir()) == []


def test_row_windows_overlap_gaps_and_padding(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (500, 40, 3), dtype=np.uint8)
    p = tmp_path / "a.png"
    write_png(p, a)
    rows = [0, 10, 30, 100, 101, 300, 450, 480, 499]
    for y, win in iter_row_windows(p, rows, 64):
        want = np.zeros((64, 40, 3), np.uint8)
        part = a[y : y + 64]
        want[: len(part)] = part
        np.testing.assert_array_equal(win, want)
    rgba = next(iter_row_windows(p, [0], 8, rgba=True))[1]
    assert rgba.shape == (8, 40, 4) and (rgba[..., 3] == 255).all()


def test_label_values(tmp_path):
    lab = np.array([[0, 1, 2], [3, 255, 0]], np.uint8)
    write_png(tmp_path / "l.png", lab)
    hist = check_label_values(tmp_path / "l.png", 4)
    assert hist[:4].tolist() == [2, 1, 1, 1] and hist[255] == 1
    with pytest.raises(InputError, match="outside 0..2"):
        check_label_values(tmp_path / "l.png", 3)
