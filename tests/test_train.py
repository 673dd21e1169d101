"""Tests of the training loop (cropmap.train.engine), its five entry scripts and cropmap.train.checkpoint: the
training flags (warm-up, colour jitter, edge smoothing, AdamW), a class absent from validation, the training
tiles' statistics in the checkpoint.

Everything runs on the CPU with ResNet-18 DeepLabv3 (ResNet-34 U-Net for its script) on tiny
coloured-stripe tiles (tests/_train_fixtures.py), a few iterations each.
"""

import csv
import importlib
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _train_fixtures import make_tiles, tiny_args
from cropmap.train import checkpoint as ckpt
from cropmap.train import engine
from cropmap.core.cli import run_cli
from cropmap.core.errors import InputError
from cropmap.raster import IGNORE
from models import UNetResNet

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["train", "train_focalloss", "train_swa", "train_multiscale", "Unet_resnet34.train"]


TILES = dict(n_train=12, n_val=3, size=64)  # the module's shared training tiles (conftest.py: tiles, data_root)


def run_script(module: str, root: Path, *extra: str, hooks=None):
    mod = importlib.import_module(module)
    args = mod.get_args_parser().parse_args(tiny_args(root, *extra))
    return mod.main(args) if hooks is None else engine.main(args, hooks=hooks)  # the scripts' defaults, the loop's hooks


# ImageNet statistics, written out here so that the check does not share the pipeline's normalisation
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def independent_input(image: np.ndarray, label: np.ndarray, input_norm: str) -> np.ndarray:
    """The model input of a tile, ``float64 [H, W, 3]``, written out here in numpy: ImageNet mean and std, or
    (``window``) each channel standardised over the tile's pixels that have a label or a colour."""
    if input_norm == "imagenet":
        return (image / 255 - MEAN) / STD
    valid = (label != 255) | (image != 0).any(-1)
    px = image[valid] / 255
    out = (image / 255 - px.mean(0)) / (px.std(0) + 0.02)
    out[~valid] = 0
    return out


def independent_confusion(model, root: Path, amp: bool = False, input_norm: str = "window",
                          channels_last: bool | None = None) -> np.ndarray:
    """Confusion matrix (rows = label) of ``model`` on the val tiles of ``root``, computed without the
    pipeline's reader, dataset, loader, normalisation or metric: PIL, numpy, one tile at a time. The model
    runs in the memory format training validates in (default: the engine's rule for its class), so that
    convolution rounding cannot flip the near ties of an untrained model."""
    if channels_last is None:
        channels_last = engine.channels_last(torch.device("cpu"), "unet" if isinstance(model, UNetResNet) else "deeplabv3")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    with open(root / "train" / "tiles.csv", newline="") as f:
        names = [r["name"] for r in csv.DictReader(f) if r["split"] == "val"]
    conf = np.zeros((4, 4), np.int64)
    model.eval()
    for name in names:
        image = np.asarray(Image.open(root / "train" / "data" / name).convert("RGB"), np.float64)
        label = np.asarray(Image.open(root / "train" / "label" / name)).astype(np.int64)
        x = torch.from_numpy(independent_input(image, label, input_norm).transpose(2, 0, 1)[None].astype(np.float32))
        x = x.contiguous(memory_format=fmt)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            pred = model(x)["out"].float().argmax(1)[0].numpy()
        keep = label != 255
        conf += np.bincount(label[keep] * 4 + pred[keep], minlength=16).reshape(4, 4)
    return conf


def miou_of(conf: np.ndarray) -> float:
    """Mean over the crop classes 1..3 of TP / (TP + FP + FN), classes absent from labels and predictions skipped."""
    ious = []
    for c in range(1, 4):
        union = conf[c].sum() + conf[:, c].sum() - conf[c, c]
        if union:
            ious.append(conf[c, c] / union)
    return float(np.mean(ious))


