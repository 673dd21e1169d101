"""Test-time BatchNorm adaptation (predict.py --adapt_bn): the sample, the statistics, the restore, the maps."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from cropmap.predict.adapt import MIN_VALID, adapt_batchnorm, restore_batchnorm, sample_groups, save_batchnorm
from cropmap.data.normalize import normalize
from cropmap.predict.inference import predict_from_source, predict_image
from cropmap.raster import read_png, write_png
from test_predict import write_windows


def test_sample_groups_spreads_over_rows_and_columns():
    ys = list(range(0, 100, 10))  # 10 rows of 10 windows
    groups, step = sample_groups(ys, 10, 25)
    assert groups == [[10], [30], [50], [70], [90]] and step == 2  # 5 rows x 5 columns
    assert sample_groups(ys, 10, 100) == ([[y] for y in ys], 1)  # the whole grid when it is small enough
    assert sample_groups(ys, 10, 500) == ([[y] for y in ys], 1)
    groups, step = sample_groups([0], 40, 8)  # one row: every fifth column
    assert groups == [[0]] and step == 5
    assert sample_groups([], 10, 8) == ([], 1)


class Threshold(nn.Module):
    """Class 1 where the red channel is above the BatchNorm's mean of it, else class 0 (ImageNet-normalised input)."""

    def __init__(self, mean: float, var: float):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1.0
        self.bn = nn.BatchNorm2d(1, affine=False)
        self.bn.running_mean.fill_(mean)
        self.bn.running_var.fill_(var)
        self.eval()

    def forward(self, x):
        z = self.bn(self.conv(x))
        return {"out": torch.cat([-z, z], 1) * 10}


def _red(v):
    return (v / 255 - 0.485) / 0.229


def test_statistics_are_those_of_the_kept_windows():
    model = Threshold(0.0, 1.0)
    rng = np.random.default_rng(0)
    full = torch.from_numpy(rng.integers(0, 256, (3, 4, 32, 32), dtype=np.uint8))
    full[:, 3] = 255
    part = full.clone()
    part[:, 3, :27] = 0  # 5/32 valid: left out
    saved = save_batchnorm(model)
    used = adapt_batchnorm(model, [full[:2], part, full[2:]], "imagenet")
    assert used == 3
    feats = normalize(full, "imagenet")[:, 0]
    assert model.bn.running_mean.item() == pytest.approx(feats.mean().item(), abs=1e-5)
    assert model.bn.running_var.item() == pytest.approx(feats.var().item(), rel=1e-3)  # one pass of 3 windows
    assert not model.training and not model.bn.training
    restore_batchnorm(saved)
    assert model.bn.running_mean.item() == 0.0 and model.bn.running_var.item() == 1.0
    adapt_batchnorm(model, [full], "imagenet", weight=0.25)  # a quarter image, three quarters training
    assert model.bn.running_mean.item() == pytest.approx(0.25 * feats.mean().item(), abs=1e-5)
    assert model.bn.running_var.item() == pytest.approx(0.25 * feats.var().item() + 0.75, rel=1e-3)
    assert model.bn.momentum == 0.1
    restore_batchnorm(saved)
    assert model.bn.running_mean.item() == 0.0 and model.bn.running_var.item() == 1.0 and model.bn.momentum == 0.1
    assert 5 / 32 < MIN_VALID


def test_no_data_pixels_of_a_kept_window_do_not_count():
    """A window three quarters valid: its statistics are those of its valid pixels alone."""
    model = Threshold(0.0, 1.0)
    rng = np.random.default_rng(3)
    rgba = torch.from_numpy(rng.integers(100, 256, (2, 4, 32, 32), dtype=np.uint8))
    rgba[:, 3] = 255
    rgba[0, :, :8] = 0  # no-data rows: black, alpha 0
    assert adapt_batchnorm(model, [rgba], "imagenet") == 2
    feats = normalize(rgba, "imagenet")[:, 0]
    valid = rgba[:, 3] == 255
    assert model.bn.running_mean.item() == pytest.approx(feats[valid].mean().item(), abs=1e-5)
    assert model.bn.running_var.item() == pytest.approx(feats[valid].var().item(), rel=1e-5)
    assert model.bn.running_mean.item() > feats.mean().item() + 0.1  # the black rows would pull it down


class TwoLayers(nn.Module):
    """conv (red) -> BatchNorm -> 2x2 average pool -> BatchNorm (no affine), training statistics given."""

    def __init__(self):
        super().__init__()
        self.conv = Threshold(0.0, 1.0).conv
        self.bn1, self.bn2 = nn.BatchNorm2d(1, affine=False), nn.BatchNorm2d(1, affine=False)
        self.bn1.running_mean.fill_(0.3)
        self.bn1.running_var.fill_(0.5)
        self.bn2.running_mean.fill_(-0.2)
        self.bn2.running_var.fill_(2.0)
        self.eval()

    def forward(self, x):
        return self.bn2(nn.functional.avg_pool2d(self.bn1(self.conv(x)), 2))


