"""Callbacks of the training loop (:class:`cropmap.engine.Trainer`), and stochastic weight averaging.

A variant of the loop that needs new logic is a :class:`Hook`, never a copy of the loop.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .checkpoint import plain_args

#: The annotations' "Trainer" is :class:`cropmap.engine.Trainer`: it calls the hooks, which only read it
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