def assert_same_counts(metrics: dict, conf: np.ndarray, tolerance: int = 0) -> None:
    """The pipeline's confusion matrix counts the same pixels as ``conf``; at most ``tolerance`` pixels
    predicted differently (float rounding of other batch sizes may flip a near tie)."""
    ours = np.array(metrics["confusion"], np.int64)
    np.testing.assert_array_equal(ours.sum(1), conf.sum(1))  # the same labelled pixels, each counted once
    assert np.abs(ours - conf).sum() <= 2 * tolerance, (ours, conf)
    assert metrics["mIoU"] == pytest.approx(miou_of(ours), abs=1e-12)  # the metric's definition, exactly
    if tolerance == 0:
        assert metrics["mIoU"] == pytest.approx(miou_of(conf), abs=1e-12)


@pytest.fixture
def probe(monkeypatch):
    """Records, for every training step, the labels drawn, and the dtype of the first convolution's output
    in training steps and in validation (``(training, dtype)`` pairs)."""
    seen = {"labels": [], "dtypes": []}
    step, evaluate = engine.Trainer.train_step, engine.evaluate

    def hook_first_conv(model):
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        return conv.register_forward_hook(lambda m, i, o: seen["dtypes"].append((m.training, o.dtype)))

    def train_step(self, images, labels):
        if not getattr(self, "_probed", False):
            self._probed = hook_first_conv(self.model)
        seen["labels"].append(labels.clone())
        return step(self, images, labels)

    def evaluate_probed(model, *args, **kwargs):
        handle = hook_first_conv(model)
        try:
            return evaluate(model, *args, **kwargs)
        finally:
            handle.remove()

    monkeypatch.setattr(engine, "evaluate", evaluate_probed)
    monkeypatch.setattr(engine.Trainer, "train_step", train_step)
    return seen


def test_learns_a_trivial_pattern(tmp_path):
    """Colour-coded stripes: 60 SGD steps take validation mIoU far above chance (about 0.15)."""
    root = make_tiles(tmp_path, n_train=40, n_val=4, size=64, seed=1)
    row = run_script("train", root, "--epochs", "6", "--iters_per_epoch", "10", "--base_lr", "0.05",
                     "--val_every", "0", "--save_every", "0", "--exp", "learn")
    assert row["epoch"] == 6
    assert row["mIoU"] > 0.5, row
    history = torch.load(root / "model" / "deeplabv3_resnet18_learn_last.pth", weights_only=True)["history"]
    assert history[-1]["train_loss"] < 0.75 * history[0]["train_loss"]


def test_each_script_end_to_end(data_root, probe):
    """The five scripts train, validate and write checkpoints that rebuild the right model; the validation
    metrics are those of an independent computation; --amp runs the forward in bf16 (train and eval)."""
    for module in SCRIPTS:
        root = data_root(module)
        extra = ["--epochs", "1", "--iters_per_epoch", "2", "--crop_size", "32"]
        amp = module == "train_multiscale"
        if module == "train_swa":
            extra += ["--swa_start", "1", "--input_norm", "imagenet"]  # the original's normalisation
        if module == "train_multiscale":
            extra += ["--scales", "64,32", "--batch_sizes", "2,4", "--amp"]  # bf16 autocast on the CPU
        if module == "Unet_resnet34.train":
            extra += ["--backbone", "resnet34"]
        if module == "train_focalloss":
            extra += ["--oversample", "0.5"]
        probe["dtypes"].clear()
        row = run_script(module, root, *extra)
        assert row["epoch"] == 1
        want = torch.bfloat16 if amp else torch.float32
        assert {d for _, d in probe["dtypes"]} == {want}, (module, probe["dtypes"])
        assert {t for t, _ in probe["dtypes"]} == {True, False}  # seen in training and in validation
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
        assert args["input_norm"] == ("imagenet" if module == "train_swa" else "window")
        assert_same_counts(state["metrics"], independent_confusion(model, root, amp=amp, input_norm=args["input_norm"]),
                           tolerance=10 if amp else 2)
        assert torch.equal(model.state_dict()["backbone.conv1.weight" if "deeplab" in name
                                              else "backbone.stem.0.weight"],
                           state["model"]["backbone.conv1.weight" if "deeplab" in name else "backbone.stem.0.weight"])
        with torch.no_grad():
            out = model(torch.zeros(1, 3, 64, 64))
        assert out["out"].shape == (1, 4, 64, 64) and "aux" not in out
        log = (root / "model" / name / "log.csv").read_text().splitlines()
        assert log[0].startswith("epoch,train_loss,val_loss,lr,lr_head,iou_other") and len(log) == 2
        assert (root / "model" / name / "curves.png").stat().st_size > 1000
        for f in model_dir.glob("*.pth"):  # 130-220 MB each: the next script's take their place
            f.unlink()


