"""The one training loop behind ``train.py``, ``train_focalloss.py``, ``train_swa.py``,
``train_multiscale.py`` and ``Unet_resnet34/train.py``; read top to bottom:

* builders: :func:`check_args`, :func:`build_data`, :func:`build_model`, :func:`build_optimizer` -
  what a run is made of, each from the flags; :func:`restore_run_flags` - a resumed run's flags;
* :func:`evaluate` - confusion matrix (and mean loss) of a model over a loader;
* :class:`Trainer` - one run: :meth:`~Trainer.train_one_epoch`, :meth:`~Trainer.validate`,
  :meth:`~Trainer.fit` (the epochs, with checkpoints and logs), :meth:`~Trainer.load` (resume);
* :func:`main` - ``--train``: train; otherwise evaluate a checkpoint on the validation split;
* :func:`get_args_parser` - the flags every training script shares.

Each entry script builds its parser on :func:`get_args_parser` (``set_defaults``) and calls :func:`main`.
A variant that needs new logic adds a flag here or a :class:`~cropmap.train.hooks.Hook`, never a copy of the loop.
Checkpoints are laid out by :mod:`cropmap.train.checkpoint`, logs written by :mod:`cropmap.train.runlog`.

Distributed: under ``torchrun --nproc_per_node N`` each process trains on its share of every epoch's
batches (DistributedDataParallel, NCCL on GPUs, gloo on CPU); ``--batch_size`` is per process; only
rank 0 writes files.

Reproducibility: the model is initialised from ``--seed``; every epoch's tile order and augmentations
are a function of ``(seed, epoch)`` (see :mod:`cropmap.data.dataset`); checkpoints carry the optimizer,
schedules, hook states (SWA), AMP scaler and random states, so a run resumed with ``--resume`` from
``..._last.pth`` ends with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset

from cropmap.train import checkpoint as ckpt
from cropmap.core.cli import (ArgumentParser, add_hardware_args, experimental_group, nonneg_float, nonneg_int, num_classes_int,
                              plain_flags, positive_float, positive_int, positive_int_list, progress as progress_bar,
                              ranged, seed_int, typed_flags, unit_float)
from cropmap.core.errors import InputError, short
from cropmap.core.device import amp_dtype, local_rank, select_device
from cropmap.data.dataset import (MultiScaleBatchSampler, TileDataset, checked, collate, oversample_weights,
                                  shard_indices)
from cropmap.data.normalize import INPUT_NORMS
from cropmap.core.files import check_output_dir, copy_atomic
from cropmap.train.hooks import EMAHook, Hook, SWAHook
from cropmap.core.layout import checkpoint_path, model_dir, run_name
from cropmap.core.metrics import ConfusionMatrix, exclude_absent
from cropmap.data.radiometry import tile_stats
from cropmap.raster import IGNORE
from cropmap.train.runlog import epoch_row, write_logs

__all__ = ["Hook", "SWAHook", "Trainer", "evaluate", "get_args_parser", "main"]


# ---- builders -----------------------------------------------------------------------------------


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise InputError(message)


def check_args(args: argparse.Namespace) -> tuple[list[int], list[int]]:
    """Refuse flags that cannot work together, before any work; returns the crop sides that successive
    batches cycle through and their batch sizes (``--scales`` / ``--batch_sizes``, resolved)."""
    from losses import LOSSES
    from models import check_backbone

    try:
        check_backbone(args.model, args.backbone)
    except ValueError as e:
        raise InputError(f"--model {args.model} --backbone {args.backbone}: {e}") from None
    _check(args.loss in LOSSES, f"--loss {args.loss!r}: unknown; valid: {', '.join(LOSSES)}")
    _check(not (args.label_smoothing == "edge" and args.loss == "lovasz"),
           "--label_smoothing edge smooths the pixel term (ce, focal or focal+lovasz); --loss lovasz has none")
    _check(args.epochs >= 1, f"--epochs must be >= 1, got {args.epochs}")
    _check(args.num_classes >= 2, f"--num_classes must be >= 2, got {args.num_classes}")
    scales = list(args.scales or [args.crop_size])
    if args.batch_sizes:
        batch_sizes = list(args.batch_sizes)
    else:  # equal pixels per batch as the first scale
        _check(args.batch_size >= 2,
               f"--batch_size {args.batch_size}: training needs at least 2 images per batch (BatchNorm)")
        batch_sizes = [max(2, int(args.batch_size * (scales[0] / s) ** 2)) for s in scales]
    _check(len(batch_sizes) == len(scales),
           f"--batch_sizes {batch_sizes} needs one entry per --scales entry {scales}")
    for s in scales:
        _check(s >= 32 and s % 32 == 0, f"crop size {s} must be a positive multiple of 32")
    for b in batch_sizes:
        _check(b >= 2, f"batch size {b} must be >= 2 (BatchNorm in training mode needs two images)")
    _check(args.oversample >= 0, f"--oversample must be >= 0, got {args.oversample}")
    _check(0 < args.scale_min <= args.scale_max,
           f"need 0 < --scale_min <= --scale_max, got {args.scale_min}, {args.scale_max}")
    return scales, batch_sizes


#: Flags that a resumed run (``--resume``) may change by typing them again: how long, where files go,
#: how often it validates and saves, on what hardware. Every other flag shapes the model, the data or
#: the optimisation, and is taken from the checkpoint (typed again, it must equal the checkpoint's).
RESUME_MAY_CHANGE = ("epochs", "exp", "data_root", "val_every", "save_every", "workers", "device", "threads",
                     "amp", "sync_bn", "quiet")
#: Flags never taken from a checkpoint: they say what this command does.
_COMMAND_FLAGS = ("train", "resume", "checkpoint")


def _same(a, b) -> bool:
    return ckpt.plain_args({"v": a})["v"] == ckpt.plain_args({"v": b})["v"]


def restore_run_flags(args: argparse.Namespace) -> None:
    """With ``--train --resume CKPT``: take every flag of the run from the checkpoint unless typed again.

    A flag typed again keeps its typed value if it is one of :data:`RESUME_MAY_CHANGE`; any other typed
    flag must equal the checkpoint's (:class:`InputError` otherwise: it would change the model, the
    data or the optimisation of a run that is meant to continue). Flags the checkpoint does not know
    (added since) keep their value. Which flags were typed comes from :func:`cropmap.core.cli.typed_flags`;
    a namespace not parsed by :func:`get_args_parser` counts every flag as typed. Runs once per namespace.
    """
    if not (args.train and args.resume) or getattr(args, "_restored", False):
        return
    saved = {**ckpt.LEGACY_FLAGS, **ckpt.load_checkpoint(args.resume)["args"]}
    current = plain_flags(args)
    typed = typed_flags(args)
    typed = set(current) if typed is None else typed
    for key, value in saved.items():
        if key not in current or key in _COMMAND_FLAGS:
            continue
        if key not in typed:
            setattr(args, key, value)
        elif key not in RESUME_MAY_CHANGE and not _same(current[key], value):
            raise InputError(f"{args.resume}: the run has --{key} {value}, this command {current[key]}; a resumed "
                             "run keeps the flags of its model, data and optimisation (see --resume in --help)")
    args._restored = True


#: Single-process training checks the loss every this many iterations (one device sync each); under DDP
#: the check is at the end of each epoch, on the loss summed over processes, so that all stop together.
FINITE_CHECK_EVERY = 10


def _check_finite(loss_sum: torch.Tensor, epoch: int, iterations: int, amp: bool) -> None:
    """:class:`InputError` when the summed training loss is NaN or infinite (checked before anything is saved)."""
    value = float(loss_sum)
    if not math.isfinite(value):
        raise InputError(
            f"epoch {epoch + 1}: the training loss became {value} within {iterations} iteration(s); training "
            "stopped and nothing of this epoch was saved (earlier checkpoints are kept); try a lower --base_lr"
            + (" or no --amp" if amp else ""))


def seed_everything(seed: int) -> None:
    """Seed torch (model initialisation), Python's and numpy's global generators."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


