"""Softmax focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection") for segmentation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _as_float(logits: torch.Tensor) -> torch.Tensor:
    """Half/bfloat16 logits are promoted to float32 for the log-softmax; float32/64 are kept."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    gamma: float = 2.0,
    alpha: Sequence[float] | torch.Tensor | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Softmax focal loss, averaged over the valid pixels.

    For each pixel with label ``t != ignore_index``, ``p_t = softmax(logits)[t]`` and the
    pixel loss is ``-alpha[t] * (1 - p_t) ** gamma * log(p_t)`` (``alpha[t] = 1`` when
    ``alpha`` is None).  The result is the plain mean of the pixel losses over the valid
    pixels (note: unlike ``F.cross_entropy(weight=...)``, the mean is *not* divided by the
    sum of the weights).  With ``gamma=0`` and no ``alpha`` this is exactly cross-entropy.

    Args:
        logits: float ``[B, C, H, W]`` (or ``[B, C]``) raw scores; fp16/bf16 computed in fp32.
        labels: int64 ``[B, H, W]`` (or ``[B]``) in ``0..C-1`` or ``ignore_index``.
        gamma: focusing parameter >= 0.
        alpha: optional per-class weights, length C.
        ignore_index: label value excluded from the loss.

    Returns:
        Scalar tensor.  If no pixel is valid it is ``0`` and still attached to ``logits``
        (backward gives zero gradients).  Ignored pixels receive exactly zero gradient.
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if logits.dim() < 2 or labels.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)} (expect [B, C, ...] / [B, ...])")
    log_probs = F.log_softmax(_as_float(logits), dim=1)
    valid = labels != ignore_index
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels)).long()
    log_pt = log_probs.gather(1, safe_labels.unsqueeze(1)).squeeze(1)
    # Select the valid pixels by indexing: ignored pixels get exactly zero gradient.
    log_pt = log_pt[valid]
    target = safe_labels[valid]
    loss = -log_pt
    if gamma != 0:
        # 1 - p_t computed as -expm1(log p_t) (accurate when p_t -> 1); the clamp keeps the
        # gradient of (.)**gamma finite for gamma < 1 where p_t rounds to exactly 1.
        one_minus_pt = (-torch.expm1(log_pt)).clamp_min(torch.finfo(log_pt.dtype).tiny)
        loss = loss * one_minus_pt.pow(gamma)
    if alpha is not None:
        weights = torch.as_tensor(alpha, dtype=loss.dtype, device=loss.device)
        if weights.shape != (logits.shape[1],):
            raise ValueError(f"alpha needs {logits.shape[1]} per-class weights, got shape {tuple(weights.shape)}")
        loss = loss * weights[target]
    count = loss.numel()
    if count == 0:
        return log_probs.sum() * 0.0
    return loss.sum() / count