class Recorder(engine.Hook):
    """Keeps the trained weights at the end of every epoch from ``start`` on."""

    name = "recorder"

    def __init__(self, start):
        self.start, self.snapshots = start, []

    def on_epoch_end(self, trainer, epoch):
        if epoch >= self.start:
            self.snapshots.append({k: v.detach().clone() for k, v in trainer.model.named_parameters()})


def test_swa_saves_the_average(data_root):
    root = data_root("swa")
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


class StepRecorder(engine.Hook):
    """Keeps the whole model state (parameters and buffers) at the start and after every optimizer step."""

    def __init__(self):
        self.states = []

    def setup(self, trainer):
        self.initial = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    def on_iteration_end(self, trainer, epoch, iteration, loss):
        self.states.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})


def test_ema_saves_the_moving_average(data_root):
    """--ema 0.6: the saved model is the warmed-up EMA of every step's state, recomputed here from the
    recorded states in float64; BatchNorm running statistics are averaged too, the counter copied."""
    root = data_root("ema")
    rec = StepRecorder()
    run_script("train", root, "--epochs", "2", "--iters_per_epoch", "3", "--crop_size", "32",
               "--val_every", "0", "--ema", "0.6", hooks=[rec])
    state = torch.load(root / "model" / "deeplabv3_resnet18_t_last.pth", weights_only=True)
    assert len(rec.states) == 6 and state["hooks"]["ema"]["steps"] == 6
    expected = {k: v.double() for k, v in rec.initial.items() if v.is_floating_point()}
    for t, cur in enumerate(rec.states):
        d = min(0.6, (1 + t) / (10 + t))  # 0.1, 0.18, ... then 0.6 from step 4 on
        for k in expected:
            expected[k] = d * expected[k] + (1 - d) * cur[k].double()
    differs = 0
    for k, v in expected.items():
        assert torch.allclose(state["model"][k].double(), v, atol=1e-5), k
        assert torch.equal(state["train_model"][k], rec.states[-1][k])  # the optimised weights, for --resume
        differs += not torch.allclose(state["model"][k], rec.states[-1][k])
    assert differs > len(expected) // 2  # the saved model is not the last weights
    assert "backbone.bn1.running_var" in expected  # BatchNorm statistics are part of the average
    assert int(state["model"]["backbone.bn1.num_batches_tracked"]) == 6


def test_ema_resume_gives_the_same_average(data_root):
    common = ["--epochs", "3", "--iters_per_epoch", "2", "--crop_size", "32", "--val_every", "0", "--ema", "0.9"]
    straight, killed = data_root("a"), data_root("b")
    run_script("train", straight, *common)
    with pytest.raises(KeyboardInterrupt):
        run_script("train", killed, *common, hooks=[Killer(epoch=2, iteration=0)])
    last = killed / "model" / "deeplabv3_resnet18_t_last.pth"
    run_script("train", killed, *common, "--resume", str(last))
    a = torch.load(straight / "model" / "deeplabv3_resnet18_t_last.pth", weights_only=True)
    b = torch.load(last, weights_only=True)
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name


