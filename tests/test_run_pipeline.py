"""run_pipeline.py: the whole pipeline end to end on a tiny synthetic data set (every hand-off between the
scripts), its defaults reaching the steps, and the choice of the final stage on validation data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import run_pipeline
from cropmap.core.budget import BUDGETS
from cropmap.core.errors import InputError
from cropmap.raster import read_png

SRC = "jingwei_round1_test_a_20190619"


def test_pipeline_end_to_end(tmp_path):
    root = tmp_path / "data"
    args = run_pipeline.get_args_parser().parse_args([
        "--synthetic", "--budget", "standard", "--data_root", str(root), "--size", "700", "--tile_size", "128", "--epochs", "1",
        "--unet_epochs", "1", "--iters_per_epoch", "2", "--batch_size", "2", "--crop_size", "96",
        "--unet_crop_size", "64", "--threads", "1", "--device", "cpu", "--quiet",
        "--max_hole", "500", "--tta_check", "flip", "--radiometry", "histogram",  # not the default: run it here too
    ])
    rows = run_pipeline.main(args)
    keys = [r["key"] for r in rows]
    models = BUDGETS["standard"]["models"]
    assert keys[0] == "plain" and keys[1:4] == models and keys[4] == f"{models[0]}_tta"
    assert keys[5:8] == ["vote", "wvote", "wsoft"]
    assert len(rows) == 13 and rows[-1]["stage"].startswith("final map")
    assert keys[8:12] == [f"{keys[8].rsplit('_', 1)[0]}_{m}" for m in ("morph", "area", "close", "segments")]
    candidates = [r for r in rows[:-1] if r["candidate"]]
    # the final stage is the best candidate on validation; the best single model is one of the candidates
    assert rows[-1]["val"] == max(r["val"] for r in candidates)
    assert rows[-1]["val"] >= max(r["val"] for r in rows if r["key"] in models)
    final_key = rows[-1]["key"]

    submit = root / "submit"
    tp, fp, fn = np.zeros(4, np.int64), np.zeros(4, np.int64), np.zeros(4, np.int64)
    for image in ("image_3", "image_4"):
        src = read_png(root / SRC / f"{image}.png")
        label = read_png(root / SRC / f"{image}_label.png")
        final = read_png(submit / f"{image}_predict.png")  # the contract's name for the final map
        assert final.shape == label.shape and final.dtype == np.uint8 and final.max() < 4
        assert (final[src[..., 3] == 0] == 0).all()
        np.testing.assert_array_equal(final, read_png(submit / f"{image}_predict_{final_key}.png"))
        picture = read_png(submit / f"{image}_predict_errors.png")  # the final map and its errors, legends under
        assert picture.ndim == 3 and picture.shape[0] > 30 and picture.shape[1] > 2 * 30
        # the equal vote is the per-pixel majority of the three models, ties to the most trusted (the first):
        # with three voters that is the second's class where the last two agree, else the first's
        a, b, c = (read_png(submit / f"{image}_predict_{m}.png") for m in models)
        np.testing.assert_array_equal(read_png(submit / f"{image}_predict_vote.png"), np.where(b == c, b, a))
        # every model's map names its checkpoint and the checkpoint's validation IoU
        side = json.loads((submit / f"{image}_predict_{models[0]}.json").read_text())
        assert Path(side["checkpoint"]).exists() and len(side["val_iou"]) == 4
        # the maps were made with the radiometric normalisation asked for (histogram matching)
        assert side["radiometry"]["method"] == "histogram" and len(side["radiometry"]["lut"]) == 3
        # adapted as the pipeline's defaults say: about 8 windows, the image's share 0.3, the first quarter of the layers
        assert side["adapt_bn"] > 0 and side["adapt_weight"] == 0.3 and side["adapt_depth"] == 0.25
        valid = (src[..., 3] == 255) & (label != 255)
        for c in range(4):  # counted here pixel class by pixel class, without the pipeline's metric
            tp[c] += np.sum(valid & (final == c) & (label == c))
            fp[c] += np.sum(valid & (final == c) & (label != c))
            fn[c] += np.sum(valid & (final != c) & (label == c))
    # the table's final row is the contract's metric on the final maps: IoU over both images' valid pixels
    union = tp + fp + fn
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    np.testing.assert_allclose(rows[-1]["iou"], iou, rtol=1e-12)
    crops = [iou[c] for c in (1, 2, 3) if union[c] > 0]
    assert rows[-1]["mIoU"] == pytest.approx(sum(crops) / len(crops), abs=1e-12)
    assert rows[-1]["test"] == rows[-1]["mIoU"]
    assert rows[-1]["mIoU_all"] == pytest.approx(np.mean(iou[union > 0]), abs=1e-12)
    # validation maps exist for every candidate, and never on the test images' pixels
    assert (root / "val" / "submit" / f"image_1_predict_{final_key}.png").exists()
    assert (root / "val" / SRC / "image_1_label.png").exists()
    saved = json.loads((submit / "scores" / "pipeline.json").read_text())
    assert saved["final"] == final_key and len(saved["stages"]) == len(rows)
    # every trained model left a checkpoint that loads without pickle
    for path in (root / "model").glob("*_best.pth"):
        ck = torch.load(path, weights_only=True)
        assert {"model", "args", "epoch", "optimizer", "metrics"} <= set(ck)
        assert ck["args"]["optimizer"] == "adamw" and ck["args"]["base_lr"] == 0.001  # the pipeline's defaults
        assert len(ck["input_stats"]["hist"]) == 3  # what the histogram matching maps onto
        assert ck["args"]["input_norm"] == "window" and ck["args"]["val_every"] == 3
    assert len(list((root / "model").glob("*_best.pth"))) == 3

    # experiments.ensembles on the same run: its soft vote of all three models at power 1 is the pipeline's wsoft
    # stage (the same maps, scored by the same metric), and it leaves none of its own maps behind
    from experiments import ensembles

    ens = ensembles.main(ensembles.get_args_parser().parse_args(
        ["--data_root", str(root), "--models", *models, "--powers", "1", "3"]))
    assert [(r["members"], r["power"]) for r in ens] == [
        (tuple(models), 1.0), (tuple(models), 3.0), (tuple(models[:2]), 1.0), (tuple(models[:2]), 3.0),
        ((models[0], models[2]), 1.0), ((models[0], models[2]), 3.0), (tuple(models[1:]), 1.0),
        (tuple(models[1:]), 3.0)]
    wsoft = rows[keys.index("wsoft")]
    assert ens[0]["val"] == wsoft["val"] and ens[0]["test"] == wsoft["test"]
    assert not list(submit.glob(f"*{ensembles.STAGE}*")) and not list((root / "val" / "submit").glob(f"*{ensembles.STAGE}*"))


def test_pipeline_defaults_reach_the_steps(tmp_path, monkeypatch):
    """The pipeline's small-budget defaults reach the scripts: AdamW at 1e-3 (0.03 with SGD), each window
    standardised on its own, validation every third epoch, DeepLabv3 6 epochs of 256-px crops and the U-Net 5
    of 96-px crops, no radiometric matching of the maps (the flag reaches them), test windows every 3/4 of their
    side; a stride wider than the windows is refused before any step runs."""
    import run_pipeline

    def commands_of(*flags):
        commands = []
        monkeypatch.setattr(run_pipeline, "run", commands.append)
        monkeypatch.setattr(run_pipeline, "copy_atomic", lambda src, dst: None)
        monkeypatch.setattr(run_pipeline, "final_pictures", lambda *a: None)  # no map to draw
        args = run_pipeline.get_args_parser().parse_args(["--data_root", str(tmp_path), "--quiet",
                                                          "--test_images", str(tmp_path / "t.png"), *flags,
                                                          *([] if "--budget" in flags else ["--budget", "standard"])])
        run_pipeline.main(args)
        return commands

    def value(cmd, flag):
        return cmd[cmd.index(flag) + 1]

    commands = commands_of()
    trains = [c for c in commands if "--train" in c]
    assert len(trains) == 3 and all(value(c, "--optimizer") == "adamw" and value(c, "--base_lr") == "0.001" for c in trains)
    predicts = [c for c in commands if c[0] == "predict.py"]
    assert all(value(c, "--input_norm") == "window" and value(c, "--val_every") == "3" for c in trains)
    assert all("--ema" not in c for c in trains)  # the last weights by default (the average did not help)
    assert all(value(c, "--ema") == "0.95" for c in commands_of("--ema", "0.95") if "--train" in c)
    swa = [c for c in commands_of("--models", "deeplabv3_swa", "unet", "--ema", "0.95") if "--train" in c]
    assert [c[0] for c in swa if "--ema" in c] == ["Unet_resnet34/train.py"]  # SWA keeps its own average
    # the demo's budget: DeepLabv3 6 epochs of 256-px crops, the U-Net 5 epochs of 96-px crops
    crops = {value(c, "--exp"): (value(c, "--epochs"), value(c, "--crop_size")) for c in trains}
    assert crops == {"demo_ce": ("6", "256"), "demo_focal": ("6", "256"), "demo_unet": ("5", "96")}
    assert predicts and all(value(c, "--radiometry") == "none" for c in predicts)
    # every model's maps with the 8 flips and rotations (validation and test alike: the single rows and the votes
    # use them), the original's plain stitching without; no extra TTA stage unless --tta_check asks for another TTA
    models_maps = [c for c in predicts if value(c, "--name") != "plain"]
    assert len(models_maps) == 6 and all(value(c, "--tta") == "d4" for c in models_maps)
    assert "--tta" not in [c for c in predicts if value(c, "--name") == "plain"][0]
    assert all(value(c, "--tta") == "none" for c in commands_of("--tta", "none") if c[0] == "predict.py" and "--tta" in c)
    other = commands_of("--radiometry", "histogram", "--input_norm", "imagenet")
    assert all(value(c, "--input_norm") == "imagenet" for c in other if "--train" in c)
    matched = [c for c in other if c[0] == "predict.py"]
    assert matched and all(value(c, "--radiometry") == "histogram" for c in matched)
    windows = [c for c in commands if c[0] == "generate_test_data.py"]
    assert [value(c, "--stride") for c in windows[:2]] == ["192", "192"]  # validation and test; plain: 256
    sgd = [c for c in commands_of("--optimizer", "sgd", "--tile_size", "128") if "--train" in c]
    assert all(value(c, "--base_lr") == "0.03" for c in sgd)
    with pytest.raises(InputError, match="--stride 300"):
        commands_of("--stride", "300")


def test_final_stage_is_chosen_on_validation_only():
    import run_pipeline

    rows = [
        {"key": "m1", "val": 0.60, "test": 0.50, "candidate": True},
        {"key": "vote", "val": 0.65, "test": 0.40, "candidate": True},  # best on validation, worse on test
        {"key": "m2", "val": 0.55, "test": 0.90, "candidate": True},
        {"key": "plain", "val": None, "test": 0.99, "candidate": False},
    ]
    assert run_pipeline.choose(rows, "val")["key"] == "vote"  # test scores play no part
    assert run_pipeline.choose([r for r in rows if r["key"] != "vote"], "val")["key"] == "m1"
