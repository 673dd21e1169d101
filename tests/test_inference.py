"""Tests of cropmap.predict.inference: the oracle's label through the pre-cut window path and straight from the
source image (the same files from both), TTA, blending, loader workers, probabilities, and damaged inputs."""

import numpy as np
import pytest
import torch

from _oracle import NUM_CLASSES, expected, make_source, oracle, same_files, write_windows
from cropmap.core.errors import InputError
from cropmap.core.layout import prob_paths
from cropmap.data.tiling import grid_positions
from cropmap.predict.inference import predict_from_source, predict_image
from cropmap.raster import read_png, write_png


@pytest.mark.parametrize(
    "h,w,tile,stride",
    [(130, 170, 64, 32), (130, 170, 64, 64), (101, 157, 48, 20), (97, 83, 32, 27), (40, 50, 64, 32)],
)
def test_oracle_reproduces_label(tmp_path, h, w, tile, stride):
    source, label, alpha = make_source(tmp_path, h, w)
    rows, folder = write_windows(tmp_path, source, tile, stride)
    out = tmp_path / "submit" / "image_3_predict.png"
    res = predict_image(oracle, rows, folder, out, batch_size=3, progress=False, preview_path=tmp_path / "p.png")
    got = read_png(out)
    assert got.shape == (h, w)
    np.testing.assert_array_equal(got, expected(label, alpha))
    assert (got[alpha == 0] == 0).all()
    assert res["num_classes"] == NUM_CLASSES
    assert read_png(tmp_path / "p.png").shape[2] == 3


@pytest.mark.parametrize("blend", ["gaussian", "centre", "none"])
def test_oracle_with_tta_and_workers(tmp_path, blend):
    source, label, alpha = make_source(tmp_path, 90, 120, seed=3)
    rows, folder = write_windows(tmp_path, source, 48, 40)
    out = tmp_path / "m.png"
    for tta in ("flip", "d4"):
        predict_image(oracle, rows, folder, out, batch_size=4, workers=1, tta=tta, blend=blend, progress=False)
        np.testing.assert_array_equal(read_png(out), expected(label, alpha))


def test_constant_model_gives_constant_probabilities(tmp_path):
    source, label, alpha = make_source(tmp_path, 100, 130, seed=1)
    rows, folder = write_windows(tmp_path, source, 48, 20)
    p = torch.tensor([0.12, 0.52, 0.28, 0.08])

    def constant(x):
        return torch.log(p).view(1, -1, 1, 1).expand(x.shape[0], -1, x.shape[2], x.shape[3])

    out = tmp_path / "m.png"
    res = predict_image(constant, rows, folder, out, save_probs=True, progress=False)
    valid = alpha == 255
    got = read_png(out)
    assert (got[valid] == 1).all() and (got[~valid] == 0).all()
    want = np.rint(p.numpy() * 255).astype(np.uint8)  # 30.6, 132.6, 71.4, 20.4: far from rounding ties
    for c, path in enumerate(res["probs"]):
        assert path == prob_paths(out, NUM_CLASSES)[c]
        prob = read_png(path)
        assert (prob[valid] == want[c]).all(), c
        assert (prob[~valid] == 0).all()


def test_missing_window_is_an_input_error(tmp_path):
    source, _, _ = make_source(tmp_path, 64, 64)
    rows, folder = write_windows(tmp_path, source, 32, 32)
    (folder / rows[-1]["name"]).unlink()
    out = tmp_path / "m.png"
    with pytest.raises(InputError, match=rows[-1]["name"]):
        predict_image(oracle, rows, folder, out, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".m.png*"))


