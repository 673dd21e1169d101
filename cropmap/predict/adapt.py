"""Test-time adaptation of BatchNorm statistics to one image (``predict.py --adapt_bn N``).

A model's BatchNorm layers normalise each feature with the mean and variance it had over the training
tiles. A new acquisition (other date, sensor, haze, blur, noise) moves those statistics, and every layer
then sees features off the scale it was trained on. Re-estimating them on the image to be predicted,
without labels and without changing a weight ("AdaBN": Li et al. 2016, *Revisiting Batch Normalization
For Practical Domain Adaptation*; Schneider et al. 2020, *Improving robustness against common corruptions
by covariate shift adaptation*), undoes much of that shift.

:func:`sample_groups` picks about ``N`` windows spread evenly over the image's prediction grid,
:func:`select_windows` keeps those with enough valid pixels, :func:`adapt_batchnorm` runs them through
the model (eval mode, no gradients) while each BatchNorm layer measures its input over the valid pixels
of all sampled windows (no-data and padding left out) and normalises with what it will keep, and
:func:`restore_batchnorm` puts the training statistics back after the image, so that each image is
adapted from the same model. The sample is a function of the image alone, so several processes sharing
an image adapt identically.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from cropmap.data.normalize import normalize
from cropmap.core.device import amp_dtype

#: Least share of valid (alpha 255) pixels of a window used for the statistics (no-data is not the scene,
#: but a high bar leaves too few windows of a sparse image to estimate the statistics on).
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


class _AdaptHook:
    """The forward pre-hook of the adapted BatchNorm layers: measures each layer's input, sets its statistics.

    Before a layer runs, its running statistics are reset to the training ones; a layer within ``depth``
    (see :func:`adapt_batchnorm`) whose input is not pooled to 1x1 then merges its input's moments over the
    valid positions (:attr:`mask`, the current batch's valid pixels) into :attr:`acc` and gets the mixed
    statistics, which its own eval-mode forward uses. :meth:`restore` puts the training statistics back,
    :meth:`commit` sets the ones measured over all batches.
    """

    def __init__(self, layers: list[nn.Module], weight: float, depth: float) -> None:
        self.weight = weight
        # per layer: valid weight, mean and sum of squared deviations (float64), merged batch by batch
        self.acc: dict[nn.Module, list] = {m: [0.0, None, None] for m in layers}
        self.trained = {m: (m.running_mean.clone(), m.running_var.clone()) for m in layers}
        self.mask: torch.Tensor | None = None  # the batch's valid mask, float [B, 1, H, W] of the padded input
        self.cutoff = math.ceil(depth * len(layers) - 1e-9)
        self.reached: dict[nn.Module, int] = {}  # layer -> its place in the forward pass

    def __call__(self, m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0]
        mean0, var0 = self.trained[m]
        m.running_mean.copy_(mean0)
        m.running_var.copy_(var0)
        if self.reached.setdefault(m, len(self.reached)) >= self.cutoff:
            return None  # deeper than ``depth``: the training statistics
        if x.shape[-2:].numel() == 1:
            return None  # pooled features: the training statistics
        w = nn.functional.adaptive_avg_pool2d(self.mask, x.shape[-2:])
        n = float(w.sum())
        if n <= 0:
            return None
        mean, m2 = _weighted_moments(x, w, n, mean0)
        self._merge(m, n, mean, m2)
        weight = self.weight
        m.running_mean.copy_((weight * mean + (1.0 - weight) * mean0.double()).to(mean0.dtype))
        m.running_var.copy_((weight * (m2 / n) + (1.0 - weight) * var0.double()).to(var0.dtype))
        return None

    def _merge(self, m: nn.Module, n: float, mean: torch.Tensor, m2: torch.Tensor) -> None:
        """Merge one batch's valid weight ``n``, ``mean`` and ``m2`` into layer ``m``'s accumulator."""
        a = self.acc[m]
        if a[1] is None:
            a[:] = [n, mean, m2]
        else:  # Chan et al.'s pairwise update
            total = a[0] + n
            delta = mean - a[1]
            a[1] = a[1] + delta * (n / total)
            a[2] = a[2] + m2 + delta.square() * (a[0] * n / total)
            a[0] = total

    def restore(self) -> None:
        """Put every layer's training statistics back."""
        for m, (mean0, var0) in self.trained.items():
            m.running_mean.copy_(mean0)
            m.running_var.copy_(var0)

    def commit(self) -> None:
        """Mix, by the weight, each measured layer's statistics over all batches into its (training) ones."""
        weight = self.weight
        for m, (n, mean, m2) in self.acc.items():
            if mean is None:
                continue
            var = m2 / max(n - 1.0, 1.0) if n > 1 else m2 * 0  # unbiased, as BatchNorm's running variance
            m.running_mean.copy_((weight * mean + (1.0 - weight) * m.running_mean.double()).to(m.running_mean.dtype))
            m.running_var.copy_((weight * var + (1.0 - weight) * m.running_var.double()).to(m.running_var.dtype))


def _weighted_moments(x: torch.Tensor, w: torch.Tensor, n: float,
                      mean0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel the mean and the sum of squared deviations (float64) of ``x`` weighted by ``w`` (total ``n``).

    Sums of the deviations from the training mean ``mean0`` (close to the batch's: little cancellation).
    """
    d = x.float() - mean0.float().view(1, -1, 1, 1)
    dw = d * w
    s1 = dw.sum((0, 2, 3)).double()
    s2 = dw.mul_(d).sum((0, 2, 3)).double()
    del d, dw
    mean = mean0.double() + s1 / n
    m2 = (s2 - s1.square() / n).clamp_min(0.0)
    return mean, m2


def select_windows(batches: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """The windows of ``batches`` with at least :data:`MIN_VALID` valid pixels (any valid pixel if none has)."""
    kept, spare = [], []
    for rgba in batches:
        share = (rgba[:, 3] == 255).flatten(1).float().mean(1)
        kept += list(rgba[share >= MIN_VALID])
        if not kept:
            spare += list(rgba[share > 0])
    return kept or spare


def _model_input(rgba: torch.Tensor, input_norm: str, transform: Callable | None, multiple: int,
                 channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, mask)``: the model's input for a stack of RGBA windows, as prediction makes it, and its valid
    mask (float ``[B, 1, H, W]``, the padding not the scene)."""
    valid = rgba[:, 3] == 255
    x = normalize(rgba if transform is None else transform(rgba), input_norm, valid)
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    mask = nn.functional.pad(valid[:, None].float(), (0, pw, 0, ph))
    if ph or pw:
        x = nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, mask


def _run_windows(model: nn.Module, windows: list[torch.Tensor], hook: _AdaptHook, input_norm: str, *,
                 transform: Callable | None, amp: bool, channels_last: bool, multiple: int, size: int = 8) -> None:
    """Run ``windows`` through ``model`` in batches of ``size``, each batch's valid mask in ``hook.mask``."""
    for s in range(0, len(windows), size):
        x, hook.mask = _model_input(torch.stack(windows[s:s + size]), input_norm, transform, multiple, channels_last)
        dtype = amp_dtype(x.device, amp)
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            model(x)


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
    depth: float = 1.0,
) -> int:
    """Re-estimate the running statistics of ``model``'s BatchNorm layers on the valid pixels of ``batches``.

    Args:
        model: in eval mode (it stays in eval mode); its BatchNorm layers get
            ``weight * image + (1 - weight) * training`` for each mean and variance, where the image's are
            the mean and variance of the layer's input over every valid position of every window; nothing
            else changes. 1: the image's alone (AdaBN); 0: no change. Schneider et al. mix the same way, the
            training statistics standing for a prior.
        batches: ``uint8 [B, 4, T, T]`` RGBA windows on the model's device (alpha 255 = valid).
        input_norm: the model's input normalisation (:func:`cropmap.data.normalize.normalize`).
        transform: the radiometric transform prediction applies first, if any.
        multiple: pad windows to a multiple of this (edge replicate), as prediction does.
        weight: the image's share (see ``model``).
        depth: the share of the BatchNorm layers to adapt: the first ``ceil(depth x L)`` of the ``L`` layers in
            the order the forward pass reaches them; the later ones keep the training statistics. Shallow
            layers see the acquisition (contrast, blur, noise, colour), deep ones the scene's content too, whose
            statistics also move with the image's class mix, where adapting them undoes what the model
            recognises (see the README's measurements). 1: every layer.

    Only the scene counts: each layer's input position is weighted by the valid share of the window pixels
    under it (the alpha mask averaged down to the layer's resolution), so the no-data border and the padding
    add nothing. During the pass each BatchNorm normalises its batch with the statistics it will end up
    with (the batch's, mixed with the training ones by ``weight``), so that a layer's statistics are
    estimated on the features it will see in prediction, whatever the weight. BatchNorm layers over 1x1
    inputs (global pooling, as in DeepLabv3's ASPP) keep the training statistics: one image's few windows
    cannot estimate a statistic across windows. Windows with under :data:`MIN_VALID` valid pixels are left
    out (unless no window has more). Returns the number of windows used; with none (or no BatchNorm
    layer) the model is unchanged.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    windows = select_windows(batches)
    if not windows:
        return 0
    hook = _AdaptHook(layers, weight, depth)
    handles = [m.register_forward_pre_hook(hook) for m in layers]
    was_training = model.training
    model.eval()
    try:
        _run_windows(model, windows, hook, input_norm, transform=transform, amp=amp, channels_last=channels_last,
                     multiple=multiple)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
        hook.restore()
    hook.commit()
    return len(windows)
