"""Tests of cropmap.data.augment: the colour jitter and the rendering of a crop as another acquisition."""

import math

import numpy as np

from cropmap.data.augment import acquisition_jitter, color_jitter


# ---- colour jitter --------------------------------------------------------------------------------


def _image(seed=0, h=32, w=40):
    rng = np.random.default_rng(seed)
    img = rng.integers(30, 220, (h, w, 3)).astype(np.uint8)
    valid = np.ones((h, w), bool)
    valid[:8, :10] = False
    img[~valid] = 0
    return img, valid


def test_color_jitter_changes_valid_pixels_only():
    img, valid = _image()
    out = color_jitter(img, valid, 0.08, np.random.default_rng(1))
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert (out[~valid] == 0).all()  # no-data stays black
    diff = np.abs(out[valid].astype(int) - img[valid].astype(int))
    assert diff.mean() > 1  # it does change the image
    assert diff.mean() < 40  # but only by about the stated amplitude


def test_color_jitter_zero_strength_is_identity_and_draws_nothing():
    img, valid = _image()
    rng = np.random.default_rng(5)
    assert color_jitter(img, valid, 0.0, rng) is img
    assert rng.random() == np.random.default_rng(5).random()


def test_color_jitter_brightness_bounds():
    """Whatever the draw, a grey image's mean moves by at most the four factors' combined range."""
    img = np.full((16, 16, 3), 128, np.uint8)
    valid = np.ones((16, 16), bool)
    for seed in range(30):
        out = color_jitter(img, valid, 0.08, np.random.default_rng(seed))
        assert abs(out.mean() - 128) <= 128 * 0.08 + 1  # contrast/saturation/hue keep a flat grey image grey
        assert np.ptp(out.reshape(-1, 3), axis=0).max() <= 1  # still flat


def test_color_jitter_hue_rotates_colours():
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0] = 200  # pure red
    valid = np.ones((4, 4), bool)
    outs = [color_jitter(img, valid, 0.3, np.random.default_rng(s)) for s in range(20)]
    # a hue shift moves some red into green or blue in some draws
    assert max(int(o[..., 1].max()) + int(o[..., 2].max()) for o in outs) > 20


# ---- another acquisition ----------------------------------------------------------------------------


def test_acquisition_jitter_changes_valid_pixels_only_and_zero_is_identity():
    img, valid = _image()
    out = acquisition_jitter(img, valid, 0.15, np.random.default_rng(3))
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert (out[~valid] == 0).all()
    assert np.abs(out[valid].astype(int) - img[valid].astype(int)).mean() > 1
    rng = np.random.default_rng(5)
    assert acquisition_jitter(img, valid, 0.0, rng) is img
    assert rng.random() == np.random.default_rng(5).random()  # nothing drawn


def test_acquisition_jitter_stays_within_its_ranges():
    """A flat mid-grey patch: the result's mean lies between the darkest and the brightest rendering the
    ranges allow (gains, gamma, haze at their ends; noise averages out over 4096 pixels)."""
    s, x = 0.15, 0.5
    lo = (x * (1 - s) * (1 - s / 2)) ** math.exp(s) * (1 - s) + s * 0.0  # darkest gain, gamma > 1, no haze
    hi = max((x * (1 + s) * (1 + s / 2)) ** math.exp(-s), 0.94)  # brightest gain, gamma < 1; or the haze colour
    img = np.full((64, 64, 3), round(255 * x), np.uint8)
    valid = np.ones((64, 64), bool)
    means = []
    for seed in range(40):
        out = acquisition_jitter(img, valid, s, np.random.default_rng(seed)).astype(np.float64) / 255
        m = out.reshape(-1, 3).mean(0)
        assert (m >= lo - 0.01).all() and (m <= hi + 0.01).all(), (seed, m, lo, hi)
        means.append(m)
    means = np.array(means)
    assert np.ptp(means[:, 1]) > 0.1  # and it does vary that much between draws


def test_acquisition_jitter_keeps_vegetation_green():
    """No hue rotation: a green field stays green in every draw, where a colour jitter of hue 0.3 turns it."""
    img = np.zeros((16, 16, 3), np.uint8)
    img[...] = (60, 140, 50)
    valid = np.ones((16, 16), bool)
    for seed in range(50):
        out = acquisition_jitter(img, valid, 0.3, np.random.default_rng(seed)).reshape(-1, 3).mean(0)
        assert out[1] > out[0] + 10 and out[1] > out[2] + 10, (seed, out)
    turned = [color_jitter(img, valid, 0.3, np.random.default_rng(s)).reshape(-1, 3).mean(0) for s in range(50)]
    assert any(t[1] < max(t[0], t[2]) for t in turned)


def test_acquisition_jitter_blurs_fine_rows():
    """The blur: 2-px stripes lose far more contrast than 16-px stripes of the same two grey levels in some
    draws (every other step acts on each pixel alone, so it would scale both contrasts alike)."""
    cols = np.arange(64)
    fine = np.where((cols // 1) % 2 == 0, 180, 60)
    coarse = np.where((cols // 8) % 2 == 0, 180, 60)
    img = np.zeros((64, 128, 3), np.uint8)
    img[:, :64] = fine[None, :, None]
    img[:, 64:] = coarse[None, :, None]
    valid = np.ones(img.shape[:2], bool)

    def contrast(a):  # amplitude of the column means (rows averaged: noise cancels)
        prof = a.astype(np.float64).mean(axis=(0, 2))
        return np.ptp(prof[8:56]), np.ptp(prof[72:120])

    f0, c0 = contrast(img)
    ratios = []
    for seed in range(30):
        f, c = contrast(acquisition_jitter(img, valid, 0.3, np.random.default_rng(seed)))
        ratios.append((f / f0) / (c / c0))
    assert min(ratios) < 0.3  # strong blur draws wipe the fine rows out
    assert max(ratios) > 0.8  # weak ones keep them


def test_acquisition_jitter_blur_ignores_nodata():
    """A flat field beside no-data keeps its level up to the border: the blur averages valid pixels only."""
    img = np.zeros((32, 32, 3), np.uint8)
    img[:, 16:] = 150
    valid = np.zeros((32, 32), bool)
    valid[:, 16:] = True
    for seed in range(10):
        out = acquisition_jitter(img, valid, 0.3, np.random.default_rng(seed)).astype(np.float64)
        field = out[:, 16:].mean(axis=(0, 2))  # column means over rows and bands: noise averages out
        assert np.ptp(field) < 4, (seed, field)  # the column at the border is as bright as the rest