def test_ema_and_swa_are_exclusive(data_root, capsys):
    root = data_root("both")
    mod = importlib.import_module("train_swa")
    args = mod.get_args_parser().parse_args(tiny_args(root, "--ema", "0.9"))
    assert run_cli(mod.main, args) != 0
    assert "--swa and --ema" in capsys.readouterr().err


class Killer(engine.Hook):
    """Interrupts training in the middle of an epoch, like a killed job."""

    def __init__(self, epoch, iteration):
        self.at = (epoch, iteration)

    def on_iteration_end(self, trainer, epoch, iteration, loss):
        if (epoch, iteration) == self.at:
            raise KeyboardInterrupt


def as_if_written_on_a_gpu(path: Path) -> None:
    """Rewrite a checkpoint as a CUDA run writes it: every tensor stored as on ``cuda:0`` and a CUDA
    random state, so that loading it without ``map_location`` fails on a CPU-only machine."""
    import torch.serialization as ser

    state = torch.load(path, weights_only=True)
    state["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    tag = ser.location_tag
    ser.location_tag = lambda storage: "cuda:0"
    try:
        torch.save(state, path)
    finally:
        ser.location_tag = tag


def test_resume_gives_the_same_weights(data_root):
    """SWA run of 4 epochs straight vs. killed in epoch 4 and resumed from _last.pth: identical weights,
    also when the checkpoint was written on a GPU and the run resumes on the CPU."""
    common = ["--epochs", "4", "--iters_per_epoch", "2", "--crop_size", "32", "--swa_start", "3",
              "--swa_anneal_epochs", "1", "--val_every", "0", "--scales", "32,64", "--batch_sizes", "4,2"]
    straight, killed = data_root("a"), data_root("b")
    run_script("train_swa", straight, *common)
    with pytest.raises(KeyboardInterrupt):
        run_script("train_swa", killed, *common, hooks=[Killer(epoch=3, iteration=1)])
    last = killed / "model" / "deeplabv3_resnet18_t_last.pth"
    assert torch.load(last, weights_only=True)["epoch"] == 3
    as_if_written_on_a_gpu(last)
    with pytest.raises(RuntimeError, match="CUDA"):  # the file really names a GPU now
        torch.load(last, weights_only=True)
    run_script("train_swa", killed, *common, "--resume", str(last))
    a = torch.load(straight / "model" / "deeplabv3_resnet18_t_last.pth", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    for key in ("model", "train_model"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)
    assert a["optimizer"]["param_groups"][1]["lr"] == b["optimizer"]["param_groups"][1]["lr"]
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]


@pytest.mark.skipif(not hasattr(torch.__future__, "set_swap_module_params_on_conversion"),
                    reason="needs torch.__future__.set_swap_module_params_on_conversion (PyTorch >= 2.3)")
def test_resume_on_a_gpu_keeps_random_states_on_the_cpu(data_root):
    """A run on a GPU resumes with its model and optimizer on the GPU and its random states on the CPU.

    'meta' stands in for the GPU: its tensors refuse ``.numpy()`` and ``.tolist()`` as CUDA tensors do,
    so a checkpoint mapped wholesale to the training device cannot restore the random states.
    """
    root = data_root("meta")
    run_script("train", root, "--epochs", "1", "--iters_per_epoch", "1", "--crop_size", "32", "--val_every", "0")
    last = root / "model" / "deeplabv3_resnet18_t_last.pth"
    saved = torch.load(last, weights_only=True)
    import train

    trainer = engine.Trainer(train.get_args_parser().parse_args(tiny_args(root, "--epochs", "2", "--crop_size", "32")))
    param = next(trainer.model.parameters())
    torch.__future__.set_swap_module_params_on_conversion(True)  # keep the optimizer's parameter objects
    try:
        trainer.model.to("meta")
    finally:
        torch.__future__.set_swap_module_params_on_conversion(False)
    trainer.device = torch.device("meta")
    torch.manual_seed(12345)
    np.random.seed(12345)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "copying from a non-meta parameter ... is a no-op"
        trainer.load(last)
    assert trainer.start_epoch == 1
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])
    assert np.random.get_state()[1].tobytes() == saved["rng"]["numpy_keys"].numpy().tobytes()
    assert param.device.type == "meta" and trainer.optimizer.state[param]["momentum_buffer"].device.type == "meta"


