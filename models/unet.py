"""U-Net with a ResNet encoder, scSE decoder blocks and a hypercolumn head.

This is the architecture of the original ``Unet34_scSE_hyper``:

* encoder: torchvision ResNet (``resnet34`` or ``resnet50``) stem and layer1..layer4
  (strides 2, 4, 8, 16, 32);
* center: two 3x3 conv-BN-ReLU at stride 32;
* five decoder blocks, each: 2x bilinear upsampling, concatenation with the encoder
  skip of that resolution (none for the last one), two 3x3 conv-BN-ReLU, then scSE
  attention (Roy et al. 2018: channel SE and spatial SE of the same input, *added*);
* hypercolumn head: the five decoder outputs (strides 16, 8, 4, 2, 1, 64 channels each)
  bilinearly upsampled to the input size and concatenated (320 channels), then
  3x3 conv-BN-ReLU to 64 channels and a 1x1 conv to the class logits.

The original defined BatchNorm layers in its conv blocks but never applied them in
``forward``; here every convolution of the decoder and head is followed by its BatchNorm.

Optional deep supervision (``aux=True``): a small conv-BN-ReLU + 1x1 head on the first
decoder output (stride 16), upsampled to the input size, playing the role DeepLabV3's
FCN auxiliary head plays on layer3.  Same output convention as the DeepLabV3 models.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import RESNET_CHANNELS, make_resnet
from .registry import check_backbone


class ConvBnRelu(nn.Sequential):
    """3x3 convolution (no bias), BatchNorm, ReLU: ``[B, in, H, W] -> [B, out, H, W]``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class SCSE(nn.Module):
    """Concurrent spatial and channel squeeze & excitation: ``x * cSE(x) + x * sSE(x)``.

    cSE: global average pool -> 1x1 conv (C -> C // reduction) -> ReLU -> 1x1 conv -> sigmoid,
    one weight per channel.  sSE: 1x1 conv (C -> 1) -> sigmoid, one weight per pixel.
    Input and output: float ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, reduction: int = 2) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.cse = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )
        self.sse = nn.Sequential(nn.Conv2d(channels, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.cse(x) + x * self.sse(x)


class DecoderBlock(nn.Module):
    """Upsample 2x, concatenate the skip, two conv-BN-ReLU, scSE.

    ``forward(x [B, in, h, w], skip [B, skip, 2h, 2w] or None) -> [B, out, 2h, 2w]``.
    """

    def __init__(self, in_channels: int, skip_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvBnRelu(in_channels + skip_channels, mid_channels)
        self.conv2 = ConvBnRelu(mid_channels, out_channels)
        self.attention = SCSE(out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.attention(self.conv2(self.conv1(x)))


class UNetResNet(nn.Module):
    """U-Net / scSE / hypercolumn segmentation model on a torchvision ResNet encoder.

    Args:
        backbone: ``"resnet34"`` or ``"resnet50"``.
        num_classes: number of output classes.
        pretrained: ``None``, ``"imagenet"`` or a local torchvision ResNet state_dict path
            (encoder only).
        aux: add the deep-supervision head (output key ``"aux"``).
        dropout: ``Dropout2d`` probability applied to the hypercolumn in training (0 = off).

    ``forward(x)``: float32 ``[B, 3, H, W]`` normalised images with H and W multiples of
    32 (ValueError otherwise) -> ``{"out": logits [B, num_classes, H, W]}`` plus
    ``"aux": logits [B, num_classes, H, W]`` when ``aux=True``.  The encoder is
    ``model.backbone`` (a ModuleDict of the ResNet stages).
    """

    def __init__(
        self,
        backbone: str = "resnet34",
        num_classes: int = 4,
        pretrained: str | os.PathLike | None = None,
        aux: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_backbone("unet", backbone)
        resnet = make_resnet(backbone, pretrained)
        c1, c2, c3, c4 = RESNET_CHANNELS[backbone]
        self.backbone = nn.ModuleDict(
            {
                "stem": nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu),  # stride 2, 64 ch
                "layer1": nn.Sequential(resnet.maxpool, resnet.layer1),  # stride 4
                "layer2": resnet.layer2,  # stride 8
                "layer3": resnet.layer3,  # stride 16
                "layer4": resnet.layer4,  # stride 32
            }
        )
        self.center = nn.Sequential(ConvBnRelu(c4, 512), ConvBnRelu(512, 256))
        self.decoder5 = DecoderBlock(256, c3, 256, 64)  # -> stride 16
        self.decoder4 = DecoderBlock(64, c2, 128, 64)  # -> stride 8
        self.decoder3 = DecoderBlock(64, c1, 64, 64)  # -> stride 4
        self.decoder2 = DecoderBlock(64, 64, 64, 64)  # -> stride 2 (skip: stem)
        self.decoder1 = DecoderBlock(64, 0, 32, 64)  # -> stride 1
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Sequential(ConvBnRelu(5 * 64, 64), nn.Conv2d(64, num_classes, 1))
        self.aux_head = nn.Sequential(ConvBnRelu(64, 64), nn.Conv2d(64, num_classes, 1)) if aux else None
        self.backbone_name = backbone
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = x.shape[-2:]
        if height % 32 or width % 32:
            raise ValueError(f"unet input sides must be multiples of 32, got {height}x{width}")
        e0 = self.backbone["stem"](x)
        e1 = self.backbone["layer1"](e0)
        e2 = self.backbone["layer2"](e1)
        e3 = self.backbone["layer3"](e2)
        e4 = self.backbone["layer4"](e3)
        center = self.center(e4)
        d5 = self.decoder5(center, e3)
        d4 = self.decoder4(d5, e2)
        d3 = self.decoder3(d4, e1)
        d2 = self.decoder2(d3, e0)
        d1 = self.decoder1(d2)
        size = (height, width)
        hyper = torch.cat(
            [d1] + [F.interpolate(d, size=size, mode="bilinear", align_corners=False) for d in (d2, d3, d4, d5)],
            dim=1,
        )
        result = {"out": self.head(self.dropout(hyper))}
        if self.aux_head is not None:
            result["aux"] = F.interpolate(self.aux_head(d5), size=size, mode="bilinear", align_corners=False)
        return result


class Unet34_scSE_hyper(UNetResNet):  # noqa: N801 - the name the users know
    """The original ``Unet34_scSE_hyper``: :class:`UNetResNet` on ResNet-34 (BatchNorm bug fixed)."""

    def __init__(self, **options) -> None:
        """``options``: those of :class:`UNetResNet` but the backbone (``num_classes``, ``pretrained``, ``aux``,
        ``dropout``)."""
        super().__init__("resnet34", **options)


def build_unet(backbone: str = "resnet34", **options) -> UNetResNet:
    """Build :class:`UNetResNet` (``Unet34_scSE_hyper`` for ``backbone="resnet34"``); ``options`` and their
    defaults are :class:`UNetResNet`'s (``num_classes``, ``pretrained``, ``aux``, ``dropout``)."""
    if backbone == "resnet34":
        return Unet34_scSE_hyper(**options)
    return UNetResNet(backbone, **options)
