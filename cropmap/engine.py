"""The one training loop behind ``train.py``, ``train_focalloss.py``, ``train_swa.py``,
``train_multiscale.py`` and ``Unet_resnet34/train.py``.

Each entry script builds its parser on :func:`get_args_parser` (``parents=[...]`` or
``set_defaults``) and calls :func:`main` with its hooks. A variant that needs new logic adds a flag
here or a :class:`Hook`, never a copy of the loop.

* :class:`Trainer` - data, model, SGD with per-iteration poly decay, AMP, DDP, checkpoints, logs;
  :meth:`Trainer.fit` runs the epochs.
* :class:`Hook` - callbacks at epoch start/end and after each iteration, a way to choose the model that
  is validated and saved, and a state saved in checkpoints. :class:`SWAHook` is stochastic weight
  averaging (``torch.optim.swa_utils``).
* :func:`evaluate` - confusion matrix (and mean loss) of a model over a loader.
* :func:`main` - ``--train``: train; otherwise evaluate a checkpoint on the validation split.

Distributed: under ``torchrun --nproc_per_node N`` each process trains on its share of every epoch's
batches (DistributedDataParallel, NCCL on GPUs, gloo on CPU); ``--batch_size`` is per process; only
rank 0 writes files.

Reproducibility: the model is initialised from ``--seed``; every epoch's tile order and augmentations
are a function of ``(seed, epoch)`` (see :mod:`cropmap.data`); checkpoints carry the optimizer,
schedules, hook states (SWA), AMP scaler and random states, so a run resumed with ``--resume`` from
``..._last.pth`` ends with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset

from . import checkpoint as ckpt
from .data import MultiScaleBatchSampler, TileDataset, collate, oversample_weights, shard_indices
from .imageio import IGNORE as IGNORE_INDEX, InputError, atomic_path
from .metrics import CLASS_NAMES, ConfusionMatrix, exclude_absent
from .radiometry import tile_stats



def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in str(text).replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Flags common to every training script (defaults: the original ``train.py``)."""
    p = argparse.ArgumentParser(
        description="Train a segmentation model on the tiles of DATA_ROOT/train/tiles.csv "
        "(without --train: evaluate a checkpoint on the validation tiles).",
        add_help=add_help,
    )
    g = p.add_argument_group("run")
    g.add_argument("--train", action="store_true", help="train (without it: evaluate a checkpoint on the validation split)")
    g.add_argument("--exp", default="bn_lr7e-3", help="experiment name, part of checkpoint and log names (default: bn_lr7e-3)")
    g.add_argument("--data_root", default="data", help="data root holding train/tiles.csv and model/ (default: data)")
    g.add_argument("--epochs", type=int, default=20, help="number of epochs (default: 20)")
    g.add_argument("--iters_per_epoch", type=int, default=None,
                   help="cap on iterations per epoch, for quick runs (default: one pass over the training tiles)")
    g.add_argument("--resume", default=None, help="checkpoint to resume training from (e.g. DATA_ROOT/model/..._last.pth)")
    g.add_argument("--checkpoint", default=None,
                   help="checkpoint to evaluate without --train (default: --resume if given, else the run's _best.pth)")
    g.add_argument("--seed", type=int, default=0, help="random seed of initialisation, tile order and augmentation (default: 0)")
    g.add_argument("--val_every", type=int, default=1, help="validate every N epochs and at the last one (default: 1)")
    g.add_argument("--save_every", type=int, default=5,
                   help="keep an _epoch{N}.pth every N epochs and at the last one; _last.pth is written every epoch (default: 5)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")

    g = p.add_argument_group("model and loss")
    g.add_argument("--model", default="deeplabv3", help="deeplabv3 or unet (default: deeplabv3)")
    g.add_argument("--backbone", default="resnet50",
                   help="deeplabv3: resnet18/34/50/101; unet: resnet34/50 (default: resnet50)")
    g.add_argument("--num_classes", type=int, default=4, help="number of classes, labels 0..N-1 (default: 4)")
    g.add_argument("--output_stride", type=int, default=16, help="deeplabv3 output stride, 8 or 16 (default: 16)")
    g.add_argument("--pretrained", default=None,
                   help="encoder weights: 'imagenet' (needs internet) or a local torchvision ResNet .pth (default: none)")
    g.add_argument("--loss", default="ce", help="ce, focal, lovasz or focal+lovasz (default: ce)")
    g.add_argument("--aux_weight", type=float, default=0.2,
                   help="weight of the auxiliary head's loss; 0 builds no auxiliary head (default: 0.2)")
    g.add_argument("--label_smoothing", default="none", choices=["none", "edge"],
                   help="edge: edge-aware label smoothing of the CE/focal term (11x11 window, factor = the window's "
                        "share of other classes, capped at 0.2); none: hard labels (default: none)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--base_lr", type=float, default=0.007, help="SGD learning rate of the backbone (default: 0.007)")
    g.add_argument("--last_mult", type=float, default=1.0, help="learning-rate multiplier of the head (default: 1.0)")
    g.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"],
                   help="sgd (momentum, the original's) or adamw (Adam with decoupled weight decay; use a "
                        "--base_lr about 1e-3) (default: sgd)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    g.add_argument("--weight_decay", type=float, default=1e-4, help="SGD weight decay (default: 1e-4)")
    g.add_argument("--poly_power", type=float, default=0.9,
                   help="poly decay lr = base_lr * (1 - iter / total_iters) ** power, per iteration (default: 0.9)")
    g.add_argument("--warmup_iters", type=int, default=0,
                   help="linear learning-rate warm-up over the first N iterations, from base_lr / N, times the "
                        "poly decay (default: 0, off)")

    g = p.add_argument_group("data")
    g.add_argument("--batch_size", type=int, default=8, help="images per iteration and process (default: 8)")
    g.add_argument("--crop_size", type=int, default=512, help="training crop side, a multiple of 32 (default: 512)")
    g.add_argument("--scales", type=_int_list, default=None,
                   help="crop sides that successive batches cycle through, e.g. 512,448 (default: --crop_size only)")
    g.add_argument("--batch_sizes", type=_int_list, default=None,
                   help="batch size per --scales entry (default: --batch_size scaled to equal pixels per batch)")
    g.add_argument("--scale_min", type=float, default=0.5, help="smallest random rescale of a tile (default: 0.5)")
    g.add_argument("--scale_max", type=float, default=2.0, help="largest random rescale of a tile (default: 2.0)")
    g.add_argument("--color_jitter", type=float, default=0.0,
                   help="colour jitter amplitude of brightness/contrast/saturation/hue in training, e.g. 0.08 "
                        "(labels and no-data untouched; default: 0, off)")
    g.add_argument("--oversample", type=float, default=0.0,
                   help="rare-class oversampling power p: a class of pixel share f weighs f**-p (0: off, 1: balanced; default: 0)")
    g.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="data loading processes (default: min(4, CPU count))")

    g = p.add_argument_group("hardware")
    g.add_argument("--device", default=None,
                   help="cuda, cuda:N or cpu (default: cuda when available, else cpu); on CUDA channels_last and "
                   "cudnn.benchmark are on")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads of each training process (default: PyTorch's choice; 1 is faster on a busy machine)")
    g.add_argument("--amp", action="store_true",
                   help="mixed precision: bf16 where supported, else fp16 with a gradient scaler")
    g.add_argument("--sync_bn", action="store_true", help="SyncBatchNorm across processes under torchrun (CUDA only)")
    return p


# ---- hooks --------------------------------------------------------------------------------------


class Hook:
    """Callbacks of :class:`Trainer`; subclass and override what you need.

    Call order per epoch: ``on_epoch_start`` -> iterations (``on_iteration_end`` after each optimizer
    step) -> ``on_epoch_end`` -> ``eval_model`` (the last non-None answer is validated and saved as
    the checkpoint's ``model``) -> validation and checkpoint. ``state_dict``/``load_state_dict`` go
    into checkpoints under ``hooks[name]`` (tensors and plain values only).
    """

    name = "hook"

    def setup(self, trainer: "Trainer") -> None:
        """After the trainer is built, before a resume loads its state."""

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None:
        """Before the first iteration of ``epoch`` (0-based)."""

    def on_iteration_end(self, trainer: "Trainer", epoch: int, iteration: int, loss: torch.Tensor) -> None:
        """After the optimizer step of ``iteration`` (0-based within the epoch); ``loss`` is detached."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int) -> None:
        """After the last iteration of ``epoch``, before validation."""

    def eval_model(self, trainer: "Trainer", epoch: int) -> nn.Module | None:
        """The model to validate and save this epoch instead of the trained one, or None."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class SWAHook(Hook):
    """Stochastic weight averaging with ``torch.optim.swa_utils``.

    From epoch ``swa_start`` (0-based) on, the poly schedule stops and :class:`~torch.optim.swa_utils.SWALR`
    anneals the learning rate (cosine) to ``swa_lr`` over ``anneal_epochs`` epochs; after each epoch the
    weights are added to an :class:`~torch.optim.swa_utils.AveragedModel` (equal weights), the averaged
    model's BatchNorm statistics are recomputed on training batches (``update_bn``; averaged over
    processes under DDP), and the averaged model is what is validated and saved as ``model``.

    Args:
        swa_start: first epoch averaged (0-based).
        swa_lr: learning rate reached after the annealing.
        anneal_epochs: epochs of cosine annealing (0: jump to ``swa_lr``).
        bn_batches: training batches used by ``update_bn`` (default: the epoch's iterations).
    """

    name = "swa"

    def __init__(self, swa_start: int, swa_lr: float, anneal_epochs: int = 2, bn_batches: int | None = None) -> None:
        self.swa_start = int(swa_start)
        self.swa_lr = float(swa_lr)
        self.anneal_epochs = int(anneal_epochs)
        self.bn_batches = bn_batches
        self.averaged: torch.optim.swa_utils.AveragedModel | None = None
        self.scheduler: torch.optim.swa_utils.SWALR | None = None

    def setup(self, trainer: "Trainer") -> None:
        self.trainer = trainer
        self.averaged = torch.optim.swa_utils.AveragedModel(trainer.model)

    def _make_scheduler(self, trainer: "Trainer") -> None:
        if self.scheduler is None:
            self.scheduler = torch.optim.swa_utils.SWALR(
                trainer.optimizer, swa_lr=self.swa_lr, anneal_epochs=self.anneal_epochs, anneal_strategy="cos"
            )

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None:
        if epoch >= self.swa_start:
            trainer.step_scheduler = False  # SWALR takes over from the poly schedule
            self._make_scheduler(trainer)

    def on_epoch_end(self, trainer: "Trainer", epoch: int) -> None:
        if epoch >= self.swa_start:
            self.averaged.update_parameters(trainer.model)
            self.scheduler.step()

    def eval_model(self, trainer: "Trainer", epoch: int) -> nn.Module | None:
        if self.averaged is None or int(self.averaged.n_averaged) == 0:
            return None
        limit = self.bn_batches or trainer.iters_per_epoch
        torch.optim.swa_utils.update_bn(trainer.train_images(epoch, limit), self.averaged)
        trainer.average_buffers(self.averaged.module)
        return self.averaged.module

    def state_dict(self) -> dict:
        return {
            "averaged": self.averaged.state_dict(),
            "scheduler": None if self.scheduler is None else ckpt.plain_args(self.scheduler.state_dict()),
        }

    def load_state_dict(self, state: dict) -> None:
        self.averaged.load_state_dict(state["averaged"])
        if state.get("scheduler") is not None:
            self.scheduler = None
            self._make_scheduler(self.trainer)
            self.scheduler.load_state_dict(state["scheduler"])


# ---- distributed helpers ------------------------------------------------------------------------


def init_distributed(device_arg: str | None) -> tuple[int, int, torch.device]:
    """Start the process group under ``torchrun`` (``WORLD_SIZE`` > 1) and pick this process's device.

    Returns ``(rank, world_size, device)``; NCCL on CUDA, gloo on CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    name = device_arg or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r}: not a device name (expected cuda, cuda:N or cpu)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        if world_size > 1:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world_size, device


def _is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


# ---- evaluation ---------------------------------------------------------------------------------


def _amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str,
    num_classes: int = 4,
    criterion: nn.Module | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
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

    Returns:
        ``(ConfusionMatrix summed over processes, mean loss or NaN)``.
    """
    device = torch.device(device)
    model.eval()
    cm = ConfusionMatrix(num_classes, device=device)
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, images
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, desc="val", leave=False, dynamic_ncols=True)
    for images, labels in _clean_errors(loader):
        images = images.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = model(images)
        logits = out["out"] if isinstance(out, dict) else out
        cm.update(logits.argmax(1), labels)
        if criterion is not None:
            sums[0] += float(criterion(logits.float(), labels)) * images.shape[0]
        sums[1] += images.shape[0]
    cm.all_reduce()
    if _is_dist():
        dist.all_reduce(sums)
    loss = float(sums[0] / sums[1]) if criterion is not None and sums[1] > 0 else float("nan")
    return cm, loss


