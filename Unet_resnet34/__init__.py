"""The ResNet-34 U-Net (scSE + hypercolumn) as the original project exposed it.

The implementation lives in :mod:`models.unet`; this package only re-exports it.
"""

from .model import Unet34_scSE_hyper, UNetResNet, build_unet

__all__ = ["UNetResNet", "Unet34_scSE_hyper", "build_unet"]
