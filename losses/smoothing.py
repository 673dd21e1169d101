"""Edge-aware label smoothing (the competition winners' trick), as soft targets for the pixel losses.

Near a class border the label is least certain (parcel edges are drawn by hand, and a few pixels of
blur mix the classes), so the target there is softened, and only there. For each pixel an
``window x window`` neighbourhood (11 x 11) gives the histogram ``h`` of the valid labels around it.
The smoothing factor is the neighbourhood's share of *other* classes, ``1 - h[y]``, capped at
``cap`` (0.2): ``eps = min(1 - h[y], cap)``. The soft target puts ``1 - eps`` on the pixel's own class
and spreads ``eps`` over the other classes in proportion to their share of the window::

    q = (1 - eps) * onehot(y) + eps * (h - h[y] * onehot(y)) / (1 - h[y])

Inside a parcel (every neighbour of the same class) ``q`` is the one-hot label; up to the cap ``q``
equals the window's histogram. Ignored pixels (255) do not count in any histogram and get no loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .focal import _as_float


def edge_smoothing_targets(
    target: torch.Tensor, num_classes: int, window: int = 11, cap: float = 0.2, ignore_index: int = 255
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft targets of edge-aware label smoothing.

    Args:
        target: int64 ``[B, H, W]`` labels in ``0..C-1`` or ``ignore_index``.
        num_classes: C.
        window: odd side of the neighbourhood.
        cap: largest smoothing factor.

    Returns:
        ``(q float32 [B, C, H, W], valid bool [B, H, W])``: ``q`` sums to 1 at valid pixels and is 0
        at ignored ones.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number, got {window}")
    valid = target != ignore_index
    onehot = F.one_hot(torch.where(valid, target, 0).long(), num_classes).permute(0, 3, 1, 2).float()
    onehot = onehot * valid[:, None]
    # counts of each class in the window (zero padding: outside pixels count for nothing)
    counts = F.avg_pool2d(onehot, window, stride=1, padding=window // 2, count_include_pad=True) * (window * window)
    hist = counts / counts.sum(1, keepdim=True).clamp_min(1e-6)
    own = (hist * onehot).sum(1, keepdim=True)  # h[y]; 0 at ignored pixels
    other = (1 - own).clamp_min(0)
    eps = other.clamp(max=cap)
    spread = (hist - own * onehot) / other.clamp_min(1e-6)
    q = (1 - eps) * onehot + eps * spread
    return q * valid[:, None], valid


class EdgeSmoothedLoss(nn.Module):
    """Cross-entropy (``gamma = 0``) or focal loss against edge-smoothed soft targets, on logits.

    ``forward(logits float [B, C, H, W], target int64 [B, H, W]) -> scalar``: the mean over valid
    pixels of ``-(1 - p_y) ** gamma * sum_c q_c log p_c`` (``p_y``: probability of the pixel's own
    label, as in the focal loss); an all-ignored batch gives 0 (still attached to the graph).
    """

    def __init__(self, gamma: float = 0.0, window: int = 11, cap: float = 0.2, ignore_index: int = 255) -> None:
        super().__init__()
        self.gamma, self.window, self.cap, self.ignore_index = float(gamma), int(window), float(cap), ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = _as_float(logits)
        q, valid = edge_smoothing_targets(target, logits.shape[1], self.window, self.cap, self.ignore_index)
        logp = F.log_softmax(logits, dim=1)
        loss = -(q * logp).sum(1)  # [B, H, W]
        if self.gamma:
            log_py = logp.gather(1, torch.where(valid, target, 0).long()[:, None])[:, 0]
            # 1 - p_y as -expm1(log p_y), as in focal_loss
            loss = loss * (-torch.expm1(log_py)).clamp_min(torch.finfo(log_py.dtype).tiny).pow(self.gamma)
        loss = torch.where(valid, loss, torch.zeros_like(loss))
        return loss.sum() / valid.sum().clamp_min(1)