@dataclass
class Data:
    """What :func:`build_data` makes: the splits, the batch sampler, the loaders, iterations per epoch."""

    train_set: TileDataset
    val_set: TileDataset
    sampler: MultiScaleBatchSampler
    train_loader: DataLoader
    val_loader: DataLoader
    iters_per_epoch: int


def build_data(args: argparse.Namespace, scales: list[int], batch_sizes: list[int], rank: int = 0,
               world_size: int = 1, pin_memory: bool = False) -> Data:
    """The training tiles (augmented, sampled by :class:`MultiScaleBatchSampler`, optionally oversampled)
    and this process's share of the validation tiles, as loaders of :func:`~cropmap.data.dataset.collate` batches."""
    train_set = TileDataset(args.data_root, "train", args.num_classes, augment=True, crop_size=scales[0],
                            scale_range=(args.scale_min, args.scale_max), color_jitter=args.color_jitter,
                            acquisition_jitter=args.acquisition_jitter, input_norm=args.input_norm)
    val_set = TileDataset(args.data_root, "val", args.num_classes, augment=False, input_norm=args.input_norm)
    weights = None
    if args.oversample > 0:
        weights = oversample_weights(train_set.rows, args.num_classes, args.oversample)
    sampler = MultiScaleBatchSampler(len(train_set), scales, batch_sizes, weights,
                                     seed=args.seed, rank=rank, world_size=world_size)
    _check(len(sampler) > 0, f"{len(train_set)} training tiles are fewer than one batch per process ({batch_sizes[0]})")
    # workers live as long as the trainer: no start-up (imports, forks) at every epoch and validation
    keep = args.workers > 0
    train_loader = DataLoader(train_set, batch_sampler=sampler, num_workers=args.workers,
                              collate_fn=collate, pin_memory=pin_memory, persistent_workers=keep)
    val_part = Subset(val_set, shard_indices(len(val_set), rank, world_size))
    val_loader = DataLoader(val_part, batch_size=max(batch_sizes), shuffle=False, num_workers=args.workers,
                            collate_fn=collate, pin_memory=pin_memory, persistent_workers=keep)
    iters = len(sampler)
    if args.iters_per_epoch:
        iters = min(iters, args.iters_per_epoch)
    return Data(train_set, val_set, sampler, train_loader, val_loader, iters)