def test_oversampling_shifts_the_class_mix(tmp_path):
    """With a rare class in one tile of six, --oversample 1 draws its pixels as often as the weights say (twice the data's share)."""
    import train

    root = make_tiles(tmp_path, n_train=24, n_val=2, size=64, seed=2, rare_every=6)
    share = {}
    for power in ("0", "1"):
        args = train.get_args_parser().parse_args(tiny_args(root, "--oversample", power, "--scale_min", "1",
                                                            "--scale_max", "1"))
        trainer = engine.Trainer(args)
        counts = np.zeros(4, np.int64)
        for epoch in range(8):
            trainer.sampler.set_epoch(epoch)
            for _, labels in trainer.train_loader:
                counts += np.bincount(labels[labels != 255].numpy(), minlength=4)
        share[power] = counts / counts.sum()
    with open(root / "train" / "tiles.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train"]
    counts = np.array([[int(r[f"c{k}"]) for k in range(4)] for r in rows], np.float64)  # [tiles, classes]
    f = counts.sum(0) / counts.sum()
    # power 1: a tile is drawn in proportion to the mean over its pixels of 1 / (share of the pixel's class)
    w = (counts / counts.sum(1, keepdims=True) * (1 / f)).sum(1)
    expected = (w[:, None] * counts).sum(0) / (w[:, None] * counts).sum()
    assert share["0"][3] == pytest.approx(f[3], rel=0.3)  # uniform draws: about the data's share (4%)
    assert share["1"][3] == pytest.approx(expected[3], rel=0.3)  # about twice as much
    assert share["1"][3] > 1.6 * share["0"][3], share


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_tile_is_one_line_with_loader_workers(tiles, tmp_path, capsys, workers):
    """A corrupt tile stops training (training or validation tile) and evaluation with one line naming it,
    also when a loader worker process reads it."""
    import shutil

    import train

    root = tmp_path / "bad"
    shutil.copytree(tiles / "train", root / "train")
    run_script("train", root, "--epochs", "1", "--iters_per_epoch", "1", "--crop_size", "32", "--exp", "ok")
    with open(root / "train" / "tiles.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    first = {split: next(r["name"] for r in rows if r["split"] == split) for split in ("train", "val")}
    train_run = tiny_args(root, "--epochs", "1", "--iters_per_epoch", "3", "--crop_size", "32", "--workers", str(workers))
    evaluation = ["--data_root", str(root), "--exp", "ok", "--backbone", "resnet18", "--device", "cpu", "--quiet",
                  "--workers", str(workers)]
    parser = train.get_args_parser()
    for split, argv in [("train", train_run), ("val", train_run), ("val", evaluation)]:
        path = root / "train" / "data" / first[split]
        good = path.read_bytes()
        path.write_bytes(good[: len(good) // 2])  # truncated
        capsys.readouterr()
        assert run_cli(train.main, parser.parse_args(argv)) == 2
        err = capsys.readouterr().err.strip()
        assert first[split] in err and "\n" not in err and "Traceback" not in err, (split, err)
        path.write_bytes(good)


def test_evaluate_mode_prints_the_iou_table(data_root, capsys):
    root = data_root("eval")
    row = run_script("train", root, "--epochs", "1", "--iters_per_epoch", "1", "--crop_size", "32")
    capsys.readouterr()
    import train

    args = train.get_args_parser().parse_args(["--data_root", str(root), "--backbone", "resnet18", "--exp", "t",
                                               "--device", "cpu", "--workers", "0", "--quiet"])
    metrics = train.main(args)
    out = capsys.readouterr().out
    assert "deeplabv3_resnet18_t_best.pth" in out and "mIoU (1..3)" in out and "3 coix" in out
    model, _ = ckpt.load_model(root / "model" / "deeplabv3_resnet18_t_best.pth")
    conf = independent_confusion(model, root)
    assert_same_counts(metrics, conf, tolerance=2)
    assert metrics["mIoU"] == pytest.approx(row["mIoU"])
    for c, name in enumerate(["0 other", "1 tobacco", "2 corn", "3 coix"]):  # the table's pixel counts
        line = next(ln for ln in out.splitlines() if ln.startswith(name))
        assert int(line.split()[-2]) == conf[c].sum()


def test_user_errors_are_one_line(tmp_path, tiles, capsys):
    import train

    parser = train.get_args_parser()
    cases = [
        (tiny_args(tmp_path / "empty", "--epochs", "1"), "tiles.csv: file not found"),
        (tiny_args(tiles, "--crop_size", "40"), "crop size 40 must be a positive multiple of 32"),
        (tiny_args(tiles, "--backbone", "resnet9"), "unknown backbone 'resnet9' for deeplabv3"),
        (tiny_args(tiles, "--resume", str(tmp_path / "none.pth")), "none.pth: checkpoint not found"),
        (tiny_args(tiles, "--sync_bn"), "--sync_bn needs CUDA"),
        (["--data_root", str(tmp_path), "--checkpoint", str(tmp_path / "x.pth"), "--device", "cpu"],
         "x.pth: checkpoint not found"),
    ]
    for argv, message in cases:
        assert run_cli(train.main, parser.parse_args(argv)) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    with pytest.raises(InputError, match="no \\*_best.pth"):
        ckpt.find_best(tmp_path)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="bad.pth: not a PyTorch checkpoint"):
        ckpt.load_model(bad)


def test_unet_script_runs_from_the_repo_root(tmp_path):
    """``python Unet_resnet34/train.py`` imports the repository's packages; a user error is one line, exit 2."""
    proc = subprocess.run([sys.executable, "Unet_resnet34/train.py", "--train", "--data_root", str(tmp_path),
                           "--device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "tiles.csv: file not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_ddp_two_cpu_processes(data_root):
    """torchrun with 2 gloo processes: both train their shard, rank 0 alone writes checkpoint and logs, and the
    validation the two processes share gives the metrics of one process validating the saved model alone;
    so does evaluating that checkpoint (without --train) with 2 processes."""
    root = data_root("ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = [*torchrun, "train.py", *tiny_args(root, "--epochs", "1", "--iters_per_epoch", "2", "--crop_size", "32")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es) on cpu (DDP, gloo)" in proc.stdout and proc.stdout.count("epoch 1/1:") == 1  # rank 0 prints alone
    state = torch.load(root / "model" / "deeplabv3_resnet18_t_last.pth", weights_only=True)
    assert state["epoch"] == 1 and not any(k.startswith("module.") for k in state["model"])
    assert not list((root / "model").glob(".*.part"))
    best = root / "model" / "deeplabv3_resnet18_t_best.pth"
    model, _ = ckpt.load_model(best)
    assert not model.training
    conf = independent_confusion(model, root)
    assert_same_counts(state["metrics"], conf, tolerance=2)

    cmd = [*torchrun, "train.py", "--data_root", str(root), "--checkpoint", str(best), "--device", "cpu",
           "--workers", "0", "--threads", "1", "--quiet"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("validation tiles") == 1, proc.stdout  # rank 0 prints alone
    for c, name in enumerate(["0 other", "1 tobacco", "2 corn", "3 coix"]):  # pixel counts summed once, not twice
        cells = next(ln for ln in proc.stdout.splitlines() if ln.startswith(name)).split()
        assert int(cells[-2]) == conf[c].sum() and abs(int(cells[-1]) - conf[:, c].sum()) <= 2, (name, cells, conf)


# ---- a class absent from the validation split ---------------------------------------------------


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


# ---- learning-rate warm-up and the training tricks' flags ---------------------------------------


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


# ---- the training tiles' statistics in the checkpoint --------------------------------------------


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
