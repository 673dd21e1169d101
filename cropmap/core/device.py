"""The one device rule and the one mixed-precision rule of every script (training, evaluation, prediction,
benchmarks).

* :func:`select_device` turns ``--device`` (``cuda``, ``cuda:N``, ``cpu`` or nothing) into an *indexed*
  device and makes a CUDA device the current one. ``torch.cuda.set_device`` and NCCL need an index, and
  a bare ``cuda`` would leave it to whichever device happens to be current.
* :func:`amp_dtype` is the autocast dtype of ``--amp``: bfloat16 where the GPU supports it, else
  float16 (which needs a gradient scaler in training); bfloat16 on the CPU.

Under ``torchrun`` (``LOCAL_RANK`` set) every process uses ``cuda:LOCAL_RANK``, whatever index was given.
"""

from __future__ import annotations

import argparse
import os

import torch

from cropmap.core.cli import device_name

from cropmap.core.errors import InputError


def local_rank() -> int | None:
    """``LOCAL_RANK`` of a ``torchrun`` process, or None outside ``torchrun``."""
    value = os.environ.get("LOCAL_RANK")
    return None if value in (None, "") else int(value)


def resolve_device(name: str | None = None) -> torch.device:
    """The device ``--device name`` means, always with an index for CUDA; nothing is changed.

    Args:
        name: ``"cuda"``, ``"cuda:N"``, ``"cpu"`` or None (``cuda`` when available, else ``cpu``).

    Returns:
        ``cpu``, or ``cuda:i`` with ``i`` = ``LOCAL_RANK`` under ``torchrun``, else ``N`` when given,
        else ``torch.cuda.current_device()``.

    Raises:
        InputError: not ``cpu``, ``cuda`` or ``cuda:N`` (:func:`cropmap.core.cli.device_name`, the parse-time
            check of the same spelling), CUDA not available, or an index beyond the visible GPUs.
    """
    if name is None or str(name).strip() == "":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device_name(str(name)))
    except argparse.ArgumentTypeError as e:
        raise InputError(f"--device: {e}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    rank = local_rank()
    if rank is not None:
        index = rank
    elif device.index is not None:
        index = device.index
    else:
        index = torch.cuda.current_device()
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        where = f"LOCAL_RANK {rank}" if rank is not None else f"--device {name}"
        raise InputError(f"{where}: no CUDA device {index} (this machine shows {count})")
    return torch.device("cuda", index)


def select_device(name: str | None = None) -> torch.device:
    """:func:`resolve_device`, and for CUDA make it the current device (``torch.cuda.set_device``), so that
    pinned memory, streams, events and NCCL use the same GPU as the model."""
    device = resolve_device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def _cuda_bf16_supported() -> bool:
    try:  # PyTorch >= 2.3: do not count emulated (slow) bf16 on pre-Ampere GPUs
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:
        return bool(torch.cuda.is_bf16_supported())


def amp_dtype(device: torch.device | str, enabled: bool = True) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` on ``device``: None when off; CUDA: bfloat16 where the current GPU
    supports it, else float16; other devices: bfloat16."""
    if not enabled:
        return None
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if _cuda_bf16_supported() else torch.float16
    return torch.bfloat16
