"""Checkpoints: their layout (built and read back here only), atomic saving, random states, and
rebuilding a model from a file.

A checkpoint is a dict loadable with ``torch.load(path, weights_only=True)`` (:func:`training_state`)::

    model        state_dict of the weights to predict with (SWA: the averaged model)
    args         the run's flags as a plain dict (str/int/float/bool/None/list)
    epoch        number of epochs completed (1-based)
    optimizer    optimizer state_dict
    metrics      validation metrics of that epoch ({} when not validated)
    scheduler    learning-rate schedule state_dict
    scaler       AMP gradient scaler state_dict
    hooks        {hook name: hook state} (e.g. SWA's averaged model)
    rng          random generator states (:func:`get_rng_state`)
    best_miou    best validation mIoU so far
    history      the run's log rows so far
    train_model  the optimised weights, when they differ from ``model`` (SWA)
    input_stats  per-channel mean and std of the training tiles' valid pixels
                 (:func:`cropmap.data.radiometry.tile_stats`; ``predict.py --radiometry match``)

Files: ``{data_root}/model/{model}_{backbone}_{exp}_epoch{N}.pth``, ``..._last.pth``, ``..._best.pth``
(:func:`cropmap.core.layout.checkpoint_path`).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cropmap.core.errors import InputError, short
from cropmap.data.normalize import LEGACY_INPUT_NORM
from cropmap.core.files import atomic_path

def plain_args(args) -> dict:
    """A Namespace or dict of flags as a plain dict that ``weights_only`` loading accepts.

    Values other than str/int/float/bool/None and lists/tuples of them become strings.
    """
    items = vars(args).items() if not isinstance(args, dict) else args.items()

    def plain(v):
        if v is None or isinstance(v, (str, int, float, bool)):
            return v
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return str(v)

    return {str(k): plain(v) for k, v in items}


#: Entries a checkpoint needs to resume training, beside ``model`` and ``args``.
RESUME_KEYS = ("optimizer", "scheduler", "epoch", "rng")
#: Flags that fix the model's shape: a resumed run must have the checkpoint's.
MODEL_FLAGS = ("model", "backbone", "num_classes", "output_stride", "input_norm")
#: Flags added since the first checkpoints, with the value those checkpoints were trained with: a checkpoint
#: without one of them is read (:func:`load_model`) and resumed as if it said this.
LEGACY_FLAGS = {"input_norm": LEGACY_INPUT_NORM}


def training_state(*, model: nn.Module, args, epoch: int, optimizer, metrics: dict, scheduler, scaler,
                   hooks: dict, best_miou: float, history: list[dict], train_model: nn.Module | None = None,
                   input_stats: dict | None = None) -> dict:
    """The checkpoint after ``epoch`` (1-based) epochs: the layout of the module docstring."""
    state = {
        "model": model.state_dict(),
        "args": plain_args(args),
        "epoch": int(epoch),
        "optimizer": optimizer.state_dict(),
        "metrics": metrics,
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "hooks": hooks,
        "rng": get_rng_state(),
        "best_miou": best_miou,
        "history": list(history),
    }
    if input_stats is not None:
        state["input_stats"] = input_stats
    if train_model is not None and train_model is not model:
        state["train_model"] = train_model.state_dict()
    return state


def load_for_resume(path: str | os.PathLike, args) -> dict:
    """A checkpoint to resume ``args``' run from, loaded on the CPU (every entry, RNG states included;
    ``load_state_dict`` moves weights and optimizer state to their device). :class:`InputError` when it
    is not resumable or its model flags differ from ``args``."""
    state = load_checkpoint(path, map_location="cpu")
    saved = state["args"]
    for key in MODEL_FLAGS:
        if key in saved and saved[key] != getattr(args, key):
            raise InputError(f"{path}: checkpoint has --{key} {saved[key]}, this run {getattr(args, key)}")
    for key in RESUME_KEYS:
        if key not in state:
            raise InputError(f"{path}: no '{key}' entry, cannot resume from it")
    return state


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary name in the same folder, then rename: never a half-written file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def _load_error(path: Path, err: Exception) -> str:
    """What a file that ``torch.load(weights_only=True)`` refused is not, as one line."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        return f"{path}: not a checkpoint (empty file)"
    if not head.startswith((b"PK", b"\x80")):  # a zip archive (torch.save) or a legacy pickle
        return f"{path}: not a PyTorch checkpoint (neither the zip archive of torch.save nor a legacy torch file)"
    text = str(err)
    if "can still be loaded" in text or "Unsupported global" in text:
        return (f"{path}: not a cropmap checkpoint (it stores Python objects, not only tensors and plain values, "
                "e.g. a whole pickled model; cropmap checkpoints load with torch.load(weights_only=True))")
    return f"{path}: not a complete PyTorch file (damaged or truncated)"


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """``torch.load(path, weights_only=True)``; :class:`InputError` if missing or not a cropmap checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt file, not a torch file, or unsafe content
        raise InputError(_load_error(path, e)) from None
    if not isinstance(state, dict) or "model" not in state or "args" not in state:
        raise InputError(f"{path}: not a cropmap checkpoint (no 'model' and 'args' entries; encoder weights of "
                         "a plain state_dict go to --pretrained)")
    return state


def _has_aux(state_dict: dict) -> bool:
    return any(k.startswith(("aux_classifier.", "aux_head.")) for k in state_dict)


def load_model(path: str | os.PathLike, device="cpu", aux: bool = False, state: dict | None = None) -> tuple[nn.Module, dict]:
    """Rebuild a checkpoint's model from its saved flags and load its weights.

    Args:
        path: checkpoint file.
        device: where to put the model.
        aux: keep the auxiliary head (if the checkpoint has one); off by default, since prediction
            only needs ``"out"``.
        state: the checkpoint already read by :func:`load_checkpoint` (it is not read again); default: read ``path``.

    Returns:
        ``(model in eval mode on device, args dict with :data:`LEGACY_FLAGS` filled in)``;
        ``model(x float32 [B, 3, H, W])`` returns ``{"out": logits [B, num_classes, H, W]}``.

    Raises:
        InputError: missing/corrupt file, or weights that do not fit the saved model flags.
    """
    from models import build_model

    state = load_checkpoint(path) if state is None else state
    args = state["args"]
    weights = state["model"]
    keep_aux = aux and _has_aux(weights)
    if not keep_aux:
        weights = {k: v for k, v in weights.items() if not k.startswith(("aux_classifier.", "aux_head."))}
    try:
        model = build_model(
            args["model"],
            args["backbone"],
            num_classes=int(args.get("num_classes", 4)),
            pretrained=None,
            output_stride=int(args.get("output_stride", 16)),
            aux=keep_aux,
        )
        model.load_state_dict(weights)
    except (KeyError, ValueError, RuntimeError) as e:
        raise InputError(f"{path}: weights do not fit the saved model flags ({short(e)})") from None
    return model.to(device).eval(), {**LEGACY_FLAGS, **args}


def find_best(model_dir: str | os.PathLike) -> Path:
    """The newest (by modification time) ``*_best.pth`` in ``model_dir``; :class:`InputError` if none."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(f"{model_dir}: model folder not found (train a model first)")
    found = sorted(model_dir.glob("*_best.pth"), key=lambda p: (p.stat().st_mtime, p.name))
    if not found:
        raise InputError(f"{model_dir}: no *_best.pth checkpoint (train a model first)")
    return found[-1]


# ---- random states ------------------------------------------------------------------------------


def get_rng_state() -> dict:
    """Python, numpy, torch (and CUDA) generator states as tensors (``weights_only``-loadable)."""
    version, internal, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": torch.tensor(internal, dtype=torch.int64),
        "python_version": int(version),
        "python_gauss": gauss,
        "numpy_keys": torch.from_numpy(np.ascontiguousarray(np_keys).view(np.uint8).copy()),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` saved (its tensors may have been loaded onto any CPU-copyable
    device; they are brought to the CPU first). A CUDA state is restored only on a machine with as many
    GPUs; a CPU-only machine ignores it."""
    cpu = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in state.items() if k != "cuda"}
    random.setstate((cpu["python_version"], tuple(int(x) for x in cpu["python"].tolist()), cpu["python_gauss"]))
    keys = cpu["numpy_keys"].numpy().view(np.uint32)
    np.random.set_state(("MT19937", keys, cpu["numpy_pos"], cpu["numpy_has_gauss"], cpu["numpy_gauss"]))
    torch.set_rng_state(cpu["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = [t.cpu() for t in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