def channels_last(device: torch.device, model: str) -> bool:
    """Whether ``model`` (``--model``) and its batches go channels_last on ``device``: on CUDA always (tensor
    cores); on the CPU for DeepLabv3 only (oneDNN; on the development machine, torch 2.14, a training step of
    DeepLabv3-ResNet18 is 1.17x faster at 256 px, while the U-Net's is 0.76-0.89x as fast at 128-256 px)."""
    return device.type == "cuda" or (device.type == "cpu" and model == "deeplabv3")


def build_model(args: argparse.Namespace, device: torch.device, world_size: int = 1) -> tuple[nn.Module, nn.Module]:
    """The model of ``--model/--backbone`` on ``device`` (channels_last where :func:`channels_last` says), and the
    module to call in training: the model itself, or its DistributedDataParallel wrapper under torchrun."""
    from models import build_model as build

    try:
        pretrained = None if args.resume else args.pretrained  # resumed: the weights come from the checkpoint
        model = build(args.model, args.backbone, args.num_classes, pretrained, args.output_stride,
                      aux=args.aux_weight > 0)
    except (ValueError, FileNotFoundError) as e:
        raise InputError(str(e)) from None
    if args.sync_bn and _is_dist():
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if channels_last(device, args.model):
        model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if _is_dist():  # torchrun, even with one process
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return model, net


def lr_factor(total_iters: int, power: float, warmup_iters: int = 0) -> Callable[[int], float]:
    """The learning-rate multiplier of iteration ``it``: poly decay ``(1 - it / total) ** power``, times a
    linear warm-up ``min(1, (it + 1) / warmup_iters)`` over the first ``warmup_iters`` iterations."""

    def factor(it: int) -> float:
        poly = (1.0 - min(it, total_iters) / total_iters) ** power
        return poly * min(1.0, (it + 1) / warmup_iters) if warmup_iters > 0 else poly

    return factor


def build_optimizer(args: argparse.Namespace, model: nn.Module, total_iters: int):
    """``--optimizer`` (SGD with momentum, or AdamW) with two parameter groups (backbone at ``--base_lr``,
    head at ``--base_lr * --last_mult``) and the schedule :func:`lr_factor` (poly decay with
    ``--poly_power`` after ``--warmup_iters`` of linear warm-up), stepped per iteration."""
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    groups = [
        {"params": [p for p in model.parameters() if id(p) in backbone_ids], "lr": args.base_lr},
        {"params": [p for p in model.parameters() if id(p) not in backbone_ids], "lr": args.base_lr * args.last_mult},
    ]
    if args.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=args.base_lr, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.SGD(groups, lr=args.base_lr, momentum=args.momentum, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(total_iters, args.poly_power, args.warmup_iters))
    return optimizer, scheduler


# ---- devices ------------------------------------------------------------------------------------

