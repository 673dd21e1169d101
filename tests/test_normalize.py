"""Tests of cropmap.data.normalize: ImageNet's normalisation, the same for training tiles and prediction windows,
and the input normalisation (``--input_norm``): each window standardised over its valid pixels, recorded in the
checkpoint, repeated by prediction and evaluation, and kept by a resumed run of an older checkpoint."""

import numpy as np
import pytest
import torch

from cropmap.data import dataset as data
from cropmap.data import normalize as norm
from cropmap.train import engine
from cropmap.core.errors import InputError
from cropmap.raster import IGNORE, read_png, write_png

from _train_fixtures import make_tiles, tiny_args


def _reference(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``window`` normalisation in numpy, float64: ``rgb uint8 [H, W, 3]``, ``valid bool [H, W]`` -> ``[3, H, W]``."""
    x = rgb.astype(np.float64) / 255
    v = x[valid]
    out = (x - v.mean(0)) / (v.std(0) + norm.WINDOW_STD_FLOOR)
    out[~valid] = 0
    return out.transpose(2, 0, 1)


def test_normalize_values():
    mean = np.array(norm.IMAGENET_MEAN)
    std = np.array(norm.IMAGENET_STD)
    image = np.zeros((2, 3, 3), np.uint8)
    image[0, 0] = 255
    image[1, 2] = np.rint(mean * 255).astype(np.uint8)
    x, _ = data.to_tensors(image, np.zeros((2, 3), np.uint8))
    assert x.dtype == torch.float32 and x.shape == (3, 2, 3)
    assert torch.allclose(x[:, 0, 0], torch.tensor((1 - mean) / std, dtype=torch.float32))
    assert torch.allclose(x[:, 0, 1], torch.tensor(-mean / std, dtype=torch.float32))
    assert torch.allclose(x[:, 1, 2], torch.zeros(3), atol=0.02)
    # a batch of RGBA windows (prediction) is normalised the same way; alpha is dropped
    rgba = np.concatenate([image, np.full((2, 3, 1), 7, np.uint8)], axis=2)
    batch = torch.from_numpy(np.stack([rgba, rgba])).permute(0, 3, 1, 2)
    xb = norm.normalize(batch)
    assert xb.shape == (2, 3, 2, 3) and torch.equal(xb[1], x)


def test_window_normalisation_per_image_and_channel_over_valid_pixels():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (2, 12, 10, 4)).astype(np.uint8)
    rgba[..., 3] = 255
    rgba[0, :4, :5] = 0  # no-data corner of the first window: not counted, output 0
    rgba[1, ..., :3] //= 3  # a darker second window: its own statistics
    batch = torch.from_numpy(rgba).permute(0, 3, 1, 2)
    out = norm.normalize(batch, "window")
    assert out.dtype == torch.float32 and out.shape == (2, 3, 12, 10)
    for i in range(2):
        want = _reference(rgba[i, ..., :3], rgba[i, ..., 3] == 255)
        np.testing.assert_allclose(out[i].numpy(), want, atol=1e-5)
    assert (out[0, :, :4, :5] == 0).all()
    alone = norm.normalize(batch[1:], "window")  # a window's result does not depend on its batch
    assert torch.allclose(alone[0], out[1])
    # without alpha, no-data is black; an explicit mask wins over both
    rgb = batch[:, :3].clone()
    assert torch.allclose(norm.normalize(rgb, "window"), out, atol=1e-6)
    mask = torch.ones((2, 12, 10), dtype=torch.bool)
    full = norm.normalize(batch, "window", valid=mask)
    want = _reference(rgba[0, ..., :3], np.ones((12, 10), bool))
    np.testing.assert_allclose(full[0].numpy(), want, atol=1e-5)
    with pytest.raises(ValueError, match="input normalisation"):
        norm.normalize(batch, "per-pixel")


def test_window_normalisation_undoes_what_an_acquisition_changes():
    """Band gains, dimming, haze (an offset) and a mild tone curve barely move the window-normalised input,
    while the fixed ImageNet normalisation sees a different image."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:64, :64]
    rows = 0.5 + 0.5 * np.cos(2 * np.pi * (xx + 0.3 * yy) / 9.0)  # crop rows over soil
    soil, veg = np.array([140, 110, 80.0]), np.array([60, 130, 50.0])
    scene = soil * (1 - 0.7 * rows[..., None]) + veg * 0.7 * rows[..., None] + rng.normal(0, 3, (64, 64, 3))
    a = np.clip(np.rint(scene), 0, 255).astype(np.uint8)
    ta = torch.from_numpy(a).permute(2, 0, 1)
    for brightness, haze in ((0.88, 0.14), (0.75, 0.0)):  # the demo's test acquisition; a dimmer one
        shifted = np.clip(scene * brightness * np.array([1.06, 1.0, 0.88]) / 255, 0, 1) ** 1.12 * 255
        shifted = (1 - haze) * shifted + haze * np.array([205, 208, 214.0])
        tb = torch.from_numpy(np.clip(np.rint(shifted), 0, 255).astype(np.uint8)).permute(2, 0, 1)
        change = {}  # mean change of the input, relative to the spread of the unshifted input
        for mode in ("window", "imagenet"):
            ref = norm.normalize(ta, mode)
            change[mode] = ((norm.normalize(tb, mode) - ref).abs().mean() / ref.std()).item()
        assert change["window"] < 0.15 and change["imagenet"] > 2 * change["window"], change


def test_training_tiles_count_labelled_or_coloured_pixels():
    """In a tile no-data is black and labelled 255; a pixel with a colour or a label counts as valid."""
    rng = np.random.default_rng(2)
    image = rng.integers(20, 200, (8, 8, 3)).astype(np.uint8)
    label = np.ones((8, 8), np.uint8)
    image[:3] = 0
    label[:3] = IGNORE  # no-data rows
    label[5, :] = IGNORE  # an ignored row with content: still part of the statistics
    x, y = data.to_tensors(image, label, "window")
    valid = np.ones((8, 8), bool)
    valid[:3] = False
    np.testing.assert_allclose(x.numpy(), _reference(image, valid), atol=1e-5)
    assert y.dtype == torch.int64 and (y[:3] == IGNORE).all()


def _train(root, *extra):
    args = engine.get_args_parser().parse_args(tiny_args(root, "--epochs", "1", "--iters_per_epoch", "1", *extra))
    engine.main(args)
    return root / "model" / "deeplabv3_resnet18_t_last.pth"


def test_checkpoint_records_the_normalisation_and_prediction_repeats_it(tmp_path, monkeypatch):
    """The checkpoint says which normalisation its model was trained with; predict.py and evaluation
    without --train use it, and a checkpoint that says nothing (older) gets the original's."""
    import predict
    from cropmap.predict.inference import predict_from_source as real_predict

    root = make_tiles(tmp_path / "d", n_train=8, n_val=2)
    last = _train(root)
    state = torch.load(last, weights_only=True)
    assert state["args"]["input_norm"] == "window"  # the default
    legacy = tmp_path / "legacy.pth"
    del state["args"]["input_norm"]
    torch.save(state, legacy)

    rgba = np.zeros((40, 48, 4), np.uint8)
    rgba[..., :3] = np.random.default_rng(3).integers(0, 256, (40, 48, 3))
    rgba[..., 3] = 255
    write_png(tmp_path / "img.png", rgba)
    seen = []

    def spy(model, source, out, opts, **kw):
        seen.append(opts.input_norm)
        return real_predict(model, source, out, opts, **kw)

    monkeypatch.setattr(predict, "predict_from_source", spy)
    for ckpt, name in ((last, "new"), (legacy, "old")):
        predict.main(predict.get_args_parser().parse_args(
            ["--data_root", str(root), "--images", str(tmp_path / "img.png"), "--checkpoint", str(ckpt), "--tile_size",
             "32", "--output_dir", str(tmp_path / "out"), "--name", name, "--preview_size", "0", "--quiet"]))
    assert seen == ["window", "imagenet"]
    assert read_png(tmp_path / "out" / "img_predict_new.png").shape == (40, 48)

    made = []

    class Spy(data.TileDataset):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self.input_norm)

    monkeypatch.setattr(engine, "TileDataset", Spy)
    for ckpt in (last, legacy):
        engine.main(engine.get_args_parser().parse_args(
            ["--data_root", str(root), "--checkpoint", str(ckpt), "--workers", "0", "--quiet", "--device", "cpu"]))
    assert made == ["window", "imagenet"]


def test_a_resumed_older_checkpoint_keeps_the_original_normalisation(tmp_path):
    root = make_tiles(tmp_path / "d", n_train=8, n_val=2)
    last = _train(root, "--input_norm", "imagenet")
    state = torch.load(last, weights_only=True)
    del state["args"]["input_norm"]  # as written before the flag existed
    torch.save(state, last)
    args = engine.get_args_parser().parse_args(tiny_args(root, "--epochs", "2", "--iters_per_epoch", "1",
                                                         "--resume", str(last)))
    engine.main(args)
    assert args.input_norm == "imagenet"
    assert torch.load(last, weights_only=True)["args"]["input_norm"] == "imagenet"
    with pytest.raises(InputError, match="input_norm"):  # typed against the checkpoint's
        engine.main(engine.get_args_parser().parse_args(tiny_args(
            root, "--epochs", "3", "--iters_per_epoch", "1", "--resume", str(last), "--input_norm", "window")))
