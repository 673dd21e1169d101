"""Loss modules on logits and the training criterion built by name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .focal import _as_float, focal_loss
from .lovasz import lovasz_softmax
from .smoothing import EdgeSmoothedLoss

LOSSES = ("ce", "focal", "lovasz", "focal+lovasz")
#: ``none``: hard labels; ``edge``: edge-aware label smoothing of the CE / focal term (:mod:`losses.smoothing`).
LABEL_SMOOTHING = ("none", "edge")


class CrossEntropyLoss(nn.Module):
    """Cross-entropy averaged over valid pixels; all-ignored batch -> 0 (not NaN).

    ``forward(logits float [B, C, H, W], target int64 [B, H, W]) -> scalar``.
    """

    def __init__(self, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = F.cross_entropy(_as_float(logits), target.long(), ignore_index=self.ignore_index, reduction="sum")
        return total / (target != self.ignore_index).sum().clamp_min(1)


class FocalLoss(nn.Module):
    """Module form of :func:`losses.focal_loss` (on logits ``[B, C, H, W]``, target ``[B, H, W]``)."""

    def __init__(
        self, gamma: float = 2.0, alpha: Sequence[float] | torch.Tensor | None = None, ignore_index: int = 255
    ) -> None:
        super().__init__()
        self.gamma = gamma
        self.ignore_index = ignore_index
        if alpha is not None:
            self.register_buffer("alpha", torch.as_tensor(alpha, dtype=torch.float32))
        else:
            self.alpha = None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, target, gamma=self.gamma, alpha=self.alpha, ignore_index=self.ignore_index)


class LovaszSoftmax(nn.Module):
    """Lovasz-softmax on *logits*: applies ``softmax(dim=1)`` then :func:`losses.lovasz_softmax`.

    ``forward(logits float [B, C, H, W], target int64 [B, H, W]) -> scalar`` in [0, 1].
    """

    def __init__(self, classes: str | Sequence[int] = "present", per_image: bool = False, ignore_index: int = 255) -> None:
        super().__init__()
        self.classes = classes
        self.per_image = per_image
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probas = F.softmax(_as_float(logits), dim=1)
        return lovasz_softmax(probas, target, self.classes, self.per_image, self.ignore_index)


class SumOfLosses(nn.Module):
    """Sum of several losses on the same (logits, target); e.g. focal + Lovasz."""

    def __init__(self, *losses: nn.Module) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(loss(logits, target) for loss in self.losses)


class SegmentationCriterion(nn.Module):
    """Applies a pixel loss to a model's output, adding the weighted auxiliary term.

    ``forward(outputs, target)``: ``outputs`` is logits ``[B, C, H, W]`` or the models'
    dict ``{"out": logits, "aux": logits (optional)}``; ``target`` int64 ``[B, H, W]`` with
    ``ignore_index`` for ignored pixels.  Returns the scalar
    ``loss(out) + aux_weight * loss(aux)`` (aux term only when ``"aux"`` is present; it is
    kept even when ``aux_weight == 0`` so every head stays in the graph, as DDP expects).
    """

    def __init__(self, loss: nn.Module, aux_weight: float = 0.2) -> None:
        super().__init__()
        self.loss = loss
        self.aux_weight = aux_weight

    def forward(self, outputs: torch.Tensor | Mapping[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self._one(outputs, target)
        total = self._one(outputs["out"], target)
        if outputs.get("aux") is not None:
            total = total + self.aux_weight * self._one(outputs["aux"], target)
        return total

    def _one(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 4 or target.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(
                f"expected logits [B, C, H, W] and target [B, H, W] of the same B, H, W; "
                f"got {tuple(logits.shape)} and {tuple(target.shape)}"
            )
        return self.loss(logits, target)


def build_loss(
    name: str, aux_weight: float = 0.2, ignore_index: int = 255, gamma: float = 2.0, label_smoothing: str = "none"
) -> nn.Module:
    """Training criterion by name: ``"ce"``, ``"focal"``, ``"lovasz"`` or ``"focal+lovasz"``.

    Args:
        name: loss name (ValueError listing the valid names otherwise).  ``focal+lovasz``
            is the unweighted sum of the two.
        aux_weight: weight of the auxiliary-head loss (the original used 0.1-0.2).
        ignore_index: target value excluded from every loss.
        gamma: focal-loss focusing parameter.
        label_smoothing: ``"none"`` or ``"edge"``: the CE / focal term learns edge-smoothed soft
            targets (:class:`losses.smoothing.EdgeSmoothedLoss`); Lovasz keeps the hard labels, so
            ``lovasz`` alone cannot be smoothed (ValueError).

    Returns:
        :class:`SegmentationCriterion`, called as ``criterion(outputs, target) -> scalar``.
    """
    if label_smoothing not in LABEL_SMOOTHING:
        raise ValueError(f"unknown label smoothing {label_smoothing!r}; valid: {', '.join(LABEL_SMOOTHING)}")
    if label_smoothing == "edge":
        if name == "lovasz":
            raise ValueError("label smoothing 'edge' needs a pixel loss (ce, focal or focal+lovasz), not lovasz alone")
        pixel = EdgeSmoothedLoss(gamma=0.0 if name == "ce" else gamma, ignore_index=ignore_index)
        loss = pixel if name != "focal+lovasz" else SumOfLosses(pixel, LovaszSoftmax(ignore_index=ignore_index))
        return SegmentationCriterion(loss, aux_weight)
    if name == "ce":
        loss: nn.Module = CrossEntropyLoss(ignore_index)
    elif name == "focal":
        loss = FocalLoss(gamma=gamma, ignore_index=ignore_index)
    elif name == "lovasz":
        loss = LovaszSoftmax(ignore_index=ignore_index)
    elif name == "focal+lovasz":
        loss = SumOfLosses(FocalLoss(gamma=gamma, ignore_index=ignore_index), LovaszSoftmax(ignore_index=ignore_index))
    else:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    return SegmentationCriterion(loss, aux_weight)