def init_distributed(device_arg: str | None) -> tuple[int, int, torch.device]:
    """Pick this process's device (:func:`cropmap.core.device.select_device`: CUDA always indexed,
    ``cuda:LOCAL_RANK`` under ``torchrun``) and start the process group under ``torchrun``.

    Under ``torchrun`` (``LOCAL_RANK`` and ``MASTER_ADDR`` set) the process group is started even for one
    process, so that ``torchrun --nproc_per_node 1`` runs the same DistributedDataParallel path as several.
    Returns ``(rank, world_size, device)``; NCCL on CUDA, gloo on CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = select_device(device_arg)
    torchrun = local_rank() is not None and "MASTER_ADDR" in os.environ
    if (world_size > 1 or torchrun) and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world_size = dist.get_world_size() if dist.is_initialized() else world_size
    return rank, world_size, device


def _is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str,
    num_classes: int = 4,
    criterion: nn.Module | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
    channels_last: bool = False,
) -> tuple[ConfusionMatrix, float]:
    """Run ``model`` (eval mode) over ``loader`` and count its predictions.

    Args:
        model: returns ``{"out": logits [B, C, H, W]}`` (or a logits tensor).
        loader: yields ``(float32 [B, 3, H, W], int64 [B, H, W])`` with 255 = ignore.
        device: where to run.
        num_classes: C.
        criterion: optional loss on the main output; its mean over images is returned.
        amp_dtype: autocast dtype, or None for full precision.
        progress: show a tqdm bar.
        channels_last: feed the batches channels_last (the model should be converted too).

    Returns:
        ``(ConfusionMatrix summed over processes, mean loss or NaN)``.
    """
    device = torch.device(device)
    model.eval()
    cm = ConfusionMatrix(num_classes, device=device)
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, images
    if progress:
        loader = progress_bar(loader, desc="val", leave=False)
    for images, labels in checked(loader):
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = model(images)
        logits = out["out"] if isinstance(out, dict) else out
        cm.update(logits.argmax(1), labels)
        if criterion is not None:
            sums[0] += criterion(logits.float(), labels).detach() * images.shape[0]  # on the device: no sync
        sums[1] += images.shape[0]
    cm.all_reduce()
    if _is_dist():
        dist.all_reduce(sums)
    loss = float(sums[0] / sums[1]) if criterion is not None and sums[1] > 0 else float("nan")
    return cm, loss


# ---- the trainer --------------------------------------------------------------------------------


class _LaggedValue:
    """A scalar on the device, shown on the host without waiting for the device: :meth:`push` starts an
    asynchronous copy, :meth:`read` gives the last copy that has arrived (as text)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.text, self.host, self.event = "...", None, None

    def push(self, value: torch.Tensor) -> None:
        if not self.cuda:
            self.text = f"{float(value):.4f}"
            return
        self.read()
        self.host = torch.empty((), dtype=value.dtype, pin_memory=True)
        self.host.copy_(value.detach(), non_blocking=True)
        self.event = torch.cuda.Event()
        self.event.record()

    def read(self) -> str:
        if self.event is not None and self.event.query():
            self.text, self.event = f"{float(self.host):.4f}", None
        return self.text


def _time_left(history: list[dict], epochs_left: int) -> str:
    """``", about N min left"``: the epochs still to run at the mean time of those run (empty at the end)."""
    if epochs_left <= 0:
        return ""
    seconds = [r["seconds"] for r in history if r.get("seconds")]
    left = epochs_left * sum(seconds) / max(len(seconds), 1) / 60
    return f", about {left:.0f} min left" if left >= 1 else f", about {left * 60:.0f} s left"


