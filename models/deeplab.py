"""DeepLabV3 (Chen et al. 2017) built from torchvision's own classes on a dilated ResNet.

The model is ``torchvision.models.segmentation.DeepLabV3``: ASPP with image pooling
(``DeepLabHead``) on ``layer4`` and, when ``aux=True``, the auxiliary ``FCNHead`` on
``layer3`` - exactly how torchvision's ``deeplabv3_resnet50/101`` assemble it, so the
state_dict keys and parameter count of ``resnet50``/``resnet101`` are identical to
``deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=C, aux_loss=True)``.

Output stride: ``16`` dilates ``layer4`` only, ``8`` dilates ``layer3`` and ``layer4``.
ResNet-18/34 (BasicBlock) are dilated the same way by :func:`models.backbones.dilate_resnet_`
(torchvision refuses dilation for BasicBlock, but the operation is the same: stride-2
convolutions become stride 1 and the following 3x3 convolutions get the matching
dilation; weight shapes are unchanged so ImageNet checkpoints still load).  That keeps a
single DeepLabV3 definition whose only difference between backbones is the width of the
features (512 instead of 2048 channels on layer4, 256 instead of 1024 on layer3).

ASPP rates follow the DeepLabV3 paper: (6, 12, 18) at output stride 16 and the doubled
(12, 24, 36) at output stride 8 (the latter is what torchvision uses; the rates do not
change the parameter count).

Training note: the ASPP image-pooling branch applies BatchNorm to a ``[B, 256, 1, 1]``
tensor, so in ``train()`` mode a batch of one image raises in BatchNorm; train with
``batch_size >= 2`` and ``drop_last=True``.  ``eval()`` mode works with any batch size.
"""

from __future__ import annotations

import os

from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
from torchvision.models.segmentation.fcn import FCNHead

from .backbones import RESNET_CHANNELS, make_resnet
from .registry import check_backbone

OUTPUT_STRIDES = (8, 16)
_DILATION = {16: (False, False, True), 8: (False, True, True)}
_ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


def check_output_stride(output_stride: int) -> None:
    """ValueError (listing the valid values) unless ``output_stride`` is one of :data:`OUTPUT_STRIDES`."""
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"unsupported output_stride {output_stride!r}; valid: {OUTPUT_STRIDES}")


def build_deeplabv3(backbone: str, num_classes: int, pretrained: str | os.PathLike | None, output_stride: int,
                    aux: bool) -> nn.Module:
    """Build torchvision's DeepLabV3 on a dilated ResNet (:func:`models.build_model` holds the defaults).

    Args:
        backbone: one of ``BACKBONES["deeplabv3"]``.
        num_classes: number of output channels (classes).
        pretrained: ``None``, ``"imagenet"`` or a local torchvision ResNet state_dict path;
            only the backbone is initialised from it (heads stay random).
        output_stride: 8 or 16 (ratio of input size to layer4 feature size).
        aux: add the auxiliary FCN head on layer3.

    Returns:
        ``DeepLabV3`` whose ``forward(x)`` takes float32 ``[B, 3, H, W]`` (normalised images;
        any H, W >= 32 works, multiples of 32 are what the pipeline uses) and returns an
        ``OrderedDict`` ``{"out": [B, num_classes, H, W]}`` plus ``"aux"`` of the same shape
        when ``aux=True``; both are raw logits bilinearly upsampled to the input size.
        The encoder is reachable as ``model.backbone`` (an ``IntermediateLayerGetter``).
    """
    check_backbone("deeplabv3", backbone)
    check_output_stride(output_stride)
    resnet = make_resnet(backbone, pretrained, _DILATION[output_stride])
    _, _, c3, c4 = RESNET_CHANNELS[backbone]
    return_layers = {"layer4": "out"}
    if aux:
        return_layers["layer3"] = "aux"
    features = IntermediateLayerGetter(resnet, return_layers=return_layers)
    classifier = DeepLabHead(c4, num_classes, atrous_rates=_ASPP_RATES[output_stride])
    aux_classifier = FCNHead(c3, num_classes) if aux else None
    return DeepLabV3(features, classifier, aux_classifier)
