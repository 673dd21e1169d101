"""score: a hand-computed confusion matrix over valid pixels, JSON output, and bad inputs."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from cropmap.raster import write_png
from cropmap.maps.scoring import score_dict, score_map

ROOT = Path(__file__).resolve().parents[1]


def make(tmp_path, h=40):
    """A label, a prediction and a source whose no-data rows hide some errors; h rows of 4 columns."""
    label = np.zeros((h, 4), np.uint8)
    pred = np.zeros((h, 4), np.uint8)
    label[:, 1] = 1
    pred[:, 1] = 1  # h correct tobacco
    label[:, 2] = 2
    pred[: h // 2, 2] = 2  # h/2 corn right, h/2 corn called other
    label[:, 3] = 3
    pred[:, 3] = 1  # every coix called tobacco
    label[0, 0] = 255  # ignored label pixel, predicted 3: not counted
    pred[0, 0] = 3
    alpha = np.full((h, 4), 255, np.uint8)
    alpha[-2:, :] = 0  # last two rows are no-data: not counted
    pred[-2:, :] = 0
    rgba = np.zeros((h, 4, 4), np.uint8)
    rgba[..., 3] = alpha
    for name, arr in (("pred", pred), ("label", label), ("src", rgba)):
        write_png(tmp_path / f"{name}.png", arr)
    return tmp_path / "pred.png", tmp_path / "label.png", tmp_path / "src.png"


def expected_confusion(h):
    n = h - 2  # counted rows
    cm = np.zeros((4, 4), np.int64)
    cm[0, 0] = n - 1  # column 0, minus the ignored pixel
    cm[1, 1] = n
    cm[2, 2] = h // 2
    cm[2, 0] = n - h // 2
    cm[3, 1] = n
    return cm


def test_score_hand_computed(tmp_path):
    h = 40
    cm = score_map(*make(tmp_path, h), progress=False)
    want = expected_confusion(h)
    np.testing.assert_array_equal(np.asarray(cm.compute()["confusion"]), want)
    res = score_dict(cm)
    # IoU_c = TP / (TP + FP + FN)
    iou0 = 37 / (37 + 18)
    iou1 = 38 / (38 + 38)
    iou2 = 20 / (20 + 18)
    assert math.isclose(res["iou"][0], iou0)
    assert math.isclose(res["iou"][1], iou1) and math.isclose(res["iou"][2], iou2) and res["iou"][3] == 0
    assert math.isclose(res["mIoU"], (iou1 + iou2 + 0) / 3)
    assert math.isclose(res["mIoU_all"], (iou0 + iou1 + iou2 + 0) / 4)


def test_score_streams_many_strips(tmp_path, monkeypatch):
    import cropmap.maps.scoring as scoring

    monkeypatch.setattr(scoring, "strip_rows", lambda w, **_: 7)  # many uneven strips
    h = 101
    cm = score_map(*make(tmp_path, h), progress=False)
    np.testing.assert_array_equal(np.asarray(cm.compute()["confusion"]), expected_confusion(h))


def _cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "score.py"), "--quiet", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_json_and_print(tmp_path):
    pred, label, src = make(tmp_path)
    r = _cli("--pred", str(pred), "--label", str(label), "--source", str(src), "--json", str(tmp_path / "s.json"))
    assert r.returncode == 0, r.stderr
    assert "mIoU" in r.stdout and "confusion" in r.stdout
    res = json.loads((tmp_path / "s.json").read_text())
    assert set(res) == {"iou", "mIoU", "mIoU_all", "confusion"}
    assert res["confusion"] == expected_confusion(40).tolist()


def test_cli_bad_inputs(tmp_path):
    pred, label, src = make(tmp_path)
    write_png(tmp_path / "small.png", np.zeros((5, 4), np.uint8))
    bad = np.zeros((40, 4), np.uint8)
    bad[3, 3] = 7
    write_png(tmp_path / "badlabel.png", bad)
    for args, name in (
        (["--pred", str(tmp_path / "small.png"), "--label", str(label), "--source", str(src)], "small.png"),
        (["--pred", str(pred), "--label", str(tmp_path / "badlabel.png"), "--source", str(src)], "badlabel.png"),
        (["--pred", str(pred), "--label", str(tmp_path / "missing.png")], "missing.png"),
    ):
        r = _cli(*args)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and name in r.stderr