class Trainer:
    """One training run, built from the flags of :func:`get_args_parser`.

    Attributes used by hooks: ``args``, ``model`` (the bare module, also under DDP), ``optimizer``,
    ``scheduler`` (poly, stepped per iteration while ``step_scheduler`` is True), ``iters_per_epoch``,
    ``device``, ``rank``, ``world_size``, ``is_main``, ``history`` (one log row per epoch).
    """

    def __init__(self, args: argparse.Namespace, hooks: Iterable[Hook] = ()) -> None:
        from losses import build_loss

        self.args = args
        self.hooks = list(hooks)
        self.scales, self.batch_sizes = check_args(args)
        check_output_dir(model_dir(args.data_root))  # before any work, not at the first save
        if args.threads:
            torch.set_num_threads(args.threads)
        self.rank, self.world_size, self.device = init_distributed(args.device)
        self.is_main = self.rank == 0
        _check(not (args.sync_bn and self.device.type != "cuda"),
               "--sync_bn needs CUDA devices (PyTorch's SyncBatchNorm is GPU-only)")
        seed_everything(args.seed)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.amp_dtype = amp_dtype(self.device, args.amp)

        data = build_data(args, self.scales, self.batch_sizes, self.rank, self.world_size,
                          pin_memory=self.device.type == "cuda")
        self.train_set, self.val_set, self.sampler = data.train_set, data.val_set, data.sampler
        self.train_loader, self.val_loader, self.iters_per_epoch = data.train_loader, data.val_loader, data.iters_per_epoch
        # per-channel statistics of the training tiles, for predict.py --radiometry match
        self.input_stats = tile_stats(args.data_root, self.train_set.rows)
        self.model, self.net = build_model(args, self.device, self.world_size)
        self.criterion = build_loss(args.loss, aux_weight=args.aux_weight, ignore_index=IGNORE,
                                    label_smoothing=args.label_smoothing).to(self.device)
        self.total_iters = args.epochs * self.iters_per_epoch
        self.optimizer, self.scheduler = build_optimizer(args, self.model, self.total_iters)
        self.step_scheduler = True
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        self.model_dir = model_dir(args.data_root)
        self.run_dir = self.model_dir / run_name(vars(args))
        self.start_epoch = 0
        self.best_miou = float("-inf")
        self.history: list[dict] = []
        for h in self.hooks:
            h.setup(self)
        if args.resume:
            self.load(args.resume)

    # ---- steps ----
    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if channels_last(self.device, self.args.model):
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimisation step on a batch (``float32 [B, 3, H, W]``, ``int64 [B, H, W]``); returns the detached loss."""
        images = self._to_device(images)
        labels = labels.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            outputs = self.net(images)
            loss = self.criterion(outputs, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.step_scheduler:
            self.scheduler.step()
        return loss.detach()

    def train_one_epoch(self, epoch: int) -> dict:
        """Train ``epoch`` (0-based); returns ``{"train_loss", "train_images_per_s", "train_seconds"}``."""
        self.sampler.set_epoch(epoch)
        self.step_scheduler = True
        for h in self.hooks:
            h.on_epoch_start(self, epoch)
        self.net.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        images_seen, steps = 0, 0
        start = time.perf_counter()
        # transient bar: the epoch's line in fit() says what it did
        show = self.is_main and not self.args.quiet
        bar = progress_bar(total=self.iters_per_epoch, desc=f"epoch {epoch + 1}/{self.args.epochs}",
                           leave=False, disable=not show)
        shown = _LaggedValue(self.device)
        for i, (images, labels) in enumerate(checked(self.train_loader)):
            if i >= self.iters_per_epoch:
                break
            loss = self.train_step(images, labels)
            loss_sum += loss
            images_seen += images.shape[0]
            steps += 1
            if self.world_size == 1 and steps % FINITE_CHECK_EVERY == 0:
                _check_finite(loss_sum, epoch, steps, self.amp_dtype is not None)
            for h in self.hooks:
                h.on_iteration_end(self, epoch, i, loss)
            bar.update(1)
            if show and (i % 10 == 0 or i == self.iters_per_epoch - 1):  # on CUDA the last loss copied by now: no wait
                shown.push(loss)
                bar.set_postfix(loss=shown.read(), lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
        bar.close()
        seconds = time.perf_counter() - start
        if _is_dist():
            dist.all_reduce(loss_sum)
            steps *= self.world_size
            images_seen *= self.world_size
        _check_finite(loss_sum, epoch, steps // self.world_size, self.amp_dtype is not None)
        return {
            "train_loss": float(loss_sum) / max(steps, 1),
            "train_images_per_s": images_seen / max(seconds, 1e-9),
            "train_seconds": seconds,
        }

    def train_images(self, epoch: int, limit: int) -> Iterator[torch.Tensor]:
        """Up to ``limit`` augmented training batches of ``epoch`` as images on the device (for ``update_bn``)."""
        self.sampler.set_epoch(epoch)
        for i, (images, _) in enumerate(checked(self.train_loader)):
            if i >= limit:
                break
            yield self._to_device(images)

    def average_buffers(self, module: nn.Module) -> None:
        """Average floating-point buffers (BatchNorm statistics) over processes; no-op without DDP."""
        if not _is_dist():
            return
        for b in module.buffers():
            if b.is_floating_point():
                dist.all_reduce(b)
                b.div_(self.world_size)

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Give every process rank 0's buffers (BatchNorm statistics); no-op without DDP.

        Each process updates its running statistics from its own batches, so after an epoch they differ;
        DDP broadcasts rank 0's at each training forward, so this changes no later training step.
        """
        if not _is_dist():
            return
        for b in module.buffers():
            dist.broadcast(b, src=0)

    def validate(self, model: nn.Module) -> dict:
        """Validation metrics of ``model``: ``iou`` list, ``mIoU``, ``mIoU_all``, ``pixel_acc``, ``confusion``, ``val_loss``.

        Every process validates its shard of the tiles with rank 0's model (the one that is saved).
        """
        self.broadcast_buffers(model)
        show = self.is_main and not self.args.quiet
        cm, loss = evaluate(model, self.val_loader, self.device, self.args.num_classes, self.criterion,
                            self.amp_dtype, progress=show, channels_last=channels_last(self.device, self.args.model))
        metrics = exclude_absent(cm.compute())  # a class missing from the validation labels is reported as absent
        metrics["val_loss"] = loss
        self.last_table = cm.table()
        return metrics

    # ---- the loop ----
    def fit(self) -> dict:
        """Train from ``start_epoch`` to ``--epochs``; returns the last epoch's log row."""
        args = self.args
        row: dict = self.history[-1] if self.history else {}
        if self.start_epoch >= args.epochs and self.is_main:
            print(f"nothing to train: the checkpoint has {self.start_epoch} epochs, --epochs is {args.epochs}")
        if self.is_main:
            print(f"training {run_name(vars(args))}: {len(self.train_set)} train / {len(self.val_set)} val tiles, "
                  f"{self.iters_per_epoch} iterations per epoch, scales {self.scales}, batch sizes {self.batch_sizes}, "
                  f"{self.world_size} process(es) on {self.device}"
                  + (f" (DDP, {dist.get_backend()})" if _is_dist() else "")
                  + f", amp {str(self.amp_dtype).replace('torch.', '') if self.amp_dtype else 'off'}", flush=True)
        for epoch in range(self.start_epoch, args.epochs):
            start = time.perf_counter()
            stats = self.train_one_epoch(epoch)
            for h in self.hooks:
                h.on_epoch_end(self, epoch)
            eval_model = self.model
            for h in self.hooks:
                m = h.eval_model(self, epoch)
                if m is not None:
                    eval_model = m
            last = epoch + 1 == args.epochs
            metrics: dict = {}
            if last or (args.val_every > 0 and (epoch + 1) % args.val_every == 0):
                metrics = self.validate(eval_model)
            lrs = [g["lr"] for g in self.optimizer.param_groups]
            row = epoch_row(epoch + 1, stats, metrics, lrs, args.num_classes, time.perf_counter() - start)
            self.history.append(row)
            improved = bool(metrics) and not math.isnan(metrics["mIoU"]) and metrics["mIoU"] > self.best_miou
            if improved:
                self.best_miou = metrics["mIoU"]
            if self.is_main:
                if metrics:
                    print(self.last_table, flush=True)
                print(f"epoch {epoch + 1}/{args.epochs}: loss {row['train_loss']:.4f}"
                      + (f", val mIoU {metrics['mIoU']:.4f}" if metrics else "")
                      + f", {row['seconds']:.1f} s" + _time_left(self.history, args.epochs - epoch - 1), flush=True)
                self.save(epoch, eval_model, metrics, improved, last)
                write_logs(self.run_dir, self.history)
        return row

    # ---- checkpoints ----
    def save(self, epoch: int, eval_model: nn.Module, metrics: dict, improved: bool, last: bool) -> None:
        """Write ``_last.pth`` after ``epoch`` (0-based), and copy it to ``_epoch{N}.pth`` / ``_best.pth`` when due."""
        state = ckpt.training_state(
            model=eval_model, args=plain_flags(self.args), epoch=epoch + 1, optimizer=self.optimizer, metrics=metrics,
            scheduler=self.scheduler, scaler=self.scaler, hooks={h.name: h.state_dict() for h in self.hooks},
            best_miou=self.best_miou, history=self.history, train_model=self.model, input_stats=self.input_stats)
        args = vars(self.args)
        last_path = ckpt.save_checkpoint(state, checkpoint_path(self.model_dir, args, "last"))
        tags = []
        if last or (self.args.save_every > 0 and (epoch + 1) % self.args.save_every == 0):
            tags.append(f"epoch{epoch + 1}")
        if improved:
            tags.append("best")
        for tag in tags:
            copy_atomic(last_path, checkpoint_path(self.model_dir, args, tag))

    def load(self, path: str | os.PathLike) -> None:
        """Restore a run from a checkpoint written by this trainer (same model flags)."""
        state = ckpt.load_for_resume(path, self.args)
        try:
            self.model.load_state_dict(state.get("train_model", state["model"]))
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as e:
            raise InputError(f"{path}: does not fit this run ({short(e)})") from None
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        for h in self.hooks:
            if h.name in state.get("hooks", {}):
                h.load_state_dict(state["hooks"][h.name])
        ckpt.set_rng_state(state["rng"])
        self.start_epoch = int(state["epoch"])
        self.best_miou = float(state.get("best_miou", float("-inf")))
        self.history = [dict(r) for r in state.get("history", [])]
        if self.is_main:
            print(f"resumed from {path} at epoch {self.start_epoch}", flush=True)

    def close(self, barrier: bool = True) -> None:
        """Tear the process group down (when there is one); ``barrier`` waits for every process first."""
        close_distributed(barrier)


