"""Prediction straight from the source image, the window groups and shares, and predict.py under torchrun."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cropmap.train.checkpoint import save_checkpoint
from cropmap.core.cli import run_cli
from cropmap.core.errors import InputError
from cropmap.predict.inference import assign_images, predict_from_source, predict_image
from cropmap.core.layout import TEST_SOURCE_DIR, prob_paths
from cropmap.raster import read_png, write_png
from cropmap.data.tiling import grid_positions
from cropmap.predict.windows import batch_bounds, group_rows, share_groups
from _small_data import fake_checkpoints
from test_predict import NUM_CLASSES, expected, make_source, oracle, write_windows

ROOT = Path(__file__).resolve().parents[1]


def same_files(a, b) -> bool:
    return Path(a).read_bytes() == Path(b).read_bytes()


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


def test_groups_batches_and_shares():
    assert group_rows([0, 10, 20, 30, 40], columns=3, batch_size=8) == [[0, 10, 20], [30, 40]]
    assert group_rows([0, 10, 20], columns=20, batch_size=8) == [[0], [10], [20]]
    assert batch_bounds(10, 4) == [(0, 4), (4, 7), (7, 10)]  # near-equal, never a batch of 2
    assert batch_bounds(0, 4) == [] and batch_bounds(3, 8) == [(0, 3)]
    assert assign_images([100, 300, 200, 50], 2) == [[1, 3], [0, 2]]
    rng = np.random.default_rng(0)
    for _ in range(50):
        height = int(rng.integers(10, 400))
        tile = int(rng.integers(4, 64))
        stride = int(rng.integers(1, tile + 1))
        ys = grid_positions(height, tile, stride)
        groups = group_rows(ys, int(rng.integers(1, 5)), int(rng.integers(1, 9)))
        world = int(rng.integers(1, 6))
        covered = np.zeros(height, int)
        for r in range(world):
            mine, (start, stop) = share_groups(groups, tile, height, r, world)
            covered[start:stop] += 1
            rows_run = [y for g in mine for y in g]
            # every window row that covers one of this share's rows is run, in whole groups, in order
            need = [y for y in ys if y < stop and y + tile > start] if start < stop else []
            assert set(need) <= set(rows_run) and rows_run == sorted(rows_run)
            assert all(list(g) in [list(x) for x in groups] for g in mine)
        assert (covered == 1).all()


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


def test_spooled_rows_reach_the_writer_as_one_process_writes_them(tmp_path, monkeypatch):
    """Processes 1..N-1 spool their strips; the first replays them with the same writes, in the same order
    (so that the encoded file is byte for byte one process's, whatever the format's chunking)."""
    import cropmap.predict.outputs as outputs

    calls = []

    class Recorder:
        def __init__(self, path, width, height, channels=1, like=None, role="map"):
            self.path = Path(path)

        def write(self, strip):
            calls.append((self.path.name, strip.shape, int(strip.sum())))

        def close(self):
            return self.path

        def abort(self):
            pass

    monkeypatch.setattr(outputs, "open_writer", Recorder)
    rng = np.random.default_rng(0)
    strips = [(y, torch.from_numpy(rng.integers(0, 4, (h, 9), dtype=np.uint8)),
               torch.from_numpy(rng.integers(0, 256, (2, h, 9), dtype=np.uint8)))
              for y, h in [(0, 5), (5, 3), (8, 7), (15, 1), (16, 4)]]
    one = outputs.MapOutputs(tmp_path / "m.png", 9, 20, num_classes=2, save_probs=True)
    for s in strips:
        one(*s)
    one.close()
    def per_file(records):
        return {name: [c for c in records if c[0] == name] for name in sorted({c[0] for c in records})}

    expected, calls[:] = per_file(calls), []
    first = outputs.MapOutputs(tmp_path / "m.png", 9, 20, num_classes=2, save_probs=True)
    second = outputs.MapOutputs(tmp_path / "m.png", 9, 20, num_classes=2, save_probs=True, spool_rank=1)
    for s in strips[:2]:
        first(*s)
    for s in strips[2:]:
        second(*s)
    second.close()
    assert outputs.spool_path(tmp_path / "m_prob1.png", 1).exists()
    first.append_spools([(1, 8)])
    first.close()
    assert per_file(calls) == expected and len(expected) == 3  # per file, the same strips in the same order
    assert not list(tmp_path.glob(".*"))  # the spools are gone
