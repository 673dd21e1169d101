"""Bad input is refused before work starts, with one line; nothing half-written is left (issue 11).

One section per problem the issue lists; each test failed on the code before the fix. Scripts run
in-process through ``run_cli`` (see ``_small_data.run_script``); ``capfd`` also sees what C libraries print.
"""

from __future__ import annotations

import os
import shutil
import signal
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from _small_data import (TEST_SRC, TRAIN_SRC, assert_one_error, assert_parse_error, error_lines, fake_checkpoints,
                         make_layout, make_source, run_script)
from cropmap.core import cli
from cropmap.train import engine
from cropmap.core.cli import run_cli, typed_flags
from cropmap.core.errors import InputError
from cropmap.core.device import select_device
from cropmap.core.files import atomic_path
from cropmap.raster import raster_info, read_png, write_png
from cropmap.data.tiling import read_tiles_csv


TILES = dict(n_train=8, n_val=2, size=32)  # the module's shared training tiles (conftest.py: tiles, data_root)


def train_argv(root: Path, *extra: str) -> list[str]:
    """A quick CPU run: ResNet-18, 32-pixel crops, one iteration per epoch."""
    return ["--train", "--data_root", str(root), "--backbone", "resnet18", "--device", "cpu", "--workers", "0",
            "--threads", "1", "--quiet", "--batch_size", "2", "--crop_size", "32", "--iters_per_epoch", "1",
            "--scale_min", "1", "--scale_max", "1", *extra]


def no_partials(root: Path) -> bool:
    return not [p for p in Path(root).rglob("*.part")]


# ---- 1. --resume takes the run's flags from the checkpoint ----------------------------------------


def test_parser_records_typed_flags_even_at_their_default():
    import train_swa

    args = engine.get_args_parser().parse_args(["--epochs", "20", "--amp"])  # 20 is the default
    assert typed_flags(args) == {"epochs", "amp"}
    swa = train_swa.get_args_parser().parse_args(["--swa_lr", "0.1", "--crop_size", "64"])  # parents= keeps it
    assert typed_flags(swa) == {"swa_lr", "crop_size"}
    assert "_typed_flags" not in cli.plain_flags(args)
    resume = next(a for a in engine.get_args_parser()._actions if a.dest == "resume")
    for flag in engine.RESUME_MAY_CHANGE:  # --help lists what a resumed run may change
        assert f"--{flag}," in resume.help or f"--{flag} " in resume.help, flag


def test_resume_continues_the_run_without_retyping(data_root, capfd):
    root = data_root()
    rc, _, err = run_script("train", train_argv(root, "--epochs", "1", "--exp", "k", "--base_lr", "0.02"), capfd)
    assert rc == 0, err
    last = root / "model" / "deeplabv3_resnet18_k_last.pth"
    # only where to resume from, how long, and the machine: everything else comes from the checkpoint
    machine = ["--device", "cpu", "--workers", "0", "--threads", "1", "--quiet"]
    rc, out, err = run_script("train", ["--train", "--resume", str(last), "--epochs", "2", *machine], capfd)
    assert rc == 0, err
    assert "training deeplabv3_resnet18_k" in out and "resumed from" in out
    state = torch.load(last, weights_only=True)
    assert state["epoch"] == 2
    saved = state["args"]
    assert (saved["backbone"], saved["crop_size"], saved["batch_size"], saved["exp"], saved["base_lr"]) == \
        ("resnet18", 32, 2, "k", 0.02)
    assert saved["data_root"] == str(root) and saved["resume"] == str(last)
    assert sorted(p.name for p in (root / "model").glob("*.pth")) == [
        "deeplabv3_resnet18_k_best.pth", "deeplabv3_resnet18_k_epoch1.pth", "deeplabv3_resnet18_k_epoch2.pth",
        "deeplabv3_resnet18_k_last.pth"]
    # typed again with the checkpoint's value: accepted (nothing left to train at --epochs 2)
    rc, out, err = run_script("train", ["--train", "--resume", str(last), "--crop_size", "32", *machine], capfd)
    assert rc == 0 and "nothing to train" in out, err
    # typed again with another value that would change the data or the model: refused, before any work
    for flag, value in (("--crop_size", "64"), ("--backbone", "resnet34"), ("--base_lr", "0.5")):
        rc, out, err = run_script("train", ["--train", "--resume", str(last), flag, value, *machine], capfd)
        assert_one_error(rc, err, f"{flag} ", "resumed run keeps")
        assert "training" not in out