def close_distributed(barrier: bool = True) -> None:
    """Tear the process group down (when there is one). ``barrier``: every process waits until all are past
    their last collective first (gloo aborts a peer torn down mid-exchange); leave it out after an error."""
    if _is_dist():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


# ---- entry points -------------------------------------------------------------------------------


def evaluate_checkpoint(args: argparse.Namespace) -> dict:
    """Without ``--train``: evaluate ``--checkpoint`` (or ``--resume``, or the run's ``_best.pth``) on the val tiles.

    Same device rule as training; under ``torchrun`` each process evaluates its shard of the tiles and
    rank 0 prints the table of the summed counts.
    """
    path = args.checkpoint or args.resume or checkpoint_path(model_dir(args.data_root), vars(args), "best")
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world_size, device = init_distributed(args.device)
    done = False
    try:
        model, saved = ckpt.load_model(path, device=device)
        num_classes = int(saved.get("num_classes", args.num_classes))
        val_set = TileDataset(args.data_root, "val", num_classes, augment=False, input_norm=saved["input_norm"])
        part = Subset(val_set, shard_indices(len(val_set), rank, world_size))
        loader = DataLoader(part, batch_size=max(1, args.batch_size), num_workers=args.workers, collate_fn=collate,
                            pin_memory=device.type == "cuda")
        fmt = channels_last(device, saved.get("model", "deeplabv3"))
        if fmt:
            model.to(memory_format=torch.channels_last)
        cm, _ = evaluate(model, loader, device, num_classes, amp_dtype=amp_dtype(device, args.amp),
                         progress=rank == 0 and not args.quiet, channels_last=fmt)
        done = True
    finally:
        close_distributed(barrier=done)
    if rank == 0:
        print(f"{path}: {len(val_set)} validation tiles")
        print(cm.table())
    return exclude_absent(cm.compute())