def test_deeper_layers_are_estimated_on_what_they_will_see():
    """With weight W, the second BatchNorm's statistics are those of the features that the first one,
    normalising with its final (mixed) statistics, gives it over the valid positions; computed here
    independently, layer by layer."""
    rng = np.random.default_rng(4)
    rgba = torch.from_numpy(rng.integers(0, 256, (3, 4, 16, 16), dtype=np.uint8))
    rgba[:, 3] = 255
    rgba[1, 3, :6] = 0  # even rows: each pooled position is all valid or all no-data
    model, w = TwoLayers(), 0.4
    assert adapt_batchnorm(model, [rgba[:2], rgba[2:]], "imagenet", weight=w) == 3
    valid = rgba[:, 3] == 255
    f = normalize(rgba, "imagenet")[:, 0].double()
    m1 = w * f[valid].mean() + (1 - w) * 0.3
    v1 = w * f[valid].var() + (1 - w) * 0.5
    assert model.bn1.running_mean.item() == pytest.approx(m1.item(), abs=1e-6)
    assert model.bn1.running_var.item() == pytest.approx(v1.item(), rel=1e-3)  # the pass mixes n, not n - 1
    z = nn.functional.avg_pool2d(((f - m1) / torch.sqrt(v1 + 1e-5))[:, None], 2)[:, 0]
    pooled_valid = nn.functional.avg_pool2d(valid[:, None].double(), 2)[:, 0] == 1
    m2 = w * z[pooled_valid].mean() + (1 - w) * -0.2
    v2 = w * z[pooled_valid].var() + (1 - w) * 2.0
    assert model.bn2.running_mean.item() == pytest.approx(m2.item(), abs=1e-3)
    assert model.bn2.running_var.item() == pytest.approx(v2.item(), rel=1e-2)
    # had the first layer normalised with its batch's own statistics, the second would see mean 0
    assert abs(m2.item() - (1 - w) * -0.2) > 0.05


def test_depth_adapts_the_first_layers_the_forward_pass_reaches():
    """--adapt_depth D: the first ceil(D x L) BatchNorm layers in forward order are adapted (as with depth 1),
    the rest keep the training statistics exactly; the order is the forward pass's, not the modules'."""

    class Reversed(TwoLayers):  # bn2 is registered first but runs last
        def __init__(self):
            super().__init__()
            bn1, bn2 = self.bn1, self.bn2
            del self.bn1, self.bn2
            self.bn2, self.bn1 = bn2, bn1

    rng = np.random.default_rng(5)
    rgba = torch.from_numpy(rng.integers(0, 256, (2, 4, 16, 16), dtype=np.uint8))
    rgba[:, 3] = 255
    whole = Reversed()
    assert [n for n, m in whole.named_modules() if isinstance(m, nn.BatchNorm2d)] == ["bn2", "bn1"]
    adapt_batchnorm(whole, [rgba], "imagenet", weight=0.5)
    assert whole.bn1.running_mean.item() != pytest.approx(0.3, abs=1e-3)
    assert whole.bn2.running_mean.item() != pytest.approx(-0.2, abs=1e-3)
    for depth in (0.5, 0.01):  # ceil(0.5 x 2) = ceil(0.02) = 1 layer: bn1 only
        half = Reversed()
        assert adapt_batchnorm(half, [rgba], "imagenet", weight=0.5, depth=depth) == 2
        assert half.bn1.running_mean.item() == whole.bn1.running_mean.item()
        assert half.bn1.running_var.item() == whole.bn1.running_var.item()
        assert half.bn2.running_mean.item() == pytest.approx(-0.2) and half.bn2.running_var.item() == 2.0
    # and a second image starts again from the first layer (the order is measured per call)
    again = Reversed()
    adapt_batchnorm(again, [rgba], "imagenet", weight=0.5, depth=0.5)
    adapt_batchnorm(again, [rgba], "imagenet", weight=0.5, depth=0.5)
    assert again.bn2.running_mean.item() == pytest.approx(-0.2)


def test_batchnorm_over_pooled_features_keeps_its_statistics():
    """ASPP-like image pooling: its BatchNorm sees one value per window and keeps the training statistics."""
    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(3)
            self.pool_bn = nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(x) + self.pool_bn(x.mean((-2, -1), keepdim=True))

    model = Pooled().eval()
    rgba = torch.from_numpy(np.random.default_rng(2).integers(150, 256, (4, 4, 32, 32), dtype=np.uint8))
    rgba[:, 3] = 255
    assert adapt_batchnorm(model, [rgba], "imagenet") == 4
    assert model.pool_bn.running_mean.abs().max() == 0 and (model.pool_bn.running_var == 1).all()
    assert model.bn.running_mean.abs().min() > 0.1  # re-estimated


