"""The PNG reader/writer and the synthetic data set."""

from __future__ import annotations

import numpy as np
import pytest

from cropmap import synthetic
from cropmap.cli import InputError
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


def test_synthetic_rows_do_not_depend_on_blocks():
    h, w = 700, 300
    full_rgba, full_label = synthetic.synthesize_rows(5, h, w, 0, h)
    part_rgba, part_label = synthetic.synthesize_rows(5, h, w, 250, 530)
    np.testing.assert_array_equal(part_rgba, full_rgba[250:530])
    np.testing.assert_array_equal(part_label, full_label[250:530])
    other, _ = synthetic.synthesize_rows(6, h, w, 0, h)
    assert not np.array_equal(other, full_rgba)


def test_synthetic_image_is_competition_like(tmp_path):
    h, w = 900, 1100
    synthetic.write_image(tmp_path / "i.png", tmp_path / "l.png", h, w, seed=3, progress=False)
    img, lab = read_png(tmp_path / "i.png"), read_png(tmp_path / "l.png")
    assert img.shape == (h, w, 4) and lab.shape == (h, w)
    ref_rgba, ref_label = synthetic.synthesize_rows(3, h, w, 0, h)
    np.testing.assert_array_equal(img, ref_rgba)
    np.testing.assert_array_equal(lab, ref_label)
    nodata = img[..., 3] == 0
    assert set(np.unique(img[..., 3])) == {0, 255}
    assert 0.05 < nodata.mean() < 0.5
    assert (img[nodata, :3] == 0).all() and (lab[nodata] == 0).all()
    counts = np.bincount(lab[~nodata], minlength=4)
    assert counts.size == 4 and (counts / counts.sum() > 0.05).all()  # all four classes, none rare
    # colour alone does not separate the crops: their mean colours are close relative to the spread
    means = np.array([img[(lab == c) & ~nodata, :3].mean(0) for c in (1, 2, 3)])
    spread = img[~nodata, :3].std(0).mean()
    assert np.abs(means[:, None] - means[None]).max() < spread


def test_synthetic_writer_failing_at_close_is_reported_not_hung(tmp_path, monkeypatch):
    """A writer that fails once every row is in (e.g. disk full while finishing the file) is an error of
    write_image, not a deadlock between its producer and writer threads."""
    import threading

    class FailsAtClose:
        def __init__(self, *args, **kwargs):
            self.rows_written = 0

        def write(self, strip):
            self.rows_written += len(strip)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            raise OSError("disk full")

    monkeypatch.setattr(synthetic, "open_writer", FailsAtClose)
    errors = []

    def run():
        try:
            synthetic.write_image(tmp_path / "a.png", tmp_path / "a_label.png", 40, 30, seed=1, progress=False)
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "write_image hung"
    assert len(errors) == 1 and "disk full" in str(errors[0])
