"""Tests of cropmap.predict.stitch: blending overlapping windows (Gaussian weights, centre-keep), rows no
window covers, and the preview."""

import numpy as np
import pytest

from cropmap.predict.stitch import BandStitcher, centre_window, weight_window
from cropmap.raster.preview import PreviewCanvas


# ---- Gaussian blending, uncovered rows, the preview ----------------------------------------------------


def test_blend_favours_window_centres():
    """Two overlapping windows that disagree: each pixel follows the window whose centre is nearer."""
    h, w, tile = 32, 48, 32
    out = np.zeros((h, w), np.uint8)

    def sink(y, labels, probs):
        out[y : y + len(labels)] = labels

    st = BandStitcher(h, w, 2, tile, sink)
    valid = np.ones((tile, tile), bool)
    a = np.zeros((2, tile, tile), np.float32)
    a[0] = 1
    b = np.zeros((2, tile, tile), np.float32)
    b[1] = 1
    st.add(0, 0, a, valid)
    st.add(0, 16, b, valid)
    st.finish()
    # overlap columns 16..31: the left window's centre is at 15.5, the right one's at 31.5
    assert (out[:, :24] == 0).all() and (out[:, 24:] == 1).all()


def test_weight_window_shape_and_floor():
    wgt = weight_window(64, floor=1e-3)
    assert wgt.shape == (64, 64) and wgt.dtype == np.float32
    assert wgt.min() >= 1e-6 and wgt[0, 32] >= 1e-3 and wgt.max() == pytest.approx(1.0, abs=1e-3)
    assert wgt[32, 32] > wgt[32, 10] > wgt[32, 0]
    np.testing.assert_allclose(wgt, wgt.T)


def test_uncovered_rows_between_windows_are_zero():
    """Windows skipped as all-no-data leave gaps; rows there must come out 0, once each."""
    h, w, tile = 100, 20, 20
    seen = []

    def sink(y, labels, probs):
        seen.append((y, labels.numpy()))  # the sink gets tensors on the device (here the CPU)

    st = BandStitcher(h, w, 2, tile, sink)
    p = np.zeros((2, tile, tile), np.float32)
    p[1] = 1
    st.add(0, 0, p, np.ones((tile, tile), bool))
    st.add(70, 0, p, np.ones((tile, tile), bool))
    st.finish()
    full = np.concatenate([s for _, s in seen])
    assert [y for y, _ in seen] == sorted(y for y, _ in seen)
    assert full.shape == (h, w)
    assert (full[:20] == 1).all() and (full[20:70] == 0).all() and (full[70:90] == 1).all() and (full[90:] == 0).all()


def test_preview_nearest_subsampling():
    pv = PreviewCanvas(10, 7, max_side=4)  # scale 3
    assert pv.scale == 3 and pv.rgb.shape == (4, 3, 3)
    img = np.arange(10 * 7 * 3, dtype=np.uint8).reshape(10, 7, 3)
    pv.add_image(1, 2, img[1:9, 2:7])  # a window at (1, 2)
    pv.add_labels(0, np.ones((5, 7), np.uint8))
    pv.add_labels(5, np.zeros((5, 7), np.uint8))
    np.testing.assert_array_equal(pv.rgb[1:3, 1:3], img[3:9:3, 3:7:3])
    assert pv.labels[:2].all() and not pv.labels[2:].any()


# ---- centre-keep stitching ----------------------------------------------------------------------------


def test_centre_window():
    w = centre_window(8, 4, floor=1e-4)
    assert (w[2:6, 2:6] == 1).all() and w[0, 0] == pytest.approx(1e-8) and w[0, 4] == pytest.approx(1e-4)


def test_centre_blend_takes_each_pixel_from_the_window_centred_on_it():
    """Windows of 16 every 8 px, each predicting its own index: pixels follow the window whose centre holds them."""
    h, w, tile, stride = 40, 40, 16, 8
    out = np.zeros((h, w), np.uint8)

    def sink(y, labels, probs):
        out[y : y + len(labels)] = labels.cpu().numpy()

    ys = [0, 8, 16, 24]
    xs = [0, 8, 16, 24]
    n = len(ys) * len(xs)
    st = BandStitcher(h, w, n, tile, sink, blend="centre", blend_options={"keep": stride})
    valid = np.ones((tile, tile), bool)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            p = np.zeros((n, tile, tile), np.float32)
            p[i * len(xs) + j] = 1
            st.add(y, x, p, valid)
    st.finish()
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            k = i * len(xs) + j
            assert (out[y + 4 : y + 12, x + 4 : x + 12] == k).all()  # the window's central 8x8 square
    assert (out[:4, :4] == 0).all()  # the image's corner: only window 0 covers it
