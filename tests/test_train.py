"""Tests of the training loop (cropmap.engine), its five entry scripts and cropmap.checkpoint.

Everything runs on the CPU with ResNet-18 DeepLabv3 (ResNet-34 U-Net for its script) on tiny
coloured-stripe tiles (tests/_train_fixtures.py), a few iterations each.
"""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _train_fixtures import make_tiles, tiny_args
from cropmap import checkpoint as ckpt
from cropmap import engine
from cropmap.cli import InputError, run_cli

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["train", "train_focalloss", "train_swa", "train_multiscale", "Unet_resnet34.train"]


@pytest.fixture(autouse=True)
def keep_thread_count():
    """The runs use ``--threads 1`` (much faster on a shared, busy CPU); give other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    return make_tiles(tmp_path_factory.mktemp("tiles"), n_train=12, n_val=3, size=64)


def data_root(tmp_path: Path, tiles: Path, name: str = "run") -> Path:
    """A fresh data root whose train/ is the shared fixture tiles (so model/ and logs are per test)."""
    root = tmp_path / name
    root.mkdir()
    os.symlink(tiles / "train", root / "train", target_is_directory=True)
    return root


def run_script(module: str, root: Path, *extra: str, hooks=None):
    mod = importlib.import_module(module)
    args = mod.get_args_parser().parse_args(tiny_args(root, *extra))
    return mod.main(args) if hooks is None else mod.main(args, hooks=hooks)


def test_learns_a_trivial_pattern(tmp_path):
    """Colour-coded stripes: 60 SGD steps take validation mIoU far above chance (about 0.15)."""
    root = make_tiles(tmp_path, n_train=40, n_val=4, size=64, seed=1)
    row = run_script("train", root, "--epochs", "6", "--iters_per_epoch", "10", "--base_lr", "0.05",
                     "--val_every", "0", "--save_every", "0", "--exp", "learn")
    assert row["epoch"] == 6
    assert row["mIoU"] > 0.5, row
    history = torch.load(root / "model" / "deeplabv3_resnet18_learn_last.pth", weights_only=True)["history"]
    assert history[-1]["train_loss"] < 0.75 * history[0]["train_loss"]


def test_each_script_end_to_end(tiles, tmp_path):
    """The five scripts train, validate and write checkpoints that rebuild the right model."""
    for module in SCRIPTS:
        root = data_root(tmp_path, tiles, module)
        extra = ["--epochs", "1", "--iters_per_epoch", "2", "--crop_size", "32"]
        if module == "train_swa":
            extra += ["--swa_start", "1"]
        if module == "train_multiscale":
            extra += ["--scales", "64,32", "--batch_sizes", "2,4", "--amp"]  # bf16 autocast on the CPU
        if module == "Unet_resnet34.train":
            extra += ["--backbone", "resnet34"]
        if module == "train_focalloss":
            extra += ["--oversample", "0.5"]
        row = run_script(module, root, *extra)
        assert row["epoch"] == 1 and 0.0 <= row["mIoU"] <= 1.0
        model_dir = root / "model"
        best = ckpt.find_best(model_dir)
        name = {"Unet_resnet34.train": "unet_resnet34_t"}.get(module, "deeplabv3_resnet18_t")
        assert best.name == f"{name}_best.pth"
        assert (model_dir / f"{name}_epoch1.pth").is_file() and (model_dir / f"{name}_last.pth").is_file()
        assert not list(model_dir.glob(".*.part"))  # no temporary file left behind
        state = torch.load(best, weights_only=True)
        assert state["epoch"] == 1 and set(state) >= {"model", "args", "optimizer", "metrics", "epoch"}
        assert state["metrics"]["mIoU"] == pytest.approx(row["mIoU"])
        loss = {"train": "ce"}.get(module, "focal+lovasz")
        assert state["args"]["loss"] == loss
        if module == "train_multiscale":
            assert state["args"]["scales"] == [64, 32]
        model, args = ckpt.load_model(best)
        assert not model.training and args["exp"] == "t"
        assert torch.equal(model.state_dict()["backbone.conv1.weight" if "deeplab" in name
                                              else "backbone.stem.0.weight"],
                           state["model"]["backbone.conv1.weight" if "deeplab" in name else "backbone.stem.0.weight"])
        with torch.no_grad():
            out = model(torch.zeros(1, 3, 64, 64))
        assert out["out"].shape == (1, 4, 64, 64) and "aux" not in out
        log = (root / "model" / name / "log.csv").read_text().splitlines()
        assert log[0].startswith("epoch,train_loss,val_loss,lr,lr_head,iou_other") and len(log) == 2
        assert (root / "model" / name / "curves.png").stat().st_size > 1000


class Recorder(engine.Hook):
    """Keeps the trained weights at the end of every epoch from ``start`` on."""

    name = "recorder"

    def __init__(self, start):
        self.start, self.snapshots = start, []

    def on_epoch_end(self, trainer, epoch):
        if epoch >= self.start:
            self.snapshots.append({k: v.detach().clone() for k, v in trainer.model.named_parameters()})


def test_swa_saves_the_average(tiles, tmp_path):
    root = data_root(tmp_path, tiles, "swa")
    rec = Recorder(start=1)
    run_script("train_swa", root, "--epochs", "3", "--iters_per_epoch", "2", "--crop_size", "32",
               "--swa_start", "2", "--swa_lr", "0.005", "--swa_anneal_epochs", "1", "--val_every", "0",
               hooks=[rec])
    state = torch.load(root / "model" / "deeplabv3_resnet18_t_last.pth", weights_only=True)
    assert len(rec.snapshots) == 2  # epochs 2 and 3 were averaged
    last = rec.snapshots[-1]
    differs = 0
    for name, value in last.items():
        mean = (rec.snapshots[0][name] + rec.snapshots[1][name]) / 2
        assert torch.allclose(state["model"][name], mean, atol=1e-6), name
        assert torch.equal(state["train_model"][name], value)  # the optimised weights are kept for resuming
        differs += not torch.allclose(state["model"][name], value)
    assert differs > len(last) // 2  # the saved model is not the last weights
    # BatchNorm statistics were recomputed for the average: update_bn counted its 2 batches only
    assert int(state["model"]["backbone.bn1.num_batches_tracked"]) == 2
    assert int(state["train_model"]["backbone.bn1.num_batches_tracked"]) == 6
    assert int(state["hooks"]["swa"]["averaged"]["n_averaged"]) == 2
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.005)  # SWALR reached swa_lr


class Killer(engine.Hook):
    """Interrupts training in the middle of an epoch, like a killed job."""

    def __init__(self, epoch, iteration):
        self.at = (epoch, iteration)

    def on_iteration_end(self, trainer, epoch, iteration, loss):
        if (epoch, iteration) == self.at:
            raise KeyboardInterrupt


def test_resume_gives_the_same_weights(tiles, tmp_path):
    """SWA run of 4 epochs straight vs. killed in epoch 4 and resumed from _last.pth: identical weights."""
    common = ["--epochs", "4", "--iters_per_epoch", "2", "--crop_size", "32", "--swa_start", "3",
              "--swa_anneal_epochs", "1", "--val_every", "0", "--scales", "32,64", "--batch_sizes", "4,2"]
    straight, killed = data_root(tmp_path, tiles, "a"), data_root(tmp_path, tiles, "b")
    run_script("train_swa", straight, *common)
    with pytest.raises(KeyboardInterrupt):
        run_script("train_swa", killed, *common, hooks=[Killer(epoch=3, iteration=1)])
    last = killed / "model" / "deeplabv3_resnet18_t_last.pth"
    assert torch.load(last, weights_only=True)["epoch"] == 3
    run_script("train_swa", killed, *common, "--resume", str(last))
    a = torch.load(straight / "model" / "deeplabv3_resnet18_t_last.pth", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    for key in ("model", "train_model"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)
    assert a["optimizer"]["param_groups"][1]["lr"] == b["optimizer"]["param_groups"][1]["lr"]
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]


def test_evaluate_mode_prints_the_iou_table(tiles, tmp_path, capsys):
    root = data_root(tmp_path, tiles, "eval")
    row = run_script("train", root, "--epochs", "1", "--iters_per_epoch", "1", "--crop_size", "32")
    capsys.readouterr()
    import train

    args = train.get_args_parser().parse_args(["--data_root", str(root), "--backbone", "resnet18", "--exp", "t",
                                               "--device", "cpu", "--workers", "0", "--quiet"])
    metrics = train.main(args)
    out = capsys.readouterr().out
    assert "deeplabv3_resnet18_t_best.pth" in out and "mIoU (1..3)" in out and "3 coix" in out
    assert metrics["mIoU"] == pytest.approx(row["mIoU"])


def test_user_errors_are_one_line(tmp_path, tiles, capsys):
    import train

    parser = train.get_args_parser()
    cases = [
        (tiny_args(tmp_path / "empty", "--epochs", "1"), "tiles.csv: file not found"),
        (tiny_args(tiles, "--crop_size", "40"), "crop size 40 must be a positive multiple of 32"),
        (tiny_args(tiles, "--backbone", "resnet9"), "unknown backbone 'resnet9' for deeplabv3"),
        (tiny_args(tiles, "--resume", str(tmp_path / "none.pth")), "none.pth: checkpoint not found"),
        (tiny_args(tiles, "--sync_bn"), "--sync_bn needs CUDA"),
        (["--data_root", str(tmp_path), "--checkpoint", str(tmp_path / "x.pth")], "x.pth: checkpoint not found"),
    ]
    for argv, message in cases:
        assert run_cli(train.main, parser.parse_args(argv)) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    with pytest.raises(InputError, match="no \\*_best.pth"):
        ckpt.find_best(tmp_path)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="bad.pth: cannot load checkpoint"):
        ckpt.load_model(bad)


def test_unet_script_runs_from_the_repo_root(tmp_path):
    """``python Unet_resnet34/train.py`` imports the repository's packages; a user error is one line, exit 2."""
    proc = subprocess.run([sys.executable, "Unet_resnet34/train.py", "--train", "--data_root", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "tiles.csv: file not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_ddp_two_cpu_processes(tiles, tmp_path):
    """torchrun with 2 gloo processes: both train their shard, rank 0 alone writes checkpoint and logs."""
    root = data_root(tmp_path, tiles, "ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
           *tiny_args(root, "--epochs", "1", "--iters_per_epoch", "2", "--crop_size", "32")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout and proc.stdout.count("epoch 1/1:") == 1  # rank 0 prints alone
    state = torch.load(root / "model" / "deeplabv3_resnet18_t_last.pth", weights_only=True)
    assert state["epoch"] == 1 and not any(k.startswith("module.") for k in state["model"])
    assert not list((root / "model").glob(".*.part"))
    model, _ = ckpt.load_model(root / "model" / "deeplabv3_resnet18_t_best.pth")
    assert not model.training


def test_bench_train_reports_both_throughputs(tiles, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "bench" / "train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.get_args_parser().parse_args(
        ["--data_root", str(tiles), "--backbone", "resnet18", "--device", "cpu", "--crop_size", "32",
         "--batch_size", "2", "--workers", "1", "--threads", "1", "--iters", "2", "--warmup", "1", "--repeats", "1",
         "--epoch_iters", "3", "--repeat_tiles", "2"])
    result = bench.main(args)
    assert result["full"] > 0 and result["bare"] > 0
    assert result["loader_1"] > 0 and result["loader_n"] > 0 and result["epoch"] > 0
    assert result["overhead_pct"] == pytest.approx(100 * (1 - result["full"] / result["bare"]))
    assert "data pipeline overhead" in capsys.readouterr().out
    assert not (tiles / "model").exists()  # the benchmark writes nothing
