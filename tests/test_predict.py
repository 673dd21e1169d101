"""Stitching through predict.py's pipeline: an oracle model must reproduce the label exactly."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from cropmap.core.errors import InputError
from cropmap.raster import read_png, write_png
from cropmap.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from cropmap.predict.inference import predict_image
from cropmap.core.layout import prob_paths, window_folder
from cropmap.predict.stitch import BandStitcher, PreviewCanvas, weight_window
from cropmap.data.tiling import iter_tiles

from _small_data import fake_checkpoints

NUM_CLASSES = 4
STEP = 60  # the source's red channel is label * STEP, so an oracle can read the label back


def make_source(tmp_path: Path, h: int, w: int, seed: int = 0, nodata: bool = True):
    """A source RGBA image whose red channel encodes a blocky label; a no-data corner and a hole."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, NUM_CLASSES, (h // 7 + 1, w // 7 + 1))
    label = np.kron(coarse, np.ones((7, 7), np.int64))[:h, :w].astype(np.uint8)
    alpha = np.full((h, w), 255, np.uint8)
    if nodata:
        alpha[: h // 3, : w // 4] = 0  # a no-data corner
        alpha[h // 2 : h // 2 + 3, w // 2 : w // 2 + 5] = 0  # a small no-data hole
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 0] = label * STEP
    rgba[..., 1] = rng.integers(0, 256, (h, w))
    rgba[..., 3] = alpha
    rgba[alpha == 0, :3] = 0
    path = tmp_path / "image_3.png"
    write_png(path, rgba)
    return path, label, alpha


def write_windows(tmp_path: Path, source: Path, tile: int, stride: int, image: str = "image_3"):
    """Cut test windows per the contract's layout; returns (rows, tile folder)."""
    folder = tmp_path / "test" / window_folder(image)
    folder.mkdir(parents=True, exist_ok=True)
    h, w = read_png(source).shape[:2]
    rows = []
    for t in iter_tiles(source, tile, stride, image=image):
        valid = int(t.valid.sum())
        if valid == 0:
            continue
        write_png(folder / t.name, t.rgba)
        rows.append(dict(name=t.name, image=image, y=t.y, x=t.x, size=tile, valid_pixels=valid, height=h, width=w))
    with open(tmp_path / "test" / "tiles.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    return rows, folder


def oracle(x: torch.Tensor) -> dict:
    """Reads the label back from the normalised red channel and returns its one-hot logits."""
    red = (x[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255
    cls = torch.round(red / STEP).long().clamp(0, NUM_CLASSES - 1)
    onehot = torch.nn.functional.one_hot(cls, NUM_CLASSES).permute(0, 3, 1, 2).float()
    return {"out": onehot * 20.0, "aux": onehot}


def expected(label, alpha):
    return np.where(alpha == 255, label, 0).astype(np.uint8)


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


@pytest.mark.parametrize("where", ["windows", "source"])
def test_histogram_radiometry_restores_the_training_rendering(tmp_path, monkeypatch, where):
    """The test image is the training rendering through another tone curve and gain (red 180 -> 125): the
    oracle misreads it as it is, and reads the label back exactly after --radiometry histogram, with the
    training histograms from the checkpoint; the sidecar records the look-up table."""
    import json

    import predict
    from cropmap.data.radiometry import ChannelStats

    source, label, alpha = make_source(tmp_path, 80, 100)
    train = read_png(source)
    stats = ChannelStats()
    stats.update(train[..., :3][alpha == 255])
    shifted = train.copy()
    x = train[..., :3].astype(np.float64) / 255
    shifted[..., :3] = np.where(alpha[..., None] == 255, np.rint(255 * 0.8 * x ** 1.4), 0).astype(np.uint8)
    write_png(source, shifted)
    if where == "windows":
        write_windows(tmp_path, source, 32, 24)
    fake_checkpoints(monkeypatch, oracle, state={"input_stats": stats.as_dict()})
    images = ["--images", "image_3"] if where == "windows" else ["--source", str(source)]
    for radiometry in ("none", "histogram"):
        args = predict.get_args_parser().parse_args(
            ["--data_root", str(tmp_path), *images, "--name", radiometry, "--workers", "0", "--quiet",
             "--device", "cpu", "--tile_size", "32", "--stride", "24", "--radiometry", radiometry])
        predict.main(args)
    got = read_png(tmp_path / "submit" / "image_3_predict_histogram.png")
    np.testing.assert_array_equal(got, expected(label, alpha))
    assert (read_png(tmp_path / "submit" / "image_3_predict_none.png") != expected(label, alpha)).mean() > 0.2
    side = json.loads((tmp_path / "submit" / "image_3_predict_histogram.json").read_text())
    assert side["radiometry"]["method"] == "histogram" and len(side["radiometry"]["lut"]) == 3


def test_missing_window_is_an_input_error(tmp_path):
    source, _, _ = make_source(tmp_path, 64, 64)
    rows, folder = write_windows(tmp_path, source, 32, 32)
    (folder / rows[-1]["name"]).unlink()
    out = tmp_path / "m.png"
    with pytest.raises(InputError, match=rows[-1]["name"]):
        predict_image(oracle, rows, folder, out, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".m.png*"))


def test_predict_cli_end_to_end(tmp_path, monkeypatch):
    """predict.main with a checkpoint-loading stub replaced by the oracle: writes the contract's file names."""
    import predict

    source, label, alpha = make_source(tmp_path, 80, 100)
    write_windows(tmp_path, source, 32, 24)

    fake_checkpoints(monkeypatch, oracle, path="fake.pth", state={
        "epoch": 2, "metrics": {"iou": [1.0, 0.9, 0.8, float("nan")], "mIoU": 0.85, "absent": [3]}})
    args = predict.get_args_parser().parse_args(
        ["--data_root", str(tmp_path), "--images", "image_3", "--name", "oracle", "--workers", "0", "--quiet", "--save_probs",
         "--device", "cpu"]
    )
    predict.main(args)
    out = tmp_path / "submit" / "image_3_predict_oracle.png"
    np.testing.assert_array_equal(read_png(out), expected(label, alpha))
    assert (tmp_path / "submit" / "image_3_predict_oracle_preview.png").exists()
    assert (tmp_path / "submit" / "image_3_predict_oracle_prob3.png").exists()
    # the sidecar names the checkpoint and its validation scores (vote.py --weights auto reads it)
    import json

    side = json.loads((tmp_path / "submit" / "image_3_predict_oracle.json").read_text())
    assert side["checkpoint"].endswith("fake.pth") and side["val_iou"] == [1.0, 0.9, 0.8, None]
    assert side["val_absent"] == [3] and side["val_mIoU"] == 0.85 and side["image"] == "image_3"
    assert side["radiometry"] is None  # the checkpoint has no training statistics: the pixels are used as they are
