"""``Unet34_scSE_hyper`` and ``build_unet``, re-exported from :mod:`models.unet` (single implementation).

``Unet34_scSE_hyper(num_classes=4, pretrained=None, aux=True, dropout=0.0)`` maps float32
``[B, 3, H, W]`` (H, W multiples of 32) to ``{"out": [B, num_classes, H, W]}`` logits plus
``"aux"`` when ``aux=True``.
"""

from models.unet import UNetResNet, Unet34_scSE_hyper, build_unet

__all__ = ["UNetResNet", "Unet34_scSE_hyper", "build_unet"]