def _clean_errors(loader: Iterable) -> Iterator:
    """Iterate ``loader``; an :class:`InputError` raised in a loader worker comes out as its one line."""
    it = iter(loader)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except InputError as e:
            text = str(e)
            if "Original Traceback" in text:
                lines = [ln for ln in text.strip().splitlines() if ln.strip()]
                last = lines[-1]
                marker = "InputError: "
                text = last.split(marker, 1)[1] if marker in last else last
                raise InputError(text) from None
            raise
        yield item


# ---- the trainer --------------------------------------------------------------------------------


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise InputError(message)


class Trainer:
    """Everything one training run needs, built from the flags of :func:`get_args_parser`.

    Attributes used by hooks: ``args``, ``model`` (the bare module, also under DDP), ``optimizer``,
    ``scheduler`` (poly, stepped per iteration while ``step_scheduler`` is True), ``iters_per_epoch``,
    ``device``, ``rank``, ``world_size``, ``is_main``, ``history`` (one dict per epoch).
    """

    def __init__(self, args: argparse.Namespace, hooks: Iterable[Hook] = ()) -> None:
        from losses import LOSSES, build_loss
        from models import MODELS, build_model, list_backbones

        self.args = args
        self.hooks = list(hooks)
        _check(args.model in MODELS, f"--model {args.model!r}: unknown; valid: {', '.join(MODELS)}")
        valid = list_backbones(args.model)
        _check(args.backbone in valid, f"--backbone {args.backbone!r}: unknown for {args.model}; valid: {', '.join(valid)}")
        _check(args.loss in LOSSES, f"--loss {args.loss!r}: unknown; valid: {', '.join(LOSSES)}")
        _check(args.epochs >= 1, f"--epochs must be >= 1, got {args.epochs}")
        _check(args.num_classes >= 2, f"--num_classes must be >= 2, got {args.num_classes}")
        self.scales = list(args.scales or [args.crop_size])
        if args.batch_sizes:
            self.batch_sizes = list(args.batch_sizes)
        else:  # equal pixels per batch as the first scale
            self.batch_sizes = [max(2, int(args.batch_size * (self.scales[0] / s) ** 2)) for s in self.scales]
        _check(len(self.batch_sizes) == len(self.scales),
               f"--batch_sizes {self.batch_sizes} needs one entry per --scales entry {self.scales}")
        for s in self.scales:
            _check(s >= 32 and s % 32 == 0, f"crop size {s} must be a positive multiple of 32")
        for b in self.batch_sizes:
            _check(b >= 2, f"batch size {b} must be >= 2 (BatchNorm in training mode needs two images)")
        _check(args.oversample >= 0, f"--oversample must be >= 0, got {args.oversample}")
        _check(0 < args.scale_min <= args.scale_max, f"need 0 < --scale_min <= --scale_max, got {args.scale_min}, {args.scale_max}")

        if args.threads:
            torch.set_num_threads(args.threads)
        self.rank, self.world_size, self.device = init_distributed(args.device)
        self.is_main = self.rank == 0
        _check(not (args.sync_bn and self.device.type != "cuda"), "--sync_bn needs CUDA devices (PyTorch's SyncBatchNorm is GPU-only)")
        torch.manual_seed(args.seed)
        import random

        import numpy as np

        random.seed(args.seed)
        np.random.seed(args.seed)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.amp_dtype = _amp_dtype(self.device, args.amp)

        # data
        self.train_set = TileDataset(args.data_root, "train", args.num_classes, augment=True,
                                     crop_size=self.scales[0], scale_range=(args.scale_min, args.scale_max),
                                     color_jitter=getattr(args, "color_jitter", 0.0))
        self.val_set = TileDataset(args.data_root, "val", args.num_classes, augment=False)
        # per-channel statistics of the training tiles, for predict.py --radiometry match
        self.input_stats = tile_stats(self.train_set.root, self.train_set.rows)
        weights = None
        if args.oversample > 0:
            weights = oversample_weights(self.train_set.rows, args.num_classes, args.oversample)
        self.sampler = MultiScaleBatchSampler(len(self.train_set), self.scales, self.batch_sizes, weights,
                                              seed=args.seed, rank=self.rank, world_size=self.world_size)
        _check(len(self.sampler) > 0,
               f"{len(self.train_set)} training tiles are fewer than one batch per process ({self.batch_sizes[0]})")
        pin = self.device.type == "cuda"
        self.train_loader = DataLoader(self.train_set, batch_sampler=self.sampler, num_workers=args.workers,
                                       collate_fn=collate, pin_memory=pin)
        val_part = Subset(self.val_set, shard_indices(len(self.val_set), self.rank, self.world_size))
        self.val_loader = DataLoader(val_part, batch_size=max(self.batch_sizes), shuffle=False,
                                     num_workers=args.workers, collate_fn=collate, pin_memory=pin)
        self.iters_per_epoch = len(self.sampler)
        if args.iters_per_epoch:
            self.iters_per_epoch = min(self.iters_per_epoch, args.iters_per_epoch)

        # model, loss, optimiser, schedule
        try:
            model = build_model(args.model, args.backbone, args.num_classes, args.pretrained,
                                args.output_stride, aux=args.aux_weight > 0)
        except (ValueError, FileNotFoundError) as e:
            raise InputError(str(e)) from None
        if args.sync_bn and self.world_size > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device)
        if self.device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.net: nn.Module = model
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        try:
            self.criterion = build_loss(args.loss, aux_weight=args.aux_weight, ignore_index=IGNORE_INDEX,
                                        label_smoothing=getattr(args, "label_smoothing", "none")).to(self.device)
        except ValueError as e:
            raise InputError(f"--loss {args.loss} --label_smoothing {args.label_smoothing}: {e}") from None
        backbone_ids = {id(p) for p in model.backbone.parameters()}
        groups = [
            {"params": [p for p in model.parameters() if id(p) in backbone_ids], "lr": args.base_lr},
            {"params": [p for p in model.parameters() if id(p) not in backbone_ids], "lr": args.base_lr * args.last_mult},
        ]
        if getattr(args, "optimizer", "sgd") == "adamw":
            self.optimizer = torch.optim.AdamW(groups, lr=args.base_lr, weight_decay=args.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(groups, lr=args.base_lr, momentum=args.momentum,
                                             weight_decay=args.weight_decay)
        self.total_iters = args.epochs * self.iters_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(self.total_iters, args.poly_power, getattr(args, "warmup_iters", 0)))
        self.step_scheduler = True
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        # bookkeeping
        self.model_dir = Path(args.data_root) / ckpt.MODEL_DIR
        self.run_dir = self.model_dir / ckpt.run_name(vars(args))
        self.start_epoch = 0
        self.best_miou = float("-inf")
        self.history: list[dict] = []
        for h in self.hooks:
            h.setup(self)
        if args.resume:
            self.load(args.resume)

    # ---- steps ----
    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimisation step on a batch (``float32 [B, 3, H, W]``, ``int64 [B, H, W]``); returns the detached loss."""
        images = images.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
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
        bar = None
        if self.is_main and not self.args.quiet:
            from tqdm import tqdm

            bar = tqdm(total=self.iters_per_epoch, desc=f"epoch {epoch + 1}/{self.args.epochs}", dynamic_ncols=True)
        for i, (images, labels) in enumerate(_clean_errors(self.train_loader)):
            if i >= self.iters_per_epoch:
                break
            loss = self.train_step(images, labels)
            loss_sum += loss
            images_seen += images.shape[0]
            steps += 1
            for h in self.hooks:
                h.on_iteration_end(self, epoch, i, loss)
            if bar is not None:
                bar.update(1)
                if i % 10 == 0 or i == self.iters_per_epoch - 1:
                    bar.set_postfix(loss=f"{float(loss):.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - start
        if _is_dist():
            dist.all_reduce(loss_sum)
            steps *= self.world_size
            images_seen *= self.world_size
        return {
            "train_loss": float(loss_sum) / max(steps, 1),
            "train_images_per_s": images_seen / max(seconds, 1e-9),
            "train_seconds": seconds,
        }

    def train_images(self, epoch: int, limit: int) -> Iterator[torch.Tensor]:
        """Up to ``limit`` augmented training batches of ``epoch`` as images on the device (for ``update_bn``)."""
        self.sampler.set_epoch(epoch)
        for i, (images, _) in enumerate(_clean_errors(self.train_loader)):
            if i >= limit:
                break
            images = images.to(self.device, non_blocking=True)
            if self.device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            yield images

    def average_buffers(self, module: nn.Module) -> None:
        """Average floating-point buffers (BatchNorm statistics) over processes; no-op without DDP."""
        if not _is_dist():
            return
        for b in module.buffers():
            if b.is_floating_point():
                dist.all_reduce(b)
                b.div_(self.world_size)

    def validate(self, model: nn.Module) -> dict:
        """Validation metrics of ``model``: ``iou`` list, ``mIoU``, ``mIoU_all``, ``pixel_acc``, ``confusion``, ``val_loss``."""
        show = self.is_main and not self.args.quiet
        cm, loss = evaluate(model, self.val_loader, self.device, self.args.num_classes, self.criterion,
                            self.amp_dtype, progress=show)
        metrics = exclude_absent(cm.compute())  # a class missing from the validation labels is reported as absent
        metrics["val_loss"] = loss
        self.last_table = cm.table(self._class_names())
        return metrics

    def _class_names(self) -> list[str]:
        c = self.args.num_classes
        return list(CLASS_NAMES) if c == len(CLASS_NAMES) else [f"class{i}" for i in range(c)]

    # ---- the loop ----
    def fit(self) -> dict:
        """Train from ``start_epoch`` to ``--epochs``; returns the last epoch's log row."""
        args = self.args
        row: dict = self.history[-1] if self.history else {}
        if self.start_epoch >= args.epochs and self.is_main:
            print(f"nothing to train: the checkpoint has {self.start_epoch} epochs, --epochs is {args.epochs}")
        if self.is_main:
            print(f"training {ckpt.run_name(vars(args))}: {len(self.train_set)} train / {len(self.val_set)} val tiles, "
                  f"{self.iters_per_epoch} iterations per epoch, scales {self.scales}, batch sizes {self.batch_sizes}, "
                  f"{self.world_size} process(es) on {self.device}", flush=True)
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
            row = self._log_row(epoch, stats, metrics, time.perf_counter() - start)
            self.history.append(row)
            improved = bool(metrics) and not math.isnan(metrics["mIoU"]) and metrics["mIoU"] > self.best_miou
            if improved:
                self.best_miou = metrics["mIoU"]
            if self.is_main:
                if metrics:
                    print(self.last_table, flush=True)
                print(f"epoch {epoch + 1}/{args.epochs}: loss {row['train_loss']:.4f}"
                      + (f", val mIoU {metrics['mIoU']:.4f}" if metrics else "")
                      + f", {row['seconds']:.1f} s", flush=True)
                self._save(epoch, eval_model, metrics, improved, last)
                self._write_logs()
        return row

    def _log_row(self, epoch: int, stats: dict, metrics: dict, seconds: float) -> dict:
        row = {"epoch": epoch + 1, "train_loss": stats["train_loss"],
               "val_loss": metrics.get("val_loss", float("nan")),
               "lr": self.optimizer.param_groups[0]["lr"], "lr_head": self.optimizer.param_groups[1]["lr"]}
        names = self._class_names()
        absent = set(metrics.get("absent", []))
        for k, name in enumerate(names):
            row[f"iou_{name}"] = ("absent" if k in absent else metrics["iou"][k]) if metrics else float("nan")
        row["mIoU"] = metrics.get("mIoU", float("nan"))
        row["mIoU_all"] = metrics.get("mIoU_all", float("nan"))
        row["train_images_per_s"] = stats["train_images_per_s"]
        row["seconds"] = seconds
        return row

    # ---- checkpoints ----
    def state_dict(self, epoch: int, eval_model: nn.Module, metrics: dict) -> dict:
        """The checkpoint after ``epoch`` (0-based) was completed."""
        state = {
            "model": eval_model.state_dict(),
            "args": ckpt.plain_args(self.args),
            "epoch": epoch + 1,
            "optimizer": self.optimizer.state_dict(),
            "metrics": metrics,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "hooks": {h.name: h.state_dict() for h in self.hooks},
            "rng": ckpt.get_rng_state(),
            "best_miou": self.best_miou,
            "history": list(self.history),
            "input_stats": self.input_stats,
        }
        if eval_model is not self.model:
            state["train_model"] = self.model.state_dict()
        return state

    def _save(self, epoch: int, eval_model: nn.Module, metrics: dict, improved: bool, last: bool) -> None:
        args = vars(self.args)
        last_path = ckpt.save_checkpoint(self.state_dict(epoch, eval_model, metrics),
                                         ckpt.checkpoint_path(self.model_dir, args, "last"))
        tags = []
        if last or (self.args.save_every > 0 and (epoch + 1) % self.args.save_every == 0):
            tags.append(f"epoch{epoch + 1}")
        if improved:
            tags.append("best")
        for tag in tags:
            _copy_atomic(last_path, ckpt.checkpoint_path(self.model_dir, args, tag))

    def load(self, path: str | os.PathLike) -> None:
        """Restore a run from a checkpoint written by this trainer (same model flags)."""
        state = ckpt.load_checkpoint(path, map_location=self.device)
        saved = state["args"]
        for key in ("model", "backbone", "num_classes", "output_stride"):
            if key in saved and saved[key] != getattr(self.args, key):
                raise InputError(f"{path}: checkpoint has --{key} {saved[key]}, this run {getattr(self.args, key)}")
        for key in ("optimizer", "scheduler", "epoch", "rng"):
            if key not in state:
                raise InputError(f"{path}: no '{key}' entry, cannot resume from it")
        try:
            self.model.load_state_dict(state.get("train_model", state["model"]))
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as e:
            raise InputError(f"{path}: does not fit this run ({str(e).splitlines()[0][:160]})") from None
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

    # ---- logs ----
    def _write_logs(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_log_csv(self.run_dir / "log.csv", self.history)
        plot_curves(self.run_dir / "curves.png", self.history)

    def close(self, barrier: bool = True) -> None:
        """Tear the process group down (when there is one); ``barrier`` waits for every process first."""
        if _is_dist():
            if barrier:
                dist.barrier()
            dist.destroy_process_group()


def lr_factor(total_iters: int, power: float, warmup_iters: int = 0):
    """The learning-rate multiplier of iteration ``it``: poly decay ``(1 - it / total) ** power``, times a
    linear warm-up ``min(1, (it + 1) / warmup_iters)`` over the first ``warmup_iters`` iterations."""

    def factor(it: int) -> float:
        poly = (1.0 - min(it, total_iters) / total_iters) ** power
        return poly * min(1.0, (it + 1) / warmup_iters) if warmup_iters > 0 else poly

    return factor


def _copy_atomic(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def write_log_csv(path: Path, history: list[dict]) -> None:
    """One row per epoch (the keys of the first row are the columns); written atomically."""
    if not history:
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        for r in history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def plot_curves(path: Path, history: list[dict]) -> None:
    """Loss, IoU and learning-rate curves per epoch as a PNG (matplotlib's Agg canvas, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(13, 3.8))
    FigureCanvasAgg(fig)
    ax_loss, ax_iou, ax_lr = fig.subplots(1, 3)
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "o-", label="val")
    ax_loss.set_title("loss")
    for key in [k for k in history[0] if k.startswith("iou_")]:
        values = [r[key] if isinstance(r[key], float) else float("nan") for r in history]  # "absent" -> gap
        ax_iou.plot(epochs, values, ".-", alpha=0.7, label=key[4:])
    ax_iou.plot(epochs, [r["mIoU"] for r in history], "o-", color="k", lw=2, label="mIoU (crops)")
    ax_iou.set_ylim(0, 1)
    ax_iou.set_title("validation IoU")
    ax_lr.plot(epochs, [r["lr"] for r in history], "o-", label="backbone")
    ax_lr.plot(epochs, [r["lr_head"] for r in history], "--", label="head")
    ax_lr.set_title("learning rate (end of epoch)")
    for ax in (ax_loss, ax_iou, ax_lr):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)


# ---- entry points -------------------------------------------------------------------------------


def evaluate_checkpoint(args: argparse.Namespace) -> dict:
    """Without ``--train``: evaluate ``--checkpoint`` (or ``--resume``, or the run's ``_best.pth``) on the val tiles."""
    path = args.checkpoint or args.resume or ckpt.checkpoint_path(Path(args.data_root) / ckpt.MODEL_DIR, vars(args), "best")
    _, _, device = init_distributed(args.device)
    model, saved = ckpt.load_model(path, device=device)
    num_classes = int(saved.get("num_classes", args.num_classes))
    val_set = TileDataset(args.data_root, "val", num_classes, augment=False)
    loader = DataLoader(val_set, batch_size=max(1, args.batch_size), num_workers=args.workers, collate_fn=collate)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    cm, _ = evaluate(model, loader, device, num_classes, amp_dtype=_amp_dtype(device, args.amp), progress=not args.quiet)
    names = list(CLASS_NAMES) if num_classes == len(CLASS_NAMES) else None
    print(f"{path}: {len(val_set)} validation tiles")
    print(cm.table(names))
    return cm.compute()


def main(args: argparse.Namespace, hooks: Iterable[Hook] | None = None) -> dict:
    """``--train``: train with ``hooks`` and return the last epoch's log row; otherwise evaluate a checkpoint."""
    if not args.train:
        return evaluate_checkpoint(args)
    trainer = Trainer(args, hooks or [])
    try:
        row = trainer.fit()
    except BaseException:
        trainer.close(barrier=False)
        raise
    trainer.close()
    return row


if __name__ == "__main__":
    from .imageio import run_cli

    sys.exit(run_cli(main, get_args_parser().parse_args()))