def swa_hook(args: argparse.Namespace) -> SWAHook:
    """The :class:`SWAHook` of ``--swa``, its defaults resolved into ``args`` (so checkpoints record them)."""
    if args.swa_start is None:
        args.swa_start = -(-3 * args.epochs // 4)
    if args.swa_lr is None:
        args.swa_lr = args.base_lr / 10
    if not 1 <= args.swa_start <= args.epochs:
        raise InputError(f"--swa_start {args.swa_start} must be between 1 and --epochs {args.epochs}")
    return SWAHook(args.swa_start - 1, args.swa_lr, args.swa_anneal_epochs)


def main(args: argparse.Namespace, hooks: Iterable[Hook] | None = None) -> dict:
    """``--train``: train with ``hooks`` (and SWA last, with ``--swa``) and return the last epoch's log row;
    otherwise evaluate a checkpoint."""
    if not args.train:
        return evaluate_checkpoint(args)
    restore_run_flags(args)  # before the SWA defaults are resolved: a resumed run's come from its checkpoint
    hooks = list(hooks or [])
    if args.swa and args.ema:
        raise InputError("--swa and --ema both replace the saved model by an average: give one of them")
    if args.ema:
        hooks.append(EMAHook(args.ema))
    if args.swa:
        hooks.append(swa_hook(args))
    trainer = Trainer(args, hooks)
    try:
        row = trainer.fit()
    except BaseException:
        trainer.close(barrier=False)
        raise
    trainer.close()
    return row


# ---- flags --------------------------------------------------------------------------------------


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Flags common to every training script (defaults: the original ``train.py``)."""
    p = ArgumentParser(  # records which flags were typed, for --resume
        description="Train a segmentation model on the tiles of DATA_ROOT/train/tiles.csv "
        "(without --train: evaluate a checkpoint on the validation tiles).",
        add_help=add_help,
    )
    g = p.add_argument_group("run")
    g.add_argument("--train", action="store_true", help="train (without it: evaluate a checkpoint on the validation split)")
    g.add_argument("--exp", default="bn_lr7e-3", help="experiment name, part of checkpoint and log names (default: %(default)s)")
    g.add_argument("--data_root", default="data", help="data root holding train/tiles.csv and model/ (default: %(default)s)")
    g.add_argument("--epochs", type=positive_int, default=20, help="number of epochs (default: %(default)s)")
    g.add_argument("--iters_per_epoch", type=positive_int, default=None,
                   help="cap on iterations per epoch, for quick runs (default: one pass over the training tiles)")
    g.add_argument("--resume", default=None,
                   help="checkpoint to resume training from (e.g. DATA_ROOT/model/..._last.pth): every flag is taken "
                   "from it unless typed again; typed again, only "
                   + ", ".join(f"--{k}" for k in RESUME_MAY_CHANGE)
                   + " may differ from the checkpoint's (--epochs to extend the run)"),
    g.add_argument("--checkpoint", default=None,
                   help="checkpoint to evaluate without --train (default: --resume if given, else the run's _best.pth)")
    g.add_argument("--seed", type=seed_int, default=0, help="random seed of initialisation, tile order and augmentation (default: %(default)s)")
    g.add_argument("--val_every", type=nonneg_int, default=1, help="validate every N epochs and at the last one (default: %(default)s)")
    g.add_argument("--save_every", type=nonneg_int, default=5,
                   help="keep an _epoch{N}.pth every N epochs and at the last one; _last.pth is written every epoch (default: %(default)s)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")

    g = p.add_argument_group("model and loss")
    g.add_argument("--model", default="deeplabv3", help="deeplabv3 or unet (default: %(default)s)")
    g.add_argument("--backbone", default="resnet50",
                   help="deeplabv3: resnet18/34/50/101; unet: resnet34/50 (default: %(default)s)")
    g.add_argument("--num_classes", type=num_classes_int, default=4, help="number of classes, labels 0..N-1 (default: %(default)s)")
    g.add_argument("--output_stride", type=int, choices=(8, 16), default=16, help="deeplabv3 output stride, 8 or 16 (default: %(default)s)")
    g.add_argument("--pretrained", default=None,
                   help="encoder weights: 'imagenet' (needs internet) or a local torchvision ResNet .pth (default: none)")
    g.add_argument("--input_norm", default="window", choices=INPUT_NORMS,
                   help="input normalisation, recorded in the checkpoint and repeated by predict.py: window, each "
                        "crop or window standardised per channel over its valid pixels (undoes what a new "
                        "acquisition changes smoothly: illumination, band gains, haze); imagenet, the original's "
                        "fixed ImageNet mean and std (default: %(default)s)")
    g.add_argument("--loss", default="ce", help="ce, focal, lovasz or focal+lovasz (default: %(default)s)")
    g.add_argument("--aux_weight", type=nonneg_float, default=0.2,
                   help="weight of the auxiliary head's loss; 0 builds no auxiliary head (default: %(default)s)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--base_lr", type=positive_float, default=0.007, help="learning rate of the backbone (default: %(default)s)")
    g.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"),
                   help="sgd (momentum, the original's) or adamw (Adam with decoupled weight decay; use a "
                        "--base_lr about 1e-3) (default: %(default)s)")
    g.add_argument("--last_mult", type=nonneg_float, default=1.0, help="learning-rate multiplier of the head (default: %(default)s)")
    g.add_argument("--momentum", type=unit_float, default=0.9,
                   help="SGD momentum, 0 to below 1 (default: %(default)s)")
    g.add_argument("--weight_decay", type=nonneg_float, default=1e-4, help="SGD weight decay (default: %(default)s)")
    g.add_argument("--poly_power", type=nonneg_float, default=0.9,
                   help="poly decay lr = base_lr * (1 - iter / total_iters) ** power, per iteration (default: %(default)s)")

    g = p.add_argument_group("data")
    g.add_argument("--batch_size", type=positive_int, default=8,
                   help="images per iteration and process, at least 2 in training (default: %(default)s)")
    g.add_argument("--crop_size", type=positive_int, default=512, help="training crop side, a multiple of 32 (default: %(default)s)")
    g.add_argument("--scales", type=positive_int_list, default=None,
                   help="crop sides that successive batches cycle through, e.g. 512,448 (default: --crop_size only)")
    g.add_argument("--batch_sizes", type=positive_int_list, default=None,
                   help="batch size per --scales entry (default: --batch_size scaled to equal pixels per batch)")
    g.add_argument("--scale_min", type=positive_float, default=0.5, help="smallest random rescale of a tile (default: %(default)s)")
    g.add_argument("--scale_max", type=positive_float, default=2.0, help="largest random rescale of a tile (default: %(default)s)")
    g.add_argument("--workers", type=nonneg_int, default=min(4, os.cpu_count() or 1),
                   help="data loading processes (default: min(4, CPU count))")

    g = p.add_argument_group("stochastic weight averaging (on in train_swa.py)")
    g.add_argument("--swa", action="store_true",
                   help="average the weights of the last epochs (torch.optim.swa_utils) and save the average")
    g.add_argument("--swa_start", type=positive_int, default=None,
                   help="first epoch (1-based) whose weights are averaged (default: 3/4 of --epochs, rounded up)")
    g.add_argument("--swa_lr", type=positive_float, default=None, help="learning rate of the SWA phase (default: --base_lr / 10)")
    g.add_argument("--swa_anneal_epochs", type=nonneg_int, default=2, help="epochs of cosine annealing to --swa_lr (default: %(default)s)")

    g = experimental_group(p)
    g.add_argument("--label_smoothing", default="none", choices=("none", "edge"),
                   help="edge: edge-aware label smoothing of the CE/focal term (11x11 window, factor = the window's "
                        "share of other classes, capped at 0.2); none: hard labels (default: %(default)s)")
    g.add_argument("--warmup_iters", type=nonneg_int, default=0,
                   help="linear learning-rate warm-up over the first N iterations, from base_lr / N, times the "
                        "poly decay (0: off; default: %(default)s)")
    g.add_argument("--oversample", type=nonneg_float, default=0.0,
                   help="rare-class oversampling power p: a class of pixel share f weighs f**-p (0: off, 1: balanced; default: %(default)s)")
    g.add_argument("--color_jitter", type=ranged(float, 0, 0.5), default=0.0,
                   help="colour jitter amplitude of brightness/contrast/saturation/hue in training, 0 to 0.5, e.g. 0.08 "
                        "(labels and no-data untouched; 0: off; default: %(default)s)")
    g.add_argument("--acquisition_jitter", type=ranged(float, 0, 0.3), default=0.0,
                   help="strength s of rendering each crop as another acquisition, 0 to 0.3, e.g. 0.15: blur sigma up "
                        "to 6s px, illumination 1+-s, band gains 1+-s/2, gamma exp(+-s), haze up to s, noise up to 20s "
                        "(labels and no-data untouched; 0: off; default: %(default)s)")
    g.add_argument("--ema", type=unit_float, default=0.0, metavar="DECAY",
                   help="validate and save an exponential moving average of the weights and BatchNorm statistics, "
                        "updated after every step with this decay (e.g. 0.95: about the last 20 steps; 0: off; default: %(default)s)")

    g = p.add_argument_group("hardware")
    add_hardware_args(g, "CPU threads of each training process (default: PyTorch's choice; 1 is faster on a busy "
                         "machine)", "mixed precision: bf16 where supported, else fp16 with a gradient scaler")
    g.add_argument("--sync_bn", action="store_true", help="SyncBatchNorm across processes under torchrun (CUDA only)")
    return p




if __name__ == "__main__":
    from cropmap.core.cli import run_cli

    sys.exit(run_cli(main, get_args_parser().parse_args()))