# ---- 2. every numeric flag is range-checked at parse time; NaN losses stop training ------------


def test_range_types():
    import argparse

    for kind, good, bad in [
        (cli.positive_int, ["1", "512"], ["0", "-1", "1.5", "x", ""]),
        (cli.nonneg_int, ["0", "7"], ["-1", "nan"]),
        (cli.seed_int, ["0", str(2**32 - 1)], ["-1", str(2**32)]),
        (cli.num_classes_int, ["2", "255"], ["1", "256"]),
        (cli.positive_float, ["1e-9", "0.5"], ["0", "-0.1", "nan", "inf"]),
        (cli.nonneg_float, ["0", "3"], ["-1e-9", "nan", "-inf"]),
        (cli.finite_float, ["-3.5", "0"], ["nan", "inf", "x"]),
        (cli.fraction, ["0", "1", "0.25"], ["1.01", "-0.01", "nan"]),
        (cli.ranged(float, 0, 1, high_open=True), ["0", "0.99"], ["1", "1.5"]),
        (cli.positive_int_list, ["512,448", "32"], ["512,0", "", "a,b"]),
    ]:
        for text in good:
            kind(text)
        for text in bad:
            with pytest.raises(argparse.ArgumentTypeError, match=f"got {text!r}"):
                kind(text)
    assert cli.positive_int("12") == 12 and cli.fraction("0.5") == 0.5
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected a number in \[0, 1\), got '1'"):
        cli.ranged(float, 0, 1, high_open=True)("1")


@pytest.mark.parametrize("module,argv,flag", [
    ("train", ["--batch_size", "0"], "--batch_size"),
    ("train", ["--batch_size", "-3"], "--batch_size"),
    ("train", ["--base_lr", "nan"], "--base_lr"),
    ("train", ["--base_lr", "-1"], "--base_lr"),
    ("train", ["--base_lr", "inf"], "--base_lr"),
    ("train", ["--iters_per_epoch", "-1"], "--iters_per_epoch"),
    ("train", ["--iters_per_epoch", "0"], "--iters_per_epoch"),
    ("train", ["--momentum", "-1"], "--momentum"),
    ("train", ["--workers", "-1"], "--workers"),
    ("train", ["--threads", "-1"], "--threads"),
    ("train", ["--epochs", "0"], "--epochs"),
    ("train", ["--num_classes", "1"], "--num_classes"),
    ("train", ["--scales", "512,0"], "--scales"),
    ("train", ["--output_stride", "4"], "--output_stride"),
    ("train_swa", ["--swa_lr", "-1"], "--swa_lr"),
    ("train_swa", ["--swa_start", "0"], "--swa_start"),
    ("generate_train_data", ["--tile_size", "0"], "--tile_size"),
    ("generate_train_data", ["--stride", "0"], "--stride"),
    ("generate_train_data", ["--val_fraction", "1.5"], "--val_fraction"),
    ("generate_train_data", ["--val_fraction", "-0.2"], "--val_fraction"),
    ("generate_test_data", ["--tile_size", "-512"], "--tile_size"),
    ("fill_hole", ["--stride", "0"], "--stride"),
    ("fill_hole", ["--band_rows", "0"], "--band_rows"),
    ("fill_hole", ["--max_hole", "-1"], "--max_hole"),
    ("predict", ["--batch_size", "0"], "--batch_size"),
    ("predict", ["--workers", "-1"], "--workers"),
    ("score", ["--num_classes", "1"], "--num_classes"),
    ("vote", ["--num_classes", "300"], "--num_classes"),
    ("make_synthetic_data", ["--size", "0"], "--size"),
    ("run_pipeline", ["--epochs", "0"], "--epochs"),
    ("train", ["--color_jitter", "0.9"], "--color_jitter"),
    ("train", ["--acquisition_jitter", "0.5"], "--acquisition_jitter"),
    ("train", ["--warmup_iters", "-5"], "--warmup_iters"),
    ("train", ["--label_smoothing", "soft"], "--label_smoothing"),
    ("predict", ["--keep", "0"], "--keep"),
    ("predict", ["--radiometry", "auto"], "--radiometry"),
    ("fill_hole", ["--radius", "-1"], "--radius"),
    ("vote", ["--weight_power", "-1"], "--weight_power"),
    ("make_synthetic_data", ["--class_prob", "1,2"], "--class_prob"),
])
def test_flag_out_of_range_is_refused_at_parse_time(module, argv, flag, capfd):
    rc, _, err = run_script(module, argv, capfd)
    assert_parse_error(rc, err, flag)


