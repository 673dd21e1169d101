"""Segmentation models of cropmap and their registry.

Every model takes float32 ``[B, 3, H, W]`` normalised images (H, W multiples of 32) and
returns a dict ``{"out": logits [B, num_classes, H, W]}`` plus ``"aux"`` (same shape) when
built with ``aux=True``.  Use :func:`build_model`; valid names are in :data:`MODELS` and
:data:`BACKBONES` (or :func:`list_backbones`).
"""

from __future__ import annotations

import os

from torch import nn

from .backbones import dilate_resnet_, make_resnet
from .deeplab import OUTPUT_STRIDES, build_deeplabv3, check_output_stride
from .registry import BACKBONES, MODELS, RESNETS, check_backbone, list_backbones
from .unet import SCSE, DecoderBlock, UNetResNet, Unet34_scSE_hyper, build_unet

__all__ = [
    "BACKBONES",
    "MODELS",
    "OUTPUT_STRIDES",
    "RESNETS",
    "SCSE",
    "DecoderBlock",
    "UNetResNet",
    "Unet34_scSE_hyper",
    "build_deeplabv3",
    "build_model",
    "build_unet",
    "check_backbone",
    "dilate_resnet_",
    "list_backbones",
    "make_resnet",
]


def build_model(
    model: str,
    backbone: str,
    num_classes: int = 4,
    pretrained: str | os.PathLike | None = None,
    output_stride: int = 16,
    aux: bool = True,
) -> nn.Module:
    """Build a segmentation model by name.

    Args:
        model: ``"deeplabv3"`` or ``"unet"``.
        backbone: ``list_backbones(model)``: deeplabv3 -> resnet18/34/50/101, unet -> resnet34/50.
        num_classes: number of classes (logit channels).
        pretrained: ``None`` (default, random init, no download), ``"imagenet"`` (torchvision
            downloads the ImageNet ResNet weights: needs internet) or the path of a local
            torchvision ResNet state_dict file.  Only the encoder is initialised.
        output_stride: 8 or 16 for deeplabv3.  The U-Net's encoder always runs to stride 32
            and decodes back to full resolution, so the value is validated but has no effect.
        aux: deeplabv3: auxiliary FCN head on layer3; unet: deep-supervision head.

    Returns:
        ``nn.Module`` whose forward maps ``[B, 3, H, W]`` float32 to
        ``{"out": [B, num_classes, H, W], "aux": [B, num_classes, H, W] (if aux)}`` logits.
        The encoder is ``model.backbone``.

    Raises:
        ValueError: unknown model / backbone / output_stride (the message lists the valid
            values), or a pretrained file whose keys or shapes do not match.
        FileNotFoundError: ``pretrained`` path does not exist.
    """
    check_backbone(model, backbone)
    check_output_stride(output_stride)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if model == "deeplabv3":
        return build_deeplabv3(backbone, num_classes, pretrained, output_stride, aux)
    return build_unet(backbone, num_classes=num_classes, pretrained=pretrained, aux=aux)
