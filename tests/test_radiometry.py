"""Tests of cropmap.data.radiometry: matching a test image's colours to the training tiles' (mean and std, or
histograms), the look-up table leaving no-data alone, and a source's statistics with the transform applied on the
source path of prediction."""

import numpy as np
import pytest
import torch


def test_radiometric_matching_undoes_gain_and_offset(tmp_path):
    """A window rendered with another gain/offset per channel is mapped back to the reference rendering."""
    from cropmap.raster import write_png
    from cropmap.data.radiometry import apply_affine, match_affine, window_stats

    rng = np.random.default_rng(0)
    ref = rng.integers(60, 160, (3, 48, 48, 3)).astype(np.float64)
    gain, offset = np.array([0.8, 1.1, 0.7]), np.array([20.0, -5.0, 30.0])
    rows = []
    for i, img in enumerate(ref):
        rgba = np.zeros((48, 48, 4), np.uint8)
        rgba[..., :3] = np.clip(np.rint(img * gain + offset), 0, 255)
        rgba[..., 3] = 255
        rgba[:6, :6] = 0  # no-data corner: not counted, stays 0
        write_png(tmp_path / f"w{i}.png", rgba)
        rows.append({"name": f"w{i}.png"})
    valid = np.ones((48, 48), bool)
    valid[:6, :6] = False
    ref_stats = {"mean": ref[:, valid].reshape(-1, 3).mean(0), "std": ref[:, valid].reshape(-1, 3).std(0)}
    got = window_stats(tmp_path, rows)
    assert got["pixels"] == 3 * int(valid.sum())
    g, o = match_affine(got, ref_stats)
    np.testing.assert_allclose(g, 1 / gain, rtol=0.01)
    from cropmap.raster import read_png

    batch = torch.from_numpy(np.stack([read_png(tmp_path / r["name"]) for r in rows]).transpose(0, 3, 1, 2).copy())
    out = apply_affine(batch, g, o).numpy().transpose(0, 2, 3, 1)
    assert (out[:, :6, :6] == 0).all()  # no-data untouched
    assert np.abs(out[:, valid, :3].astype(float) - ref[:, valid]).mean() < 1.5  # the reference rendering, up to rounding


def test_histogram_matching_undoes_a_tone_curve_and_gains():
    """A monotone change per channel (gain, gamma, offset) is undone to within one level, which an affine
    match cannot do for a gamma; equal histograms give the identity; an empty histogram is refused."""
    from cropmap.data.radiometry import ChannelStats, match_affine, match_histogram

    rng = np.random.default_rng(2)
    ref = rng.integers(10, 240, (20000, 3)).astype(np.uint8)
    x = ref.astype(np.float64) / 255
    shifted = np.clip(np.rint(255 * np.stack([0.9 * x[:, 0] ** 1.4, 0.7 * x[:, 1] + 0.2, x[:, 2] ** 0.6], 1)), 0, 255)
    shifted = shifted.astype(np.uint8)
    a, b = ChannelStats(), ChannelStats()
    a.update(ref)
    b.update(shifted)
    assert b.hist.sum() == 3 * len(ref) and (b.hist[1] == np.bincount(shifted[:, 1], minlength=256)).all()
    lut = match_histogram(b.as_dict(), a.as_dict())
    back = np.stack([lut[c][shifted[:, c]] for c in range(3)], 1).astype(int)
    assert np.abs(back - ref).mean() < 1.0 and np.abs(back - ref).max() <= 4  # a few levels merge under gamma
    g, o = match_affine(b.as_dict(), a.as_dict())
    affine = np.clip(np.rint(shifted * g + o), 0, 255)
    assert np.abs(affine - ref).mean() > 3 * np.abs(back - ref).mean()
    same = match_histogram(a.as_dict(), a.as_dict())
    assert (np.abs(same[:, 10:240].astype(int) - np.arange(10, 240)) <= 0).all()
    with pytest.raises(ValueError):
        match_histogram({"hist": [[0] * 256] * 3}, a.as_dict())


def test_apply_lut_leaves_nodata_alone():
    from cropmap.data.radiometry import apply_lut

    rgba = torch.zeros((2, 4, 5, 6), dtype=torch.uint8)
    rgba[:, :3] = torch.randint(0, 256, (2, 3, 5, 6), dtype=torch.uint8)
    rgba[:, 3] = 255
    rgba[0, :, :2, :2] = 0  # no-data
    lut = np.stack([255 - np.arange(256), np.arange(256) // 2, np.full(256, 7)]).astype(np.uint8)
    out = apply_lut(rgba, lut)
    valid = rgba[:, 3] == 255
    for c in range(3):
        want = torch.as_tensor(lut[c])[rgba[:, c].long()]
        assert torch.equal(out[:, c][valid], want[valid])
    assert (out[0, :, :2, :2] == 0).all() and torch.equal(out[:, 3], rgba[:, 3])


def test_source_stats_and_matching_on_the_source_path(tmp_path):
    """Statistics of a source image in strips (every row_step-th row of valid pixels), and the transform
    applied to the windows read from the source before the model sees them."""
    from cropmap.predict.inference import predict_from_source
    from cropmap.raster import read_png, write_png
    from cropmap.data.radiometry import apply_affine, source_stats

    rng = np.random.default_rng(1)
    rgba = np.zeros((70, 90, 4), np.uint8)
    rgba[..., 0] = rng.integers(200, 256, (70, 90))  # red dominates everywhere
    rgba[..., 1:3] = rng.integers(0, 30, (70, 90, 2))
    rgba[..., 3] = 255
    rgba[:10, :20, 3] = 0  # no-data
    write_png(tmp_path / "src.png", rgba)
    valid = rgba[..., 3] == 255
    for step in (1, 4):
        rows = np.zeros(70, bool)
        rows[::step] = True
        px = rgba[..., :3][valid & rows[:, None]].astype(np.float64)
        got = source_stats(tmp_path / "src.png", row_step=step)
        assert got["pixels"] == len(px)
        np.testing.assert_allclose(got["mean"], px.mean(0), rtol=1e-9)
        np.testing.assert_allclose(got["std"], px.std(0), rtol=1e-9)

    def model(x):  # class 1 + the channel with the largest normalised value (R -> 1, G -> 2, B -> 3)
        return {"out": torch.cat([x[:, :1] * 0 - 100, x[:, :3]], dim=1)}

    plain = predict_from_source(model, tmp_path / "src.png", tmp_path / "a.png", tile_size=32, progress=False)
    dim_red = lambda b: apply_affine(b, np.array([0.02, 1, 1], np.float32), np.zeros(3, np.float32))  # noqa: E731
    matched = predict_from_source(model, tmp_path / "src.png", tmp_path / "b.png", tile_size=32, progress=False,
                                  transform=dim_red)
    a, b = read_png(plain["map"]), read_png(matched["map"])
    assert (a[valid] == 1).all() and (a[~valid] == 0).all()
    assert (b[valid] > 1).all() and (b[~valid] == 0).all()  # red dimmed before the model: never class 1
