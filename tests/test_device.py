"""The device rule and the mixed-precision rule (cropmap.core.device), on a CPU with CUDA faked.

``torch.cuda.set_device`` refuses a device without an index (``ValueError: Expected a torch.device with a
specified index``), which stopped every training script on a GPU machine; the fake below refuses it the
same way and records what it receives.
"""

import pytest
import torch

from cropmap.train import checkpoint as ckpt
from cropmap.core import device as devices
from cropmap.train import engine
from cropmap.core.cli import run_cli
from cropmap.core.errors import InputError


class FakeCuda:
    """Two visible GPUs, the second current; ``set_device`` checks its argument as PyTorch does."""

    def __init__(self, monkeypatch, count=2, current=1, bf16=True):
        self.received = []
        self.count, self.current, self.bf16 = count, current, bf16
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "set_device", self.set_device)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: self.bf16)
        for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR"):
            monkeypatch.delenv(var, raising=False)

    def set_device(self, device):
        if isinstance(device, str):
            device = torch.device(device)
        if isinstance(device, torch.device) and (device.type != "cuda" or device.index is None):
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")
        self.received.append(device if isinstance(device, int) else device.index)


class Stop(Exception):
    """Raised by a fake model loader once it has seen the device (the fake GPU cannot hold a model)."""


@pytest.mark.parametrize("name, index", [(None, 1), ("cuda", 1), ("cuda:0", 0), ("cuda:1", 1)])
def test_plain_run_sets_an_indexed_device(monkeypatch, name, index):
    cuda = FakeCuda(monkeypatch)
    rank, world_size, device = engine.init_distributed(name)
    assert (rank, world_size) == (0, 1)
    assert device == torch.device("cuda", index)
    assert cuda.received == [index]


