"""The whole pipeline end to end on a tiny synthetic data set: every hand-off between the scripts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import run_pipeline
from cropmap.raster import read_png

SRC = "jingwei_round1_test_a_20190619"


def test_pipeline_end_to_end(tmp_path):
    root = tmp_path / "data"
    args = run_pipeline.get_args_parser().parse_args([
        "--synthetic", "--data_root", str(root), "--size", "700", "--tile_size", "128", "--epochs", "1",
        "--unet_epochs", "1", "--iters_per_epoch", "2", "--batch_size", "2", "--crop_size", "96",
        "--unet_crop_size", "64", "--threads", "1", "--device", "cpu", "--quiet",
        "--max_hole", "500", "--tta_check", "flip", "--radiometry", "histogram",  # not the default: run it here too
    ])
    rows = run_pipeline.main(args)
    keys = [r["key"] for r in rows]
    models = [m for m, *_ in run_pipeline.MODELS]
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

    # bench/ensembles.py on the same run: its soft vote of all three models at power 1 is the pipeline's wsoft
    # stage (the same maps, scored by the same metric), and it leaves none of its own maps behind
    from bench import ensembles

    ens = ensembles.main(ensembles.get_args_parser().parse_args(
        ["--data_root", str(root), "--models", *models, "--powers", "1", "3"]))
    assert [(r["members"], r["power"]) for r in ens] == [
        (tuple(models), 1.0), (tuple(models), 3.0), (tuple(models[:2]), 1.0), (tuple(models[:2]), 3.0),
        ((models[0], models[2]), 1.0), ((models[0], models[2]), 3.0), (tuple(models[1:]), 1.0),
        (tuple(models[1:]), 3.0)]
    wsoft = rows[keys.index("wsoft")]
    assert ens[0]["val"] == wsoft["val"] and ens[0]["test"] == wsoft["test"]
    assert not list(submit.glob(f"*{ensembles.STAGE}*")) and not list((root / "val" / "submit").glob(f"*{ensembles.STAGE}*"))
