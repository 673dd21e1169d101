"""Weighted ensembling (cropmap.maps.ensemble): sidecars naming the checkpoint, per-class weights, the weighted
vote (also through vote.py --weights), validation images."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cropmap.maps import ensemble
from cropmap.core.errors import InputError
from cropmap.raster import read_png, write_png
from cropmap.core.metrics import ConfusionMatrix
from cropmap.maps.postprocess import vote_strip

ROOT = Path(__file__).resolve().parents[1]


def miou(pred, label):
    cm = ConfusionMatrix(4)
    cm.update(pred, label)
    return cm.compute()["mIoU"]


def constructed_case(seed=0, h=60, w=80):
    """A label and three maps: A right on 90% of the pixels (errors scattered), B and C weak and wrong
    together on a large block, so that an equal vote follows them there."""
    rng = np.random.default_rng(seed)
    label = np.repeat(np.repeat(rng.integers(0, 4, (h // 10, w // 10)), 10, 0), 10, 1).astype(np.uint8)
    a = label.copy()
    flip = rng.random(label.shape) < 0.1
    a[flip] = rng.integers(0, 4, int(flip.sum()))
    b = rng.integers(0, 4, label.shape).astype(np.uint8)
    c = rng.integers(0, 4, label.shape).astype(np.uint8)
    block = (slice(0, h // 2), slice(0, w // 2))
    wrong = ((label[block] + 1) % 4).astype(np.uint8)
    b[block] = wrong
    c[block] = wrong
    return label, np.stack([a, b, c])


def per_class_iou(pred, label):
    cm = ConfusionMatrix(4)
    cm.update(pred, label)
    return cm.compute()["iou"]


def test_equal_vote_loses_to_its_best_input_weighted_vote_does_not():
    label, maps = constructed_case()
    best = max(miou(m, label) for m in maps)
    assert miou(maps[0], label) == best
    assert miou(vote_strip(maps, 4), label) < best - 0.1  # the failure: B and C outvote A
    scores = np.stack([per_class_iou(m, label) for m in maps])  # "validation" IoU per model and class
    weighted = vote_strip(maps, 4, weights=ensemble.normalise_weights(scores))
    assert miou(weighted, label) >= best


@pytest.mark.parametrize("seed", range(5))
def test_dominant_model_decides_every_pixel(seed):
    """When one model's normalised weight exceeds 1/2 for every class, no coalition can outvote it."""
    rng = np.random.default_rng(seed)
    maps = rng.integers(0, 4, (3, 20, 30)).astype(np.uint8)
    maps[2] = maps[1]  # the other two always agree
    scores = np.array([[0.9, 0.8, 0.7, 0.75], [0.5, 0.45, 0.5, 0.4], [0.45, 0.5, 0.4, 0.5]])
    w = ensemble.normalise_weights(scores, power=4)
    assert (w[0] > 0.5).all()
    np.testing.assert_array_equal(vote_strip(maps, 4, weights=w), maps[0])
    probs = np.stack([np.eye(4, dtype=np.uint8)[m].transpose(2, 0, 1) * 255 for m in maps])
    np.testing.assert_array_equal(vote_strip(maps, 4, probs=probs, weights=w), maps[0])


def test_weights_are_normalised_per_class():
    w = ensemble.normalise_weights(np.array([[0.8, 0.2, 0.0], [0.4, 0.2, 0.0]]))
    np.testing.assert_allclose(w.sum(0), 1.0)
    np.testing.assert_allclose(w[:, 0], [2 / 3, 1 / 3])
    np.testing.assert_allclose(w[:, 2], [0.5, 0.5])  # every model failed on the class: equal say
    np.testing.assert_allclose(ensemble.normalise_weights(np.array([[0.8], [0.4]]), power=2)[:, 0], [0.8, 0.2])


def test_weighted_soft_scores_known_answer():
    maps = np.array([[[1]], [[2]]], np.uint8)
    probs = np.zeros((2, 3, 1, 1), np.uint8)
    probs[0, :, 0, 0] = [0, 200, 55]
    probs[1, :, 0, 0] = [0, 55, 200]
    w = np.array([[1, 0.75, 0.5], [1, 0.25, 0.5]], np.float32)
    s = ensemble.weighted_scores(maps, w, probs)
    np.testing.assert_allclose(s[:, 0, 0], [0, 200 * 0.75 + 55 * 0.25, 55 * 0.5 + 200 * 0.5])
    assert vote_strip(maps, 3, probs=probs, weights=w)[0, 0] == 1


def sidecar(path, iou, miou_value, absent=()):
    ensemble.write_sidecar(path, {"map": str(path), "checkpoint": f"{path.stem}.pth", "val_iou": iou,
                                  "val_mIoU": miou_value, "val_absent": list(absent)})


