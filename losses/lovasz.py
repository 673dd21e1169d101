"""Lovasz-softmax loss (Berman, Rannen Triki, Blaschko, CVPR 2018), written from the paper.

For a class c, let ``m_i = |[y_i = c] - p_i(c)|`` be the error of pixel i.  The Jaccard
loss of a set of mispredicted pixels M is ``Delta(M) = |M| / |{y = c} U M|``; it is
submodular, and its Lovasz extension evaluated at the error vector m is

    sum_i m_(i) * (Delta(S_i) - Delta(S_{i-1})),

where m_(1) >= m_(2) >= ... are the errors sorted in decreasing order and S_i is the set
of the first i pixels in that order.  With ``P`` = number of pixels of class c and
``n_i`` = number of pixels *not* of class c among the first i,
``Delta(S_i) = i / (P + n_i)`` (``Delta(S_0) = 0``).  On a hard (one-hot) prediction the
extension equals ``1 - IoU_c`` exactly; it is piecewise linear in the probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _jaccard_increments(is_class_sorted: torch.Tensor) -> torch.Tensor:
    """``Delta(S_i) - Delta(S_{i-1})`` for i = 1..N given the sorted class indicator (float [N])."""
    positives = is_class_sorted.sum()
    rank = torch.arange(1, is_class_sorted.numel() + 1, device=is_class_sorted.device, dtype=is_class_sorted.dtype)
    negatives_so_far = torch.cumsum(1.0 - is_class_sorted, dim=0)
    delta = rank / (positives + negatives_so_far)  # denominator >= 1: either P >= 1 or n_i = i >= 1
    return torch.cat([delta[:1], delta[1:] - delta[:-1]])


def _lovasz_flat(
    probas: torch.Tensor, labels: torch.Tensor, classes: str | Sequence[int]
) -> torch.Tensor | None:
    """Mean class loss over the selected classes for valid pixels only.

    probas: float [N, C]; labels: int64 [N] in 0..C-1.  Returns None when no class is selected.
    """
    num_classes = probas.shape[1]
    if classes == "present":
        selected = torch.unique(labels).tolist()
    elif classes == "all":
        selected = list(range(num_classes))
    else:
        selected = [int(c) for c in classes]
    if not selected or probas.shape[0] == 0:
        return None
    losses = []
    for c in selected:
        is_class = (labels == c).to(probas.dtype)
        errors = (is_class - probas[:, c]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, _jaccard_increments(is_class[order])))
    return torch.stack(losses).mean()


def lovasz_softmax(
    probas: torch.Tensor,
    labels: torch.Tensor,
    classes: str | Sequence[int] = "present",
    per_image: bool = False,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Lovasz-softmax loss on class probabilities.

    Args:
        probas: float ``[B, C, H, W]`` softmax probabilities (each pixel sums to 1; this
            function does not apply the softmax - :class:`losses.LovaszSoftmax` does).
        labels: int64 ``[B, H, W]`` in ``0..C-1`` or ``ignore_index``.
        classes: ``"present"`` (classes occurring among the valid labels, the paper's
            default), ``"all"``, or an explicit list of class indices.
        per_image: compute the loss per image and average over the images that have at
            least one selected class (otherwise the whole batch is one set of pixels).
        ignore_index: label value whose pixels are left out.

    Returns:
        Scalar tensor: mean over selected classes of the Lovasz extension of the Jaccard
        loss, in ``[0, 1]``.  When nothing is selected (e.g. all pixels ignored) it is ``0``
        still attached to ``probas``.  Ignored pixels get exactly zero gradient.
    """
    if probas.dim() != 4 or labels.shape != probas.shape[:1] + probas.shape[2:]:
        raise ValueError(f"expected probas [B, C, H, W] and labels [B, H, W], got {tuple(probas.shape)} and {tuple(labels.shape)}")
    if isinstance(classes, str) and classes not in ("present", "all"):
        raise ValueError(f"classes must be 'present', 'all' or a list of class ids, got {classes!r}")
    if probas.dtype in (torch.float16, torch.bfloat16):  # cumulative sums need fp32
        probas = probas.float()
    num_classes = probas.shape[1]
    groups = [(probas[i : i + 1], labels[i : i + 1]) for i in range(probas.shape[0])] if per_image else [(probas, labels)]
    losses = []
    for p, y in groups:
        flat_p = p.permute(0, 2, 3, 1).reshape(-1, num_classes)
        flat_y = y.reshape(-1)
        valid = flat_y != ignore_index
        loss = _lovasz_flat(flat_p[valid], flat_y[valid].long(), classes)
        if loss is not None:
            losses.append(loss)
    if not losses:
        return probas.sum() * 0.0
    return torch.stack(losses).mean()