def test_flags_that_do_not_go_together_are_refused_before_any_work(tmp_path, capfd):
    rc, _, err = run_script("train", ["--train", "--data_root", str(tmp_path / "none"), "--loss", "lovasz",
                                      "--label_smoothing", "edge"], capfd)
    assert_one_error(rc, err, "--label_smoothing edge", "lovasz")
    rc, _, err = run_script("predict", ["--data_root", str(tmp_path / "none"), "--keep", "64"], capfd)
    assert_one_error(rc, err, "--keep 64", "--blend centre")


def test_batch_size_one_is_refused_before_any_work(data_root, capfd):
    root = data_root()
    rc, out, err = run_script("train", train_argv(root, "--batch_size", "1"), capfd)
    assert_one_error(rc, err, "--batch_size 1", "at least 2")
    assert not (root / "model").exists() and "training" not in out


class Poison(engine.Hook):
    """Sets every weight to NaN after the first iteration of ``epoch``, as a diverging run would."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_iteration_end(self, trainer, epoch, iteration, loss):
        if epoch == self.epoch and iteration == 0:
            with torch.no_grad():
                for p in trainer.model.parameters():
                    p.fill_(float("nan"))


def test_nan_loss_stops_training_and_never_becomes_best(data_root, capfd):
    root = data_root()
    argv = train_argv(root, "--epochs", "3", "--iters_per_epoch", "2", "--exp", "nan")
    rc, out, err = run_script("cropmap.train.engine", argv, capfd, hooks=[Poison(epoch=1)])
    assert_one_error(rc, err, "epoch 2", "loss became nan", "--base_lr")
    model = root / "model"
    best = torch.load(model / "deeplabv3_resnet18_nan_best.pth", weights_only=True)
    last = torch.load(model / "deeplabv3_resnet18_nan_last.pth", weights_only=True)
    assert best["epoch"] == last["epoch"] == 1  # epoch 2 saved nothing
    assert all(torch.isfinite(v).all() for v in best["model"].values() if v.is_floating_point())
    assert no_partials(model)


# ---- 3. output folders are checked before any work -----------------------------------------------


def test_training_refuses_an_unwritable_model_folder_before_training(data_root, capfd):
    root = data_root()
    (root / "model").write_text("a file where the model folder goes")
    rc, out, err = run_script("train", train_argv(root), capfd)
    assert_one_error(rc, err, "model", "is a file")
    assert "training" not in out  # refused before the first epoch, not at its save


@pytest.mark.parametrize("script", ["generate_train_data", "generate_test_data", "predict", "vote", "fill_hole",
                                    "score", "make_synthetic_data"])
def test_every_script_refuses_an_output_under_a_file(script, tmp_path, capfd, monkeypatch):
    root = make_layout(tmp_path / "root")
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    out = blocker / "sub"
    fake_checkpoints(monkeypatch)
    src3 = str(root / TEST_SRC / "image_3.png")
    write_png(tmp_path / "m.png", np.zeros((40, 56), np.uint8))
    argv = {
        "generate_train_data": ["--data_root", str(out), "--images", str(root / TRAIN_SRC / "image_1.png")],
        "generate_test_data": ["--data_root", str(out), "--images", src3],
        "predict": ["--data_root", str(root), "--output_dir", str(out)],
        "vote": ["--inputs", str(tmp_path / "m.png"), "--output", str(out / "v.png")],
        "fill_hole": ["--input", str(tmp_path / "m.png"), "--source", src3, "--output", str(out / "f.png")],
        "score": ["--pred", str(tmp_path / "m.png"), "--label", str(tmp_path / "m.png"), "--json", str(out / "s.json")],
        "make_synthetic_data": ["--data_root", str(out), "--size", "20"],
    }[script]
    rc, _, err = run_script(script, [*argv, "--quiet"], capfd)
    assert_one_error(rc, err, "blocker", "is a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(tmp_path, capfd):
    root = make_layout(tmp_path / "root")
    (root / "test").mkdir()
    os.chmod(root / "test", 0o555)
    try:
        rc, _, err = run_script("generate_test_data", ["--data_root", str(root), "--quiet"], capfd)
    finally:
        os.chmod(root / "test", 0o755)
    assert_one_error(rc, err, "not writable")


# ---- 4. one --device rule ----------------------------------------------------------------------


def test_device_rule(monkeypatch, capfd, tmp_path):
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="expected cpu, cuda or cuda:N"):
        select_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="CUDA is not available"):
        select_device("cuda")
    assert select_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(InputError, match="cuda:3: no CUDA device 3 .this machine shows 1"):
        select_device("cuda:3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for script in ("predict", "train", "run_pipeline"):  # the same spelling rule at parse time
        rc, _, err = run_script(script, ["--device", "tpu"], capfd)
        assert_parse_error(rc, err, "--device", "expected cpu, cuda or cuda:N")
    # predict.py --device cuda on a machine without CUDA: one line, before any work
    root = make_layout(tmp_path / "root")
    rc, _, _ = run_script("generate_test_data", ["--data_root", str(root), "--tile_size", "32", "--quiet"], capfd)
    assert rc == 0
    rc, _, err = run_script("predict", ["--data_root", str(root), "--device", "cuda", "--quiet"], capfd)
    assert_one_error(rc, err, "--device cuda", "CUDA is not available")


# ---- 5. damaged image data leaves no tiles ------------------------------------------------------


def damage_middle(path: Path, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + n] = bytes(b ^ 0x5A for b in data[mid : mid + n])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("script,damaged,out", [
    ("generate_train_data", f"{TRAIN_SRC}/image_2.png", "train"),
    ("generate_test_data", f"{TEST_SRC}/image_4.png", "test"),
])
def test_damaged_pixels_leave_the_previous_tiles(script, damaged, out, tmp_path, capfd):
    root = tmp_path / "root"
    for i, name in enumerate(["image_1", "image_2"]):
        make_source(root / TRAIN_SRC / f"{name}.png", 300, 280, i)
    for i, name in enumerate(["image_3", "image_4"]):
        make_source(root / TEST_SRC / f"{name}.png", 300, 280, 10 + i, label=False)
    argv = ["--data_root", str(root), "--tile_size", "64", "--quiet"]
    assert run_script(script, argv, capfd)[0] == 0
    before = {p.relative_to(root): p.read_bytes() for p in (root / out).rglob("*") if p.is_file()}
    damage_middle(root / damaged)  # the header and the end of the file are intact
    rc, _, err = run_script(script, argv, capfd)
    assert_one_error(rc, err, Path(damaged).name, "cannot decode")
    after = {p.relative_to(root): p.read_bytes() for p in (root / out).rglob("*") if p.is_file()}
    assert after == before  # the previous tiles and tiles.csv, untouched; no new tile, no temporary
    assert not [p for p in (root / out).iterdir() if p.name.startswith(".")]


# ---- 6. bytes after IEND ---------------------------------------------------------------------------


def test_bytes_after_iend_are_accepted(tmp_path, capfd):
    root = tmp_path / "root"
    make_source(root / TRAIN_SRC / "image_1.png", 70, 90, 1)
    make_source(root / TRAIN_SRC / "image_2.png", 50, 60, 2)
    argv = ["--data_root", str(root), "--tile_size", "32", "--keep", "valid", "--quiet"]
    assert run_script("generate_train_data", argv, capfd)[0] == 0
    clean = {p.name: read_png(p) for p in (root / "train" / "data").iterdir()}
    for name in ("image_1.png", "image_1_label.png"):
        p = root / TRAIN_SRC / name
        p.write_bytes(p.read_bytes() + b"trailing bytes a camera or an editor left" * 3)
    tile = root / "train" / "data" / sorted(clean)[0]
    tile.write_bytes(tile.read_bytes() + b"\x00" * 40)
    np.testing.assert_array_equal(read_png(tile), clean[tile.name])
    assert raster_info(root / TRAIN_SRC / "image_1.png").shape == (70, 90)
    rc, _, err = run_script("generate_train_data", argv, capfd)
    assert rc == 0, err
    again = {p.name: read_png(p) for p in (root / "train" / "data").iterdir()}
    assert again.keys() == clean.keys()
    for k in clean:
        np.testing.assert_array_equal(again[k], clean[k])


def test_truncated_png_is_still_refused(tmp_path):
    p = tmp_path / "t.png"
    write_png(p, np.random.default_rng(0).integers(0, 255, (64, 64, 4), dtype=np.uint8))
    data = p.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:-20])
    (tmp_path / "cut_tail.png").write_bytes(data[: len(data) // 2] + data[-12:])  # ends like a PNG
    for name in ("cut.png", "cut_tail.png"):
        with pytest.raises(InputError, match=f"{name}: (truncated|corrupt) PNG"):
            read_png(tmp_path / name)
    with pytest.raises(InputError, match="truncated PNG"):
        raster_info(tmp_path / "cut.png")


# ---- 7. a source without any valid pixel ----------------------------------------------------------


def test_source_without_valid_pixel_warns_and_predicts_zeros(tmp_path, capfd, monkeypatch):
    root = make_layout(tmp_path / "root")
    empty = np.zeros((38, 58, 4), np.uint8)  # alpha 0 everywhere
    write_png(root / TEST_SRC / "image_4.png", empty)
    rc, _, err = run_script("generate_test_data", ["--data_root", str(root), "--tile_size", "32", "--quiet"], capfd)
    assert rc == 0, err
    assert "warning:" in err and "image_4.png: no valid pixel" in err
    assert {r["image"] for r in read_tiles_csv(root / "test" / "tiles.csv")} == {"image_3"}
    fake_checkpoints(monkeypatch)
    rc, _, err = run_script("predict", ["--data_root", str(root), "--workers", "0", "--quiet", "--save_probs"], capfd)
    assert rc == 0, err
    assert "image_4.png: no valid pixel" in err and "all zero" in err
    zero = read_png(root / "submit" / "image_4_predict.png")
    assert zero.shape == (38, 58) and not zero.any()
    assert not read_png(root / "submit" / "image_4_predict_prob2.png").any()
    assert (read_png(root / "submit" / "image_3_predict.png") == 2).any()  # the other image as usual
    # an image whose windows tiles.csv does not list is read straight from its source (the contract);
    # where that source is missing too, one error line names both and gives the advice
    before = read_png(root / "submit" / "image_3_predict.png")
    rows = [ln for ln in (root / "test" / "tiles.csv").read_text().splitlines()[:1]]
    (root / "test" / "tiles.csv").write_text("\n".join(rows) + "\n")
    rc, _, err = run_script("predict", ["--data_root", str(root), "--images", "image_3", "--workers", "0",
                                        "--tile_size", "32", "--stride", "16", "--quiet"], capfd)
    assert rc == 0, err
    np.testing.assert_array_equal(read_png(root / "submit" / "image_3_predict.png"), before)
    (root / TEST_SRC / "image_3.png").unlink()
    rc, _, err = run_script("predict", ["--data_root", str(root), "--images", "image_3", "--quiet"], capfd)
    assert_one_error(rc, err, "image_3.png: file not found", "lists no windows of image_3", "generate_test_data.py")


# ---- 8. tiles.csv: names stay in their folder; malformed rows name file, line and column ---------


HEADER = "name,image,y,x,size,valid_pixels,height,width"


@pytest.mark.parametrize("row,words", [
    ("/etc/passwd,image_3,0,0,32,10,40,56", ["line 2", "column 'name'", "not a plain file name"]),
    ("../../x.png,image_3,0,0,32,10,40,56", ["line 2", "column 'name'", "not a plain file name"]),
    ("image_3_0_0.png,image_3,abc,0,32,10,40,56", ["line 2", "column 'y'", "'abc' is not a whole number"]),
    ("image_3_0_0.png,image_3,-5,0,32,10,40,56", ["line 2", "column 'y'", "-5 is below 0"]),
    ("image_3_0_0.png,image_3,0,0,0,10,40,56", ["line 2", "column 'size'", "0 is below 1"]),
    ("image_3_0_0.png,image_3,0,0,32,10,40", ["line 2", "fewer fields"]),
    ("image_3_0_0.png,image_3,0,0,32,10,40,56,9", ["line 2", "more fields"]),
])
def test_malformed_tiles_csv_rows(tmp_path, row, words):
    p = tmp_path / "tiles.csv"
    p.write_text(f"{HEADER}\n{row}\n")
    with pytest.raises(InputError) as e:
        read_tiles_csv(p, HEADER.split(","))
    for w in words:
        assert w in str(e.value)
    assert str(p) in str(e.value)


def test_tiles_csv_header_and_encoding(tmp_path):
    p = tmp_path / "tiles.csv"
    p.write_text("name,image,x,size,valid_pixels\nimage_3_0_0.png,image_3,0,32,10\n")
    with pytest.raises(InputError, match="tiles.csv: no 'y' column"):
        read_tiles_csv(p)
    p.write_bytes(b"name,image,y,x,size,valid_pixels\n\xff\xfe,image_3,0,0,32,1\n")
    with pytest.raises(InputError, match="not a text file"):
        read_tiles_csv(p)
    p.write_text("")
    with pytest.raises(InputError, match="empty file"):
        read_tiles_csv(p)


def test_predict_never_reads_outside_its_window_folder(tmp_path, capfd, monkeypatch):
    root = make_layout(tmp_path / "root")
    assert run_script("generate_test_data", ["--data_root", str(root), "--tile_size", "32", "--quiet"], capfd)[0] == 0
    outside = tmp_path / "secret.png"
    shutil.copy(next((root / "test" / "image3").iterdir()), outside)
    csv_path = root / "test" / "tiles.csv"
    lines = csv_path.read_text().splitlines()
    first = lines[1].split(",")
    first[0] = str(outside)
    csv_path.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    fake_checkpoints(monkeypatch)
    rc, _, err = run_script("predict", ["--data_root", str(root), "--workers", "0", "--quiet"], capfd)
    assert_one_error(rc, err, "tiles.csv, line 2, column 'name'", "not a plain file name")
    assert not (root / "submit" / "image_3_predict.png").exists()


# ---- 9. temporaries: deleted on failure and by the next run of the same output -------------------


def test_stale_temporaries_are_removed_by_the_next_run(data_root, tmp_path, capfd, monkeypatch):
    root = data_root()
    model = root / "model"
    model.mkdir()
    stale = model / ".deeplabv3_resnet18_t_last.pth.k1ll3d_x.part"
    stale.write_bytes(b"\0" * 1000)  # what a kill during a checkpoint save leaves
    other = model / ".someone_elses_run_last.pth.abcdefgh.part"  # another output's: left alone
    other.write_bytes(b"x")
    rc, _, err = run_script("train", train_argv(root, "--epochs", "1", "--exp", "t"), capfd)
    assert rc == 0, err
    assert not stale.exists() and other.exists()
    # tiling: a killed run's temporary tile folder goes with the next run
    src = make_layout(tmp_path / "src")
    (src / "train").mkdir()
    dead = src / "train" / ".data.abcdefgh.part"
    dead.mkdir()
    (dead / "image_1_0_0.png").write_bytes(b"half")
    assert run_script("generate_train_data", ["--data_root", str(src), "--tile_size", "32", "--quiet"], capfd)[0] == 0
    assert not dead.exists() and no_partials(src)
    # prediction: a 0-byte temporary of the map
    stale_map = src / "submit" / ".image_3_predict.png.abcdefgh.part"
    stale_map.parent.mkdir()
    stale_map.write_bytes(b"")
    assert run_script("generate_test_data", ["--data_root", str(src), "--tile_size", "32", "--quiet"], capfd)[0] == 0
    fake_checkpoints(monkeypatch)
    rc, _, err = run_script("predict", ["--data_root", str(src), "--workers", "0", "--quiet"], capfd)
    assert rc == 0, err
    assert not stale_map.exists() and no_partials(src)


def test_vote_output_naming_a_folder(tmp_path, capfd):
    write_png(tmp_path / "a.png", np.ones((8, 8), np.uint8))
    write_png(tmp_path / "b.png", np.ones((8, 8), np.uint8))
    (tmp_path / "out.png").mkdir()
    rc, _, err = run_script("vote", ["--inputs", str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                                     "--output", str(tmp_path / "out.png"), "--quiet"], capfd)
    assert_one_error(rc, err, "out.png", "is a folder")
    assert no_partials(tmp_path)


def test_sigterm_removes_the_temporary(tmp_path, capfd):
    target = tmp_path / "out.bin"

    def main(args):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` or a batch system's time limit

    previous = signal.getsignal(signal.SIGTERM)
    assert run_cli(main, None) == 130
    assert not target.exists() and no_partials(tmp_path)
    assert signal.getsignal(signal.SIGTERM) is previous  # run_cli gives the handler back


# ---- 10. --pretrained imagenet offline; a --resume file that is not a checkpoint ---------------------


def test_pretrained_imagenet_offline_is_one_line(data_root, tmp_path, capfd, monkeypatch):
    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    root = data_root()
    rc, _, err = run_script("train", train_argv(root, "--pretrained", "imagenet"), capfd)
    line = assert_one_error(rc, err, "--pretrained imagenet", "download", "--pretrained PATH", "resnet18-")
    assert len(err.strip().splitlines()) == 1 and len(line) < 400


def test_resume_from_a_file_that_is_not_a_checkpoint(data_root, tmp_path, capfd):
    root = data_root()
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    rc, _, err = run_script("train", train_argv(root, "--resume", str(text)), capfd)
    assert_one_error(rc, err, "notes.pth: not a PyTorch checkpoint")
    pickled = tmp_path / "whole_model.pth"
    torch.save(torch.nn.Linear(2, 2), pickled)
    rc, _, err = run_script("train", train_argv(root, "--resume", str(pickled)), capfd)
    assert_one_error(rc, err, "whole_model.pth: not a cropmap checkpoint", "Python objects")
    assert "2.6" not in err


# ---- 11. vote.py with one input; run_pipeline.py --quiet ----------------------------------------


def test_vote_with_one_input_warns(tmp_path, capfd):
    write_png(tmp_path / "a.png", np.full((6, 6), 3, np.uint8))
    rc, _, err = run_script("vote", ["--inputs", str(tmp_path / "a.png"), "--output", str(tmp_path / "o.png"),
                                     "--quiet"], capfd)
    assert rc == 0 and not error_lines(err)
    assert "warning: only one map to vote" in err
    np.testing.assert_array_equal(read_png(tmp_path / "o.png"), read_png(tmp_path / "a.png"))


def test_pipeline_quiet_reaches_every_step(tmp_path, monkeypatch):
    import run_pipeline

    commands = []
    monkeypatch.setattr(run_pipeline, "run", commands.append)
    monkeypatch.setattr(run_pipeline, "copy_atomic", lambda src, dst: None)  # no step ran: no map to copy
    monkeypatch.setattr(run_pipeline, "final_pictures", lambda *a: None)  # no map to draw
    args = run_pipeline.get_args_parser().parse_args(["--data_root", str(tmp_path), "--quiet", "--skip_training",
                                                      "--test_images", str(tmp_path / "t.png"), "--budget", "standard"])
    run_pipeline.main(args)
    scripts = {c[0] for c in commands}
    assert {"vote.py", "fill_hole.py", "predict.py", "generate_train_data.py"} <= scripts
    for c in commands:
        assert "--quiet" in c, c
