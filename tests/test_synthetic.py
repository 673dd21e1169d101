"""Tests of cropmap.data.synthetic and make_synthetic_data.py: the synthetic images, their rows independent of the
blocks they are made in, a failing writer, and the shifted acquisition of the test images."""

from __future__ import annotations

import numpy as np

from cropmap.data import synthetic
from cropmap.raster import read_png


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


def test_shifted_acquisition_differs_as_stated_and_labels_stay_consistent():
    import dataclasses

    import pytest

    h, w, seed = 600, 700, 4
    base_rgba, base_label = synthetic.synthesize_rows(seed, h, w, 0, h)
    # photometry only: same scene, same labels and no-data; each stated change does what it says
    S, T = synthetic.SHIFTED, synthetic.TRAIN_ACQUISITION
    v = base_rgba[..., 3] == 255
    m0 = base_rgba[v, :3].astype(float)

    def render(**kw):
        rgba, label = synthetic.synthesize_rows(seed, h, w, 0, h, dataclasses.replace(T, **kw))
        np.testing.assert_array_equal(label, base_label)
        np.testing.assert_array_equal(rgba[..., 3], base_rgba[..., 3])
        assert (rgba[~v, :3] == 0).all()
        return rgba[v, :3].astype(float)

    dim = render(brightness=S.brightness)
    assert dim.mean() == pytest.approx(S.brightness * m0.mean(), rel=0.01)  # illumination
    bal = render(gain=S.gain)
    ratio = bal.mean(0) / m0.mean(0)
    np.testing.assert_allclose(ratio, S.gain, rtol=0.01)  # colour balance per channel
    gam = render(gamma=S.gamma)
    assert gam.mean() < 0.97 * m0.mean()  # gamma > 1 darkens mid-tones
    hazy = render(haze=S.haze)
    assert hazy.std(0).mean() < (1 - 0.5 * S.haze) * m0.std(0).mean()  # haze flattens contrast
    assert hazy.min(0).mean() > m0.min(0).mean() + 10  # and lifts the darks towards the haze colour
    full, _ = synthetic.synthesize_rows(seed, h, w, 0, h, S)
    assert not np.array_equal(full, base_rgba)
    # ground resolution: the same parcels, 8% larger in pixels (the label at (y, x) is the scene at (y, x) / s)
    scaled = dataclasses.replace(T, scale=S.scale)
    _, lab_s = synthetic.synthesize_rows(seed, h, w, 0, h, scaled)
    ys, xs = np.mgrid[0:h:7, 0:w:7]
    src = base_label[np.round(ys / scaled.scale).astype(int), np.round(xs / scaled.scale).astype(int)]
    inside = base_rgba[ys, xs, 3] == 255
    inside &= base_rgba[np.round(ys / scaled.scale).astype(int), np.round(xs / scaled.scale).astype(int), 3] == 255
    agree = (lab_s[ys, xs] == src)[inside].mean()
    assert agree > 0.93  # parcels match up to their edges (roads and field edges are labelled 0)
    assert (lab_s[ys, xs] == base_label[ys, xs])[inside].mean() < agree - 0.1  # not the unscaled labels
    # classes in other proportions: the shifted class mix draws more coix and less tobacco
    _, lab_c = synthetic.synthesize_rows(seed, 2000, 2000, 0, 2000, synthetic.SHIFTED)
    _, lab_b = synthetic.synthesize_rows(seed, 2000, 2000, 0, 2000)
    share = lambda lab, c: (lab == c).mean() / (lab > 0).mean()  # noqa: E731
    assert share(lab_c, 3) > share(lab_b, 3) and share(lab_c, 1) < share(lab_b, 1)


def test_make_synthetic_data_shifts_test_images_only(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for flags, out in (([], "a"), (["--no_shift"], "b")):
        r = subprocess.run([sys.executable, str(root / "make_synthetic_data.py"), "--data_root", str(tmp_path / out),
                            "--size", "400", "--quiet", *flags], capture_output=True, text=True, cwd=root)
        assert r.returncode == 0, r.stderr
    train = "jingwei_round1_train_20190619/image_1.png"
    test = "jingwei_round1_test_a_20190619/image_3.png"
    assert np.array_equal(read_png(tmp_path / "a" / train), read_png(tmp_path / "b" / train))
    assert not np.array_equal(read_png(tmp_path / "a" / test), read_png(tmp_path / "b" / test))
    h, w = synthetic.image_sizes(400)["image_3"]
    ref, _ = synthetic.synthesize_rows(3, h, w, 0, h, synthetic.SHIFTED)
    np.testing.assert_array_equal(read_png(tmp_path / "a" / test), ref)
    r = subprocess.run([sys.executable, str(root / "make_synthetic_data.py"), "--data_root", str(tmp_path / "c"),
                        "--class_prob", "1,2", "--quiet"], capture_output=True, text=True, cwd=root)
    assert r.returncode == 2 and "--class_prob" in r.stderr and not (tmp_path / "c").exists()
