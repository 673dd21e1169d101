"""Callbacks of the training loop (:class:`cropmap.train.engine.Trainer`), and stochastic weight averaging.

A variant of the loop that needs new logic is a :class:`Hook`, never a copy of the loop.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from cropmap.train.checkpoint import plain_args

#: The annotations' "Trainer" is :class:`cropmap.train.engine.Trainer`: it calls the hooks, which only read it
#: (not imported, so that the hooks stay below the loop).
Trainer = Any


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
            "scheduler": None if self.scheduler is None else plain_args(self.scheduler.state_dict()),
        }

    def load_state_dict(self, state: dict) -> None:
        self.averaged.load_state_dict(state["averaged"])
        if state.get("scheduler") is not None:
            self.scheduler = None
            self._make_scheduler(self.trainer)
            self.scheduler.load_state_dict(state["scheduler"])


class EMAHook(Hook):
    """An exponential moving average of the weights (and of the BatchNorm statistics), validated and saved.

    After every optimizer step ``t`` (counted from 0 over the whole run) each floating-point tensor of the
    model's state (parameters and buffers: BatchNorm running mean/var) moves towards the trained model's::

        d_t = min(decay, (1 + t) / (10 + t))
        ema = ema + (1 - d_t) * (current - ema)

    The warm-up of ``d_t`` keeps the random initialisation from lingering in a short run (after 45 steps
    at ``decay`` 0.95 a plain EMA would still hold 10% of it). Integer buffers (BatchNorm's
    ``num_batches_tracked``) are copied. The average is what is validated and saved as the checkpoint's
    ``model``; the optimizer keeps training the model itself (saved as ``train_model`` for ``--resume``).
    An average over the last ``1 / (1 - decay)`` steps smooths out where a short, noisy run happens to
    stop. Under DDP every process keeps the same average (the parameters are the same everywhere; the
    buffers follow rank 0's, which DDP broadcasts each forward).

    Args:
        decay: the EMA's decay per step, in ``[0, 1)``.
    """

    name = "ema"

    def __init__(self, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.steps = 0
        self.averaged: nn.Module | None = None

    def setup(self, trainer: "Trainer") -> None:
        self.averaged = copy.deepcopy(trainer.model)
        self.averaged.requires_grad_(False)
        state = self.averaged.state_dict()
        self.float_keys = [k for k, v in state.items() if v.is_floating_point()]
        self.other_keys = [k for k, v in state.items() if not v.is_floating_point()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step of ``self.averaged`` towards ``model`` (same architecture)."""
        d = min(self.decay, (1.0 + self.steps) / (10.0 + self.steps))
        avg, cur = self.averaged.state_dict(), model.state_dict()
        if self.float_keys:
            torch._foreach_lerp_([avg[k] for k in self.float_keys], [cur[k] for k in self.float_keys], 1.0 - d)
        for k in self.other_keys:
            avg[k].copy_(cur[k])
        self.steps += 1

    def on_iteration_end(self, trainer: "Trainer", epoch: int, iteration: int, loss: torch.Tensor) -> None:
        self.update(trainer.model)

    def eval_model(self, trainer: "Trainer", epoch: int) -> nn.Module | None:
        return self.averaged

    def state_dict(self) -> dict:
        return {"averaged": self.averaged.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.averaged.load_state_dict(state["averaged"])
        self.steps = int(state["steps"])
