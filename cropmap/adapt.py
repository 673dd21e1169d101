"""Test-time adaptation of BatchNorm statistics to one image (``predict.py --adapt_bn N``).

A model's BatchNorm layers normalise each feature with the mean and variance it had over the training
tiles. A new acquisition (other date, sensor, haze, blur, noise) moves those statistics, and every layer
then sees features off the scale it was trained on. Re-estimating them on the image to be predicted,
without labels and without changing a weight ("AdaBN": Li et al. 2016, *Revisiting Batch Normalization
For Practical Domain Adaptation*; Schneider et al. 2020, *Improving robustness against common corruptions
by covariate shift adaptation*), undoes much of that shift.

:func:`sample_groups` picks about ``N`` windows spread evenly over the image's prediction grid,
:func:`adapt_batchnorm` runs them through the model with its BatchNorm layers estimating statistics (a
plain average over all sampled windows, every other layer in eval mode, no gradients), and
:func:`restore_batchnorm` puts the training statistics back after the image, so that each image is
adapted from the same model. The sample is a function of the image alone, so several processes sharing
an image adapt identically.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from .data import normalize
from .device import amp_dtype

#: Least share of valid (alpha 255) pixels of a window used for the statistics (no-data is not the scene;
#: on the demo's sparse validation images 0.9 left 2 windows and full adaptation fell from 0.75 to 0.50
#: mIoU, 0.2 gave 0.69).
MIN_VALID = 0.2

BNState = list[tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, float | None]]


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``model`` that track running statistics (``_BatchNorm`` subclasses)."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def sample_groups(ys: Sequence[int], columns: int, windows: int) -> tuple[list[list[int]], int]:
    """About ``windows`` windows spread evenly over a grid of ``len(ys)`` rows of ``columns`` windows.

    Returns ``(groups, column_step)``: every ``k``-th window row as a group of its own (rows ``ys[k//2::k]``)
    and the step ``s`` between the columns to keep within a row (columns ``s//2::s``), so that rows x
    columns ~= ``windows`` (all of them when the grid holds fewer).
    """
    rows, columns = len(ys), max(int(columns), 1)
    if rows == 0 or windows <= 0:
        return [], 1
    total = rows * columns
    if total <= windows:
        return [[y] for y in ys], 1
    # the same share of rows and of columns, so that the sample covers the image in both directions
    share = (windows / total) ** 0.5
    row_step = max(1, round(1 / share)) if rows > 1 else 1
    chosen = list(ys[row_step // 2 :: row_step])
    per_row = max(1, -(-int(windows) // len(chosen)))
    col_step = max(1, columns // per_row)
    return [[y] for y in chosen], col_step


def save_batchnorm(model: nn.Module) -> BNState:
    """The running statistics (and momentum) of every BatchNorm layer, copied."""
    return [(m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum)
            for m in batchnorm_layers(model)]


def restore_batchnorm(state: BNState) -> None:
    """Put back what :func:`save_batchnorm` copied."""
    for m, mean, var, count, momentum in state:
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        m.num_batches_tracked.copy_(count)
        m.momentum = momentum


@torch.no_grad()
def adapt_batchnorm(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    input_norm: str,
    *,
    transform: Callable | None = None,
    amp: bool = False,
    channels_last: bool = False,
    multiple: int = 32,
    weight: float = 1.0,
) -> int:
    """Replace the running statistics of ``model``'s BatchNorm layers by those of the windows in ``batches``.

    Args:
        model: in eval mode (it is returned to eval mode); its BatchNorm layers get the mean and the unbiased
            variance of their inputs averaged over every batch (``momentum=None``); nothing else changes.
        batches: ``uint8 [B, 4, T, T]`` RGBA windows on the model's device (alpha 255 = valid).
        input_norm: the model's input normalisation (:func:`cropmap.data.normalize`).
        transform: the radiometric transform prediction applies first, if any.
        multiple: pad windows to a multiple of this (edge replicate), as prediction does.
        weight: the image's share of the final statistics: ``weight * image + (1 - weight) * training``
            for each mean and variance (1: the image's alone, AdaBN; 0: no change). Schneider et al. mix
            the same way, the training statistics standing for a prior.

    BatchNorm layers over 1x1 inputs (global pooling) keep the training statistics. Windows with under
    :data:`MIN_VALID` valid pixels are left out (unless no window has more). Batches
    are joined so that each forward pass has at least 2 windows (a BatchNorm over pooled 1x1 features, as
    in DeepLabv3's ASPP, needs two). Returns the number of windows used; with none (or no BatchNorm layer)
    the model is unchanged.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    kept, spare = [], []
    for rgba in batches:
        share = (rgba[:, 3] == 255).flatten(1).float().mean(1)
        kept += list(rgba[share >= MIN_VALID])
        if not kept:
            spare += list(rgba[share > 0])
    windows = kept or spare
    if not windows:
        return 0
    if len(windows) == 1:
        windows = windows * 2  # the same statistics, and ASPP's pooled BatchNorm can run
    prior = [(m.running_mean.clone(), m.running_var.clone(), m.momentum) for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the forward passes
    size = 8
    bounds = [(s, min(s + size, len(windows))) for s in range(0, len(windows), size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < 2:
        bounds[-2] = (bounds[-2][0], bounds[-1][1])
        bounds.pop()
    pooled = set()  # layers over global-pooled 1x1 features (ASPP's image pooling) keep their statistics:

    def spot(m, inputs):  # across windows, not pixels; one image's few windows cannot estimate them
        if inputs[0].shape[-2:].numel() == 1:
            pooled.add(m)

    hooks = [m.register_forward_pre_hook(spot) for m in layers]
    was_training = model.training
    model.eval()
    for m in layers:
        m.train()
    try:
        for s, e in bounds:
            rgba = torch.stack(windows[s:e])
            valid = rgba[:, 3] == 255
            x = normalize(rgba if transform is None else transform(rgba), input_norm, valid)
            h, w = x.shape[-2:]
            ph, pw = (-h) % multiple, (-w) % multiple
            if ph or pw:
                x = nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            dtype = amp_dtype(x.device, amp)
            with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                model(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
        for m, (mean, var, momentum) in zip(layers, prior):
            m.momentum = momentum
            if m in pooled:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
            elif weight != 1.0:
                m.running_mean.mul_(weight).add_(mean, alpha=1.0 - weight)
                m.running_var.mul_(weight).add_(var, alpha=1.0 - weight)
    return len(windows)