def test_no_batchnorm_or_no_valid_window_changes_nothing():
    plain = nn.Conv2d(3, 2, 1)
    assert adapt_batchnorm(plain, [torch.zeros(2, 4, 8, 8, dtype=torch.uint8)], "imagenet") == 0
    model = Threshold(0.5, 2.0)
    assert adapt_batchnorm(model, [torch.zeros(2, 4, 8, 8, dtype=torch.uint8)], "imagenet") == 0
    assert model.bn.running_mean.item() == 0.5 and model.bn.running_var.item() == 2.0


def _shifted_source(tmp_path):
    """Fields of red 60 and 120 (label 0 and 1), the whole image brightened by 100 (a new acquisition)."""
    rng = np.random.default_rng(1)
    coarse = rng.integers(0, 2, (10, 12))
    label = np.kron(coarse, np.ones((8, 8), np.int64)).astype(np.uint8)  # 80 x 96
    rgba = np.zeros(label.shape + (4,), np.uint8)
    rgba[..., 0] = np.where(label == 1, 120, 60) + 100
    rgba[..., 1] = rng.integers(0, 256, label.shape)
    rgba[..., 3] = 255
    rgba[:16, :24] = 0  # no-data
    label[:16, :24] = 0
    path = tmp_path / "image_3.png"
    write_png(path, rgba)
    return path, label


def test_adaptation_undoes_a_new_acquisition_and_is_restored(tmp_path):
    """A model whose training statistics put the class border at red 90 calls the brightened image class 1
    everywhere; adapted to it, it finds the fields exactly, from the source and from pre-cut windows alike,
    and its training statistics are back afterwards."""
    source, label = _shifted_source(tmp_path)
    model = Threshold(float(_red(90)), 0.01)
    kw = dict(batch_size=4, progress=False, adapt_weight=1.0, adapt_depth=1.0)  # the image's statistics alone
    plain = predict_from_source(model, source, tmp_path / "plain.png", tile_size=32, stride=16, **kw)
    assert plain["adapted"] == 0
    got = read_png(plain["map"])
    assert (got[16:, :] == 1).all()  # every valid pixel brighter than the training border
    a = predict_from_source(model, source, tmp_path / "a.png", tile_size=32, stride=16, adapt_windows=64, **kw)
    assert 0 < a["adapted"] <= 64
    np.testing.assert_array_equal(read_png(a["map"]), label)
    assert model.bn.running_mean.item() == pytest.approx(_red(90), rel=1e-6)
    assert model.bn.running_var.item() == pytest.approx(0.01, rel=1e-6)
    rows, folder = write_windows(tmp_path, source, 32, 16)
    b = predict_image(model, rows, folder, tmp_path / "b.png", adapt_windows=64, **kw)
    assert b["adapted"] == a["adapted"]
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_predict_py_adapt_bn_flag(tmp_path, monkeypatch):
    """predict.py --adapt_bn N hands N on and records the windows used in the sidecar (a DeepLabv3 checkpoint)."""
    import predict
    from cropmap.train.checkpoint import save_checkpoint
    from models import build_model

    source, _ = _shifted_source(tmp_path)
    torch.manual_seed(0)
    net = build_model("deeplabv3", "resnet18", num_classes=2, aux=False)
    flags = {"model": "deeplabv3", "backbone": "resnet18", "num_classes": 2, "output_stride": 16}
    ckpt = save_checkpoint({"model": net.state_dict(), "args": flags, "epoch": 0, "optimizer": {}, "metrics": {}},
                           tmp_path / "t_best.pth")
    seen = []
    real = predict.predict_from_source

    def spy(model, source, out, opts, **kw):
        seen.append((opts.adapt_windows, opts.adapt_depth))
        return real(model, source, out, opts, **kw)

    monkeypatch.setattr(predict, "predict_from_source", spy)
    out = tmp_path / "out"
    for n in (0, 4):
        predict.main(predict.get_args_parser().parse_args(
            ["--source", str(source), "--checkpoint", str(ckpt), "--tile_size", "32", "--stride", "32", "--output_dir",
             str(out), "--name", f"n{n}", "--adapt_bn", str(n), "--preview_size", "0", "--quiet", "--device", "cpu",
             *(["--adapt_depth", "0.5", "--adapt_weight", "1"] if n else [])]))
    assert seen == [(0, 0.25), (4, 0.5)]  # predict.py --adapt_depth: default 0.25, typed 0.5
    assert json.loads((out / "image_3_predict_n0.json").read_text())["adapt_bn"] == 0
    side = json.loads((out / "image_3_predict_n4.json").read_text())
    assert side["adapt_bn"] == 3 and side["adapt_depth"] == 0.5  # row 32, its 3 windows
    a, b = read_png(out / "image_3_predict_n0.png"), read_png(out / "image_3_predict_n4.png")
    assert a.shape == b.shape == (80, 96) and (a != b).any()  # random weights: other statistics, another map
