"""The winners' training tricks and the rare-class safeguards: colour jitter, edge-aware label smoothing,
learning-rate warm-up, absent classes, and losses on batches that miss a class."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cropmap.train import engine
from cropmap.data.augment import acquisition_jitter, color_jitter
from cropmap.data.dataset import TileDataset
from cropmap.raster import IGNORE
from cropmap.core.metrics import ConfusionMatrix, exclude_absent
from losses import build_loss, edge_smoothing_targets

from _train_fixtures import make_tiles, tiny_args


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


def test_dataset_jitter_keeps_labels_and_nodata(tmp_path):
    root = make_tiles(tmp_path, n_train=4, n_val=1)
    plain = TileDataset(root, "train", augment=True, crop_size=64, scale_range=(1, 1))
    jitter = TileDataset(root, "train", augment=True, crop_size=64, scale_range=(1, 1), color_jitter=0.08)
    acquisition = TileDataset(root, "train", augment=True, crop_size=64, scale_range=(1, 1), acquisition_jitter=0.15)
    for i in range(4):
        key = (i, 64, 1234 + i)
        (x0, y0), (x1, y1) = plain[key], acquisition[key]
        assert torch.equal(y0, y1)
        assert torch.equal(x0[:, y0 == IGNORE], x1[:, y0 == IGNORE])
        assert not torch.equal(x0[:, y0 != IGNORE], x1[:, y0 != IGNORE])
    for i in range(4):
        key = (i, 64, 1234 + i)
        (x0, y0), (x1, y1) = plain[key], jitter[key]
        assert torch.equal(y0, y1)  # same geometry, same labels
        ignored = y0 == IGNORE
        assert torch.equal(x0[:, ignored], x1[:, ignored])  # no-data pixels identical (black)
        assert not torch.equal(x0[:, ~ignored], x1[:, ~ignored])


# ---- edge-aware label smoothing -----------------------------------------------------------------


def test_edge_smoothing_targets_hand_made_label():
    # two classes side by side: columns 0..7 class 0, 8..14 class 2; one ignored pixel
    t = torch.zeros(1, 15, 15, dtype=torch.long)
    t[:, :, 8:] = 2
    t[0, 3, 0] = IGNORE
    q, valid = edge_smoothing_targets(t, 4, window=11, cap=0.2)
    assert q.shape == (1, 4, 15, 15)
    row = q[0, :, 7]  # middle row: windows span every row of the image (the ignored pixel, in column 0, not counted)
    # column 0: the 11x11 window covers columns 0..5, all class 0 -> one-hot
    assert torch.allclose(row[:, 0], torch.tensor([1.0, 0, 0, 0]))
    # column 3: columns 0..8 -> 1 of 9 columns is class 2 (the ignored pixel sits in column 0, class 0 side)
    share = 11 / (11 * 9 - 1)
    assert torch.allclose(row[:, 3], torch.tensor([1 - share, 0, share, 0]), atol=1e-6)
    # column 7, next to the border: columns 2..12, 5 of 11 are class 2 -> capped at 0.2
    assert torch.allclose(row[:, 7], torch.tensor([0.8, 0, 0.2, 0]), atol=1e-6)
    # column 8: the same on the other side
    assert torch.allclose(row[:, 8], torch.tensor([0.2, 0, 0.8, 0]), atol=1e-6)
    assert not valid[0, 3, 0] and torch.all(q[0, :, 3, 0] == 0)
    assert torch.allclose(q.sum(1)[valid], torch.ones(int(valid.sum())))


def test_edge_smoothing_spreads_over_the_classes_present():
    t = torch.zeros(1, 11, 11, dtype=torch.long)
    t[0, :, 8:] = 1
    t[0, 8:, :] = 3  # a corner where three classes meet
    q, _ = edge_smoothing_targets(t, 4, window=11, cap=0.5)
    centre = q[0, :, 5, 5]  # window = the whole image: 121 pixels
    counts = torch.tensor([float((t == c).sum()) for c in range(4)])
    share_other = 1 - counts[0] / 121
    assert share_other < 0.5  # under the cap: the target is the window's histogram
    assert torch.allclose(centre, counts / 121, atol=1e-6)


def test_edge_smoothed_ce_equals_ce_inside_parcels():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 20, 20)
    t = torch.full((2, 20, 20), 2, dtype=torch.long)  # one class everywhere: no border, no smoothing
    t[1, :3] = IGNORE
    smooth = build_loss("ce", aux_weight=0, label_smoothing="edge")(logits, t)
    plain = build_loss("ce", aux_weight=0)(logits, t)
    assert torch.allclose(smooth, plain, atol=1e-6)
    focal_s = build_loss("focal", aux_weight=0, label_smoothing="edge")(logits, t)
    focal = build_loss("focal", aux_weight=0)(logits, t)
    assert torch.allclose(focal_s, focal, atol=1e-6)


def test_edge_smoothing_rewards_soft_borders():
    t = torch.zeros(1, 16, 16, dtype=torch.long)
    t[0, :, 8:] = 1
    q, _ = edge_smoothing_targets(t, 2)
    loss = build_loss("ce", aux_weight=0, label_smoothing="edge")
    confident = torch.where(t[:, None] == torch.arange(2)[None, :, None, None], 8.0, -8.0)
    soft = torch.log(q.clamp_min(1e-4))  # logits whose softmax is the target itself
    assert loss(soft, t) < loss(confident, t)  # over-confidence at the border costs more than matching q


def test_lovasz_alone_cannot_be_smoothed():
    with pytest.raises(ValueError, match="lovasz alone"):
        build_loss("lovasz", label_smoothing="edge")


# ---- classes missing from a batch or from the validation set ------------------------------------


@pytest.mark.parametrize("name", ["ce", "focal", "lovasz", "focal+lovasz"])
@pytest.mark.parametrize("smoothing", ["none", "edge"])
def test_losses_finite_when_a_class_is_missing(name, smoothing):
    if name == "lovasz" and smoothing == "edge":
        pytest.skip("not a valid combination")
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 24, 24, requires_grad=True)
    t = torch.randint(0, 3, (2, 24, 24))  # class 3 never appears
    t[0, :4] = IGNORE
    loss = build_loss(name, aux_weight=0.2, label_smoothing=smoothing)({"out": logits, "aux": logits}, t)
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert torch.isfinite(logits.grad).all()
    # and a batch of ignored pixels only
    empty = build_loss(name, aux_weight=0.2, label_smoothing=smoothing)(logits, torch.full((2, 24, 24), IGNORE))
    assert empty.item() == 0.0


def test_absent_class_is_reported_not_zero():
    cm = ConfusionMatrix(4)
    label = np.array([0, 0, 1, 1, 2, 2], np.uint8)
    pred = np.array([0, 3, 1, 1, 2, 2], np.uint8)  # class 3 predicted once, absent from the labels
    cm.update(pred, label)
    res = cm.compute()
    assert res["absent"] == [3]
    assert res["iou"][3] == 0.0  # the contract's metric: a false positive of an absent class
    table = cm.table()
    assert "absent" in table.splitlines()[4] and "0.0000" not in table.splitlines()[4]
    assert "absent: coix" in table
    kept = exclude_absent(res)
    assert math.isnan(kept["iou"][3]) and kept["mIoU"] == pytest.approx(np.mean(res["iou"][1:3]))


def test_training_log_says_absent(tmp_path):
    """A validation split without class 3: the log says 'absent', never NaN or 0, and mIoU ignores it."""
    import csv

    root = make_tiles(tmp_path, n_train=8, n_val=2, num_classes=4)
    rows = list(csv.DictReader(open(root / "train" / "tiles.csv")))
    from cropmap.raster import read_png, write_png

    for r in rows:  # relabel class 3 as 2 in the validation tiles
        if r["split"] == "val":
            p = root / "train" / "label" / r["name"]
            lab = read_png(p)
            lab[lab == 3] = 2
            write_png(p, lab)
    args = engine.get_args_parser().parse_args(tiny_args(root, "--epochs", "1", "--iters_per_epoch", "2"))
    row = engine.main(args)
    assert row["iou_coix"] == "absent"
    assert not math.isnan(row["mIoU"])
    log = (root / "model" / "deeplabv3_resnet18_t" / "log.csv").read_text()
    assert "absent" in log and "nan" not in log.split("\n")[1].split(",")[5:9]
    state = torch.load(root / "model" / "deeplabv3_resnet18_t_last.pth", weights_only=True)
    assert state["metrics"]["absent"] == [3]


# ---- learning-rate warm-up ------------------------------------------------------------------------


def test_warmup_then_poly():
    f = engine.lr_factor(100, 0.9, warmup_iters=10)
    assert f(0) == pytest.approx(0.1 * (1 - 0 / 100) ** 0.9)
    assert f(4) == pytest.approx(0.5 * (1 - 4 / 100) ** 0.9)
    assert f(9) == pytest.approx((1 - 9 / 100) ** 0.9)
    assert f(50) == pytest.approx(0.5**0.9)
    assert engine.lr_factor(100, 0.9)(0) == 1.0


def test_new_training_flags_run(tmp_path):
    root = make_tiles(tmp_path, n_train=8, n_val=2)
    args = engine.get_args_parser().parse_args(tiny_args(
        root, "--epochs", "1", "--iters_per_epoch", "2", "--warmup_iters", "4", "--color_jitter", "0.08",
        "--label_smoothing", "edge", "--loss", "focal+lovasz"))
    trainer = engine.Trainer(args)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 / 4)
    assert trainer.train_set.color_jitter == 0.08
    row = trainer.fit()
    assert math.isfinite(row["train_loss"])


def test_adamw_optimizer_flag(tmp_path):
    root = make_tiles(tmp_path, n_train=8, n_val=2)
    args = engine.get_args_parser().parse_args(tiny_args(root, "--epochs", "1", "--iters_per_epoch", "1",
                                                         "--optimizer", "adamw", "--base_lr", "0.001"))
    trainer = engine.Trainer(args)
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.fit()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert engine.Trainer(engine.get_args_parser().parse_args(tiny_args(root))).optimizer.__class__ is torch.optim.SGD


# ---- radiometric normalisation ------------------------------------------------------------------


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


def test_checkpoint_carries_training_tile_stats(tmp_path):
    root = make_tiles(tmp_path, n_train=8, n_val=2)
    args = engine.get_args_parser().parse_args(tiny_args(root, "--epochs", "1", "--iters_per_epoch", "1"))
    engine.main(args)
    state = torch.load(root / "model" / "deeplabv3_resnet18_t_last.pth", weights_only=True)
    stats = state["input_stats"]
    from cropmap.raster import read_png
    import csv

    rows = [r for r in csv.DictReader(open(root / "train" / "tiles.csv")) if r["split"] == "train"]
    pix = np.concatenate([read_png(root / "train" / "data" / r["name"])[read_png(root / "train" / "label" / r["name"]) != IGNORE]
                          for r in rows])
    np.testing.assert_allclose(stats["mean"], pix.mean(0), rtol=1e-9)
    np.testing.assert_allclose(stats["std"], pix.std(0), rtol=1e-9)
    for c in range(3):  # and the histograms that --radiometry histogram matches
        assert stats["hist"][c] == np.bincount(pix[:, c], minlength=256).tolist()


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


def test_tricks_bench_table_means_and_changes():
    """bench/tricks.py's table: per trick the mIoU of each seed, their mean and spread, the change against
    the baseline of the same seed, and the lowest crop IoU on test."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("bench_tricks", root / "bench" / "tricks.py")
    tricks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tricks)

    def cm(tp):  # diagonal confusion with one error row: IoU of class c = tp[c] / (tp[c] + 1)
        m = np.diag(tp).astype(np.int64)
        m[1, 0] += 1
        m[2, 0] += 1
        m[3, 0] += 1
        return m.tolist()

    base = {0: {"test": cm([9, 1, 3, 4]), "val": cm([9, 1, 1, 1])}, 1: {"test": cm([9, 3, 3, 4]), "val": cm([9, 1, 1, 1])}}
    jit = {0: {"test": cm([9, 3, 3, 4]), "val": cm([9, 1, 1, 1])}, 1: {"test": cm([9, 3, 3, 4]), "val": cm([9, 3, 1, 1])}}
    lines = tricks.summarize({"baseline": base, "jitter": jit}, [0, 1]).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| baseline |") and lines[3].startswith("| jitter |")
    m0 = (1 / 2 + 3 / 4 + 4 / 5) / 3  # crops tobacco, corn, coix of baseline seed 0
    m1 = (3 / 4 + 3 / 4 + 4 / 5) / 3
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert cells[1] == f"{m0:.3f}, {m1:.3f}" and cells[2] == f"{(m0 + m1) / 2:.3f} ({m1 - m0:.3f})" and cells[3] == "+0.000"
    assert cells[6] == f"{0.5:.3f}"  # tobacco of seed 0
    jcells = [c.strip() for c in lines[3].split("|")[1:-1]]
    assert jcells[3] == f"{(m1 - m0) / 2:+.3f}"  # seed 0 gains m1 - m0, seed 1 nothing
    v0, v1 = 0.5, (3 / 4 + 1 / 2 + 1 / 2) / 3
    assert jcells[5] == f"{(v1 - v0) / 2:+.3f}"


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