def test_auto_weights_from_sidecars_fill_unmeasured_classes(tmp_path):
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    sidecar(paths[0], [0.9, 0.6, 0.8, None], 0.7, absent=[3])  # class 3 absent from a's validation set
    sidecar(paths[1], [0.9, 0.2, 0.4, 0.5], 0.366)
    w = ensemble.auto_weights(paths, 4)
    np.testing.assert_allclose(w[:, 1], [0.75, 0.25])
    np.testing.assert_allclose(w[:, 3], [0.7 / 1.2, 0.5 / 1.2], rtol=1e-6)  # a's mIoU stands in for class 3
    (tmp_path / "c.png").touch()
    with pytest.raises(InputError, match="sidecar"):
        ensemble.auto_weights([paths[0], tmp_path / "c.png"], 4)


def test_checkpoint_summary_marks_absent():
    state = {"args": {"model": "deeplabv3", "backbone": "resnet18", "exp": "x"}, "epoch": 3,
             "metrics": {"iou": [0.9, 0.5, float("nan"), 0.0], "mIoU": 0.25, "absent": [3]}}
    s = ensemble.checkpoint_summary("m.pth", state)
    assert s["val_iou"] == [0.9, 0.5, None, None] and s["val_absent"] == [3] and s["epoch"] == 3
    json.dumps(s)  # plain JSON


def _vote_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "vote.py"), "--quiet", *args], capture_output=True, text=True,
                          cwd=ROOT)


def test_vote_cli_weights_auto_and_name(tmp_path):
    label, maps = constructed_case(1)
    sub = tmp_path / "submit"
    for name, m in zip("abc", maps):
        write_png(sub / f"image_3_predict_{name}.png", m)
        sidecar(sub / f"image_3_predict_{name}.png", per_class_iou(m, label), miou(m, label))
    r = _vote_cli("--data_root", str(tmp_path), "--images", "image_3", "--weights", "auto", "--name", "wvote")
    assert r.returncode == 0, r.stderr
    out = sub / "image_3_predict_wvote.png"
    assert miou(read_png(out), label) >= miou(maps[0], label)
    side = json.loads((sub / "image_3_predict_wvote.json").read_text())
    assert side["weights_mode"] == "auto" and len(side["inputs"]) == 3 and len(side["weights"]) == 3
    # explicit weights, one per input
    r = _vote_cli("--data_root", str(tmp_path), "--images", "image_3", "--weights", "1,0,0", "--name", "only_a")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(read_png(sub / "image_3_predict_only_a.png"), maps[0])
    r = _vote_cli("--data_root", str(tmp_path), "--images", "image_3", "--weights", "1,2", "--name", "bad")
    assert r.returncode == 2 and "one per input" in r.stderr and "Traceback" not in r.stderr


def test_vote_cli_auto_without_sidecar_is_one_line_error(tmp_path):
    for n in "ab":
        write_png(tmp_path / f"{n}.png", np.zeros((4, 4), np.uint8))
    r = _vote_cli("--inputs", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--output", str(tmp_path / "o.png"),
                  "--weights", "auto")
    assert r.returncode == 2 and "sidecar" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.png").exists()


# ---- validation images ------------------------------------------------------------------------------


def test_val_image_keeps_only_validation_tiles(tmp_path):
    rng = np.random.default_rng(0)
    h, w = 70, 90
    rgba = rng.integers(1, 256, (h, w, 4)).astype(np.uint8)
    rgba[..., 3] = 255
    rgba[:5, :5] = 0  # a no-data corner (RGB 0)
    label = rng.integers(0, 4, (h, w)).astype(np.uint8)
    write_png(tmp_path / "image_1.png", rgba)
    write_png(tmp_path / "image_1_label.png", label)
    rows = [{"image": "image_1", "y": 0, "x": 0, "size": 32, "split": "val"},
            {"image": "image_1", "y": 32, "x": 58, "size": 32, "split": "val"},
            {"image": "image_1", "y": 0, "x": 32, "size": 32, "split": "train"},
            {"image": "image_2", "y": 0, "x": 0, "size": 32, "split": "val"}]
    rects = ensemble.val_rectangles(rows, "image_1")
    assert rects.tolist() == [[0, 0, 32], [32, 58, 32]]
    share = ensemble.write_val_image(tmp_path / "image_1.png", tmp_path / "image_1_label.png", rects,
                                     tmp_path / "v.png", tmp_path / "v_label.png")
    out, lab = read_png(tmp_path / "v.png"), read_png(tmp_path / "v_label.png")
    keep = np.zeros((h, w), bool)
    keep[:32, :32] = True
    keep[32:64, 58:90] = True
    keep[:5, :5] = False
    np.testing.assert_array_equal(out[..., 3], np.where(keep, 255, 0))
    np.testing.assert_array_equal(out[keep], rgba[keep])
    assert (out[~keep] == 0).all()
    np.testing.assert_array_equal(lab, np.where(keep, label, 0))
    assert share == pytest.approx(keep.mean())