@pytest.mark.parametrize("name", [None, "cuda", "cuda:0"])
def test_torchrun_uses_local_rank(monkeypatch, name):
    cuda = FakeCuda(monkeypatch, current=0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    backends = []
    monkeypatch.setattr(engine.dist, "init_process_group", lambda backend, **kw: backends.append(backend))
    _, world_size, device = engine.init_distributed(name)
    assert device == torch.device("cuda", 1) and cuda.received == [1]
    assert backends == ["nccl"] and world_size == 2


def test_torchrun_with_one_process_starts_the_process_group(monkeypatch):
    """``torchrun --nproc_per_node 1`` runs the DDP path too (what the GPU check's NCCL step relies on)."""
    FakeCuda(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    backends = []
    monkeypatch.setattr(engine.dist, "init_process_group", lambda backend, **kw: backends.append(backend))
    assert engine.init_distributed("cpu")[2] == torch.device("cpu")
    assert backends == []  # LOCAL_RANK alone (no rendezvous address) is not torchrun
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert engine.init_distributed("cpu")[2] == torch.device("cpu")
    assert backends == ["gloo"]


def test_cpu_and_bad_devices(monkeypatch):
    cuda = FakeCuda(monkeypatch)
    assert devices.select_device("cpu") == torch.device("cpu") and cuda.received == []
    for name, message in [("cuda:2", "no CUDA device 2"), ("tpu", "expected cpu, cuda or cuda:N"),
                          ("mps", "expected cpu, cuda or cuda:N")]:
        with pytest.raises(InputError, match=message):
            devices.select_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.select_device(None) == torch.device("cpu")
    with pytest.raises(InputError, match="CUDA is not available"):
        devices.select_device("cuda")
    assert cuda.received == []


def test_evaluation_without_train_uses_the_same_rule(monkeypatch, tmp_path, capsys):
    import train

    cuda = FakeCuda(monkeypatch)
    seen = []

    def load_model(path, device="cpu", aux=False):
        seen.append(torch.device(device))
        raise Stop

    monkeypatch.setattr(ckpt, "load_model", load_model)
    args = train.get_args_parser().parse_args(["--data_root", str(tmp_path), "--checkpoint", "x.pth", "--quiet"])
    with pytest.raises(Stop):
        train.main(args)
    assert seen == [torch.device("cuda", 1)] and cuda.received == [1]


def test_predict_uses_the_same_rule(monkeypatch, tmp_path):
    import predict

    cuda = FakeCuda(monkeypatch)
    seen = []

    def load_model(path, device="cpu", aux=False, state=None):
        seen.append(torch.device(device))
        raise Stop

    monkeypatch.setattr(ckpt, "load_model", load_model)
    monkeypatch.setattr(ckpt, "load_checkpoint", lambda path, map_location="cpu": {"args": {}})
    (tmp_path / "test").mkdir()  # predict.py checks its windows' index before it loads the model
    (tmp_path / "test" / "tiles.csv").write_text(
        "name,image,y,x,size,valid_pixels,height,width\n"
        "image_3_0_0.png,image_3,0,0,64,4096,64,64\nimage_4_0_0.png,image_4,0,0,64,4096,64,64\n")
    for argv, index in ([], 1), (["--device", "cuda"], 1), (["--device", "cuda:0"], 0):
        args = predict.get_args_parser().parse_args(["--data_root", str(tmp_path), "--checkpoint", "x.pth", *argv])
        with pytest.raises(Stop):
            predict.main(args)
        assert seen[-1] == torch.device("cuda", index) and cuda.received[-1] == index
    args = predict.get_args_parser().parse_args(["--data_root", str(tmp_path), "--checkpoint", "x.pth",
                                                 "--device", "cuda:7"])
    assert run_cli(predict.main, args) == 2


def test_one_mixed_precision_rule(monkeypatch):
    cuda = FakeCuda(monkeypatch, bf16=True)
    gpu = torch.device("cuda", 0)
    assert devices.amp_dtype(gpu) is torch.bfloat16
    cuda.bf16 = False
    assert devices.amp_dtype(gpu) is torch.float16
    assert engine.amp_dtype is devices.amp_dtype  # training and evaluation use the rule
    assert devices.amp_dtype("cpu") is torch.bfloat16
    assert devices.amp_dtype(gpu, enabled=False) is None


def _dtype_probe():
    """A tiny model whose conv records the dtype of its output, and the list it fills."""
    seen = []
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return conv.eval(), seen


def test_prediction_and_evaluation_autocast_in_the_rule_dtype():
    """forward_probs (prediction) and evaluate (validation) run the forward in amp_dtype('cpu') = bf16."""
    from cropmap.predict.inference import forward_probs

    model, seen = _dtype_probe()
    x = torch.randn(2, 3, 32, 32)
    probs = forward_probs(model, x, amp=True, tta="flip")
    assert seen == [devices.amp_dtype("cpu")] * 3 and probs.dtype == torch.float32
    seen.clear()
    forward_probs(model, x, amp=False)
    assert seen == [torch.float32]
    seen.clear()
    loader = [(x, torch.zeros(2, 32, 32, dtype=torch.int64))]
    engine.evaluate(model, loader, "cpu", num_classes=4, amp_dtype=engine.amp_dtype(torch.device("cpu"), True))
    assert seen == [torch.bfloat16]


def test_channels_last_rule_and_model():
    """channels_last: on CUDA for every model; on the CPU for DeepLabv3 (faster there), not the U-Net (slower)."""
    from _train_fixtures import tiny_args

    cpu = torch.device("cpu")
    assert engine.channels_last(cpu, "deeplabv3") and not engine.channels_last(cpu, "unet")
    assert engine.channels_last(torch.device("cuda"), "unet") and engine.channels_last(torch.device("cuda", 1), "deeplabv3")
    assert not engine.channels_last(torch.device("meta"), "deeplabv3")
    args = engine.get_args_parser().parse_args(tiny_args("unused"))
    model, net = engine.build_model(args, cpu)
    w = model.backbone.conv1.weight  # [64, 3, 7, 7]
    assert net is model and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
