"""predict.py, the script: the contract's file names and sidecar, --radiometry histogram, a test image read
from its source when it has no windows, and several processes under torchrun writing one process's files."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _oracle import NUM_CLASSES, expected, make_source, oracle, same_files, write_windows
from _small_data import fake_checkpoints
from cropmap.core.cli import run_cli
from cropmap.core.layout import TEST_SOURCE_DIR, prob_paths
from cropmap.raster import read_png, write_png
from cropmap.train.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


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


def fake_checkpoint(monkeypatch, model=oracle):
    fake_checkpoints(monkeypatch, model, path="fake.pth")


def test_predict_cli_reads_the_source_without_windows(tmp_path, monkeypatch, capsys):
    """No test/tiles.csv: predict.py reads the layout's source image; --source names the map after the file."""
    import predict

    fake_checkpoint(monkeypatch)
    source, label, alpha = make_source(tmp_path, 90, 110)
    layout_source = tmp_path / TEST_SOURCE_DIR / "image_3.png"
    layout_source.parent.mkdir()
    shutil.move(source, layout_source)
    parse = predict.get_args_parser().parse_args
    predict.main(parse(["--data_root", str(tmp_path), "--images", "image_3", "--tile_size", "48", "--quiet",
                        "--device", "cpu"]))
    np.testing.assert_array_equal(read_png(tmp_path / "submit" / "image_3_predict.png"), expected(label, alpha))
    assert "source" in capsys.readouterr().out
    predict.main(parse(["--source", str(layout_source), "--output_dir", str(tmp_path / "o"), "--name", "x",
                        "--tile_size", "32", "--stride", "20", "--quiet", "--device", "cpu", "--preview_size", "0"]))
    np.testing.assert_array_equal(read_png(tmp_path / "o" / "image_3_predict_x.png"), expected(label, alpha))
    assert not (tmp_path / "o" / "image_3_predict_x_preview.png").exists()
    # an image with neither windows nor a source: one line, exit 2
    args = parse(["--data_root", str(tmp_path), "--images", "image_9", "--quiet", "--device", "cpu"])
    assert run_cli(predict.main, args) == 2
    err = capsys.readouterr().err.strip()
    assert "image_9.png: file not found" in err and "\n" not in err


def test_torchrun_two_processes_write_the_same_maps(tmp_path):
    """predict.py under torchrun, 2 gloo processes: one image shared by rows, and two images one each; every
    file byte for byte the single process's (a real DeepLabv3 checkpoint, random weights, BatchNorm adapted)."""
    from models import build_model

    root = tmp_path / "data"
    folder = root / TEST_SOURCE_DIR
    folder.mkdir(parents=True)
    for name, (h, w, seed) in {"image_3": (260, 700, 1), "image_4": (90, 130, 2)}.items():
        make_source(tmp_path, h, w, seed=seed)
        shutil.move(tmp_path / "image_3.png", folder / f"{name}.png")
    torch.manual_seed(0)
    model = build_model("deeplabv3", "resnet18", num_classes=NUM_CLASSES, aux=False)
    flags = {"model": "deeplabv3", "backbone": "resnet18", "num_classes": NUM_CLASSES, "output_stride": 16}
    ckpt = save_checkpoint({"model": model.state_dict(), "args": flags, "epoch": 0, "optimizer": {}, "metrics": {}},
                           root / "model" / "t_best.pth")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    common = ["--data_root", str(root), "--checkpoint", str(ckpt), "--tile_size", "64", "--stride", "32",
              "--batch_size", "3", "--device", "cpu", "--threads", "1", "--quiet", "--save_probs",
              "--adapt_bn", "6"]  # every process adapts BatchNorm to the same windows of the whole image

    def run(out, images, processes):
        launch = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                      str(processes)] if processes > 1 else [])
        proc = subprocess.run([*launch, "predict.py", *common, "--output_dir", str(out), "--images", *images],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    run(tmp_path / "one", ["image_3", "image_4"], 1)
    out = run(tmp_path / "shared", ["image_3"], 2)
    assert "2 processes" in out and out.count("image_3:") == 1  # the first process reports the shared image
    run(tmp_path / "whole", ["image_3", "image_4"], 2)
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert "image_3_predict.png" in files and "image_4_predict_prob3.png" in files
    for name in files:
        if name.startswith("image_3"):
            assert same_files(tmp_path / "one" / name, tmp_path / "shared" / name), name
        assert same_files(tmp_path / "one" / name, tmp_path / "whole" / name), name
    assert not list((tmp_path / "shared").glob(".*")) and not list((tmp_path / "whole").glob(".*"))
    assert len(np.unique(read_png(tmp_path / "one" / "image_3_predict.png"))) > 1
    assert set(prob_paths(tmp_path / "one" / "image_3_predict.png", NUM_CLASSES)) <= set((tmp_path / "one").iterdir())