@pytest.mark.parametrize(
    "h,w,tile,stride,batch",
    [(130, 170, 64, 32, 3), (130, 170, 64, 64, 4), (101, 157, 48, 20, 16), (97, 83, 32, 27, 5), (40, 50, 64, 32, 2)],
)
def test_source_path_equals_window_path(tmp_path, h, w, tile, stride, batch):
    """The oracle through both paths: the label exactly, and every file (map, probabilities, preview) identical."""
    source, label, alpha = make_source(tmp_path, h, w)
    rows, folder = write_windows(tmp_path, source, tile, stride)
    kw = dict(batch_size=batch, progress=False, save_probs=True, preview_size=64)
    a = predict_image(oracle, rows, folder, tmp_path / "a" / "m.png", preview_path=tmp_path / "a" / "p.png", **kw)
    b = predict_from_source(oracle, source, tmp_path / "b" / "m.png", tile_size=tile, stride=stride,
                            preview_path=tmp_path / "b" / "p.png", **kw)
    np.testing.assert_array_equal(read_png(b["map"]), expected(label, alpha))
    assert a["windows"] == b["windows"] == len(rows)  # all-no-data windows skipped alike
    for x, y in zip([a["map"], a["preview"], *a["probs"]], [b["map"], b["preview"], *b["probs"]]):
        assert same_files(x, y), (x, y)
    assert not list(tmp_path.glob("*/.*.part"))


def test_rgb_source_and_tta(tmp_path):
    """An RGB source (no alpha: every pixel valid) with flips: the oracle's label everywhere."""
    _, label, _ = make_source(tmp_path, 70, 90, seed=5, nodata=False)
    rgb = read_png(tmp_path / "image_3.png")[..., :3]
    write_png(tmp_path / "rgb.png", rgb)
    res = predict_from_source(oracle, tmp_path / "rgb.png", tmp_path / "m.png", tile_size=32, stride=24,
                              tta="flip", batch_size=4, progress=False)
    np.testing.assert_array_equal(read_png(res["map"]), label)
    assert res["windows"] == len(grid_positions(70, 32, 24)) * len(grid_positions(90, 32, 24))


class TinyConv(torch.nn.Module):
    """A small random convolutional model: real floating-point work, cheap on a CPU."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, padding=2), torch.nn.ReLU(),
                                       torch.nn.Conv2d(8, NUM_CLASSES, 5, padding=2))

    def forward(self, x):
        return {"out": self.net(x)}


def test_real_model_same_map_both_paths(tmp_path):
    """A convolutional model through both paths: the same map; any pixel that differs is a near tie."""
    source, _, _ = make_source(tmp_path, 120, 150, seed=7)
    rows, folder = write_windows(tmp_path, source, 48, 24)
    model = TinyConv().eval()
    kw = dict(batch_size=5, progress=False, save_probs=True)
    a = predict_image(model, rows, folder, tmp_path / "a" / "m.png", **kw)
    b = predict_from_source(model, source, tmp_path / "b" / "m.png", tile_size=48, stride=24, **kw)
    ma, mb = read_png(a["map"]), read_png(b["map"])
    assert len(np.unique(ma)) > 1  # the model is not trivial
    differ = ma != mb
    assert differ.mean() < 1e-3
    if differ.any():  # a near tie: the two classes' probabilities within one quantisation step
        pa = np.stack([read_png(p) for p in a["probs"]])
        yy, xx = np.nonzero(differ)
        gap = np.abs(pa[ma[differ], yy, xx].astype(int) - pa[mb[differ], yy, xx].astype(int))
        assert (gap <= 1).all()


def test_corrupt_source_is_an_input_error(tmp_path):
    """A PNG that breaks in the middle: one InputError line from the decode thread, nothing left behind."""
    source, _, _ = make_source(tmp_path, 200, 160)
    data = bytearray(source.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(64)  # damage the compressed pixel data; the file still ends in IEND
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(data))
    out = tmp_path / "out" / "m.png"
    with pytest.raises(InputError, match="bad.png"):
        predict_from_source(oracle, bad, out, tile_size=32, stride=16, batch_size=2, progress=False, save_probs=True)
    assert not out.parent.exists() or not list(out.parent.iterdir())
