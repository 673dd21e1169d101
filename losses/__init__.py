"""Segmentation losses: focal, Lovasz-softmax, cross-entropy, and the training criterion.

Function forms take logits (focal) or probabilities (Lovasz) ``[B, C, H, W]`` and int64
labels ``[B, H, W]`` with ``ignore_index`` (255) for ignored pixels; module forms take
logits; :func:`build_loss` returns the criterion the training scripts call as
``criterion(outputs, target)``.
"""

from .criterion import (
    LABEL_SMOOTHING,
    LOSSES,
    CrossEntropyLoss,
    FocalLoss,
    LovaszSoftmax,
    SegmentationCriterion,
    SumOfLosses,
    build_loss,
)
from .focal import focal_loss
from .lovasz import lovasz_softmax
from .smoothing import EdgeSmoothedLoss, edge_smoothing_targets

__all__ = [
    "LABEL_SMOOTHING",
    "LOSSES",
    "EdgeSmoothedLoss",
    "edge_smoothing_targets",
    "CrossEntropyLoss",
    "FocalLoss",
    "LovaszSoftmax",
    "SegmentationCriterion",
    "SumOfLosses",
    "build_loss",
    "focal_loss",
    "lovasz_softmax",
]
