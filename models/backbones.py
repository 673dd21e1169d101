"""ResNet encoders shared by every model: construction, dilation and pretrained loading.

All encoders are plain ``torchvision.models.resnet*`` modules built with ``weights=None``
so that nothing is downloaded unless explicitly asked for (``pretrained="imagenet"``).

Input convention of the encoders (and of every model built on them): float32 images
``[B, 3, H, W]``, normalised the way the ImageNet checkpoints expect
(per-channel mean ``(0.485, 0.456, 0.406)`` and std ``(0.229, 0.224, 0.225)`` on 0..1 RGB).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
import torchvision
from torch import nn

from .registry import RESNETS

#: Number of output channels of (layer1, layer2, layer3, layer4) for each ResNet.
RESNET_CHANNELS = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
}

# Classification-head keys of a torchvision ResNet checkpoint; ignored when loading an encoder.
_HEAD_KEYS = ("fc.weight", "fc.bias")


def dilate_resnet_(resnet: torchvision.models.ResNet, replace_stride_with_dilation: Sequence[bool]) -> None:
    """Turn strided ResNet stages into dilated ones, in place, for any block type.

    torchvision's ``replace_stride_with_dilation`` argument only works for Bottleneck
    ResNets (50/101); its ``BasicBlock`` (ResNet-18/34) raises on dilation > 1.  This
    function performs the same transformation after construction by editing the
    ``stride``/``dilation``/``padding`` attributes of the existing convolutions, so
    weight shapes (and therefore ImageNet checkpoints) are unchanged.

    It follows torchvision's convention exactly: for ``layer2..layer4`` with the flag
    set, the stride-2 convolutions (the first block's 3x3 and its 1x1 downsample) get
    stride 1 and the stage's dilation doubles; the 3x3 convolutions of the stage's
    first block use the dilation in effect *before* the stage and all later blocks the
    new one (padding = dilation keeps the spatial size).  A stage without the flag that
    follows a dilated one keeps its stride and uses the current dilation throughout.

    Args:
        resnet: a torchvision ResNet (any depth), modified in place.
        replace_stride_with_dilation: three booleans for layer2, layer3, layer4.
    """
    flags = tuple(bool(f) for f in replace_stride_with_dilation)
    if len(flags) != 3:
        raise ValueError(f"replace_stride_with_dilation needs 3 booleans, got {replace_stride_with_dilation!r}")
    dilation = 1
    for layer, flag in zip((resnet.layer2, resnet.layer3, resnet.layer4), flags):
        previous = dilation
        if flag:
            dilation *= 2
        for index, block in enumerate(layer):
            block_dilation = previous if index == 0 else dilation
            for conv in block.modules():
                if not isinstance(conv, nn.Conv2d):
                    continue
                if flag and conv.stride == (2, 2):
                    conv.stride = (1, 1)
                if conv.kernel_size == (3, 3):
                    conv.dilation = (block_dilation, block_dilation)
                    conv.padding = (block_dilation, block_dilation)


def _unwrap_state_dict(obj: object, source: str) -> dict[str, torch.Tensor]:
    """Return the tensor mapping inside a loaded checkpoint (plain, {'state_dict'}, {'model'})."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{source}: expected a torchvision ResNet state_dict (mapping of names to tensors)")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_resnet_state_dict_(
    resnet: torchvision.models.ResNet, state: Mapping[str, torch.Tensor], source: str, backbone: str
) -> None:
    """Copy a torchvision ResNet state_dict into ``resnet``; strict except for ``fc.*``.

    ``fc.weight``/``fc.bias`` (the ImageNet classifier) are ignored, BatchNorm
    ``num_batches_tracked`` buffers are optional (old torchvision checkpoints lack them).
    Anything else missing, unexpected or of the wrong shape raises ``ValueError`` naming
    ``source`` and the first offending keys.
    """
    expected = resnet.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected and k not in _HEAD_KEYS]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{label}: {keys[:5]}{more}")
        raise ValueError(f"{source} does not match a torchvision {backbone} state_dict; " + "; ".join(parts))
    filtered = {k: v for k, v in state.items() if k in expected}
    resnet.load_state_dict(filtered, strict=False)


def _fetch_imagenet(weights, backbone: str) -> None:
    """Download torchvision's ImageNet weights into torch hub's cache unless they are there.

    Raises ``FileNotFoundError`` with one line (the reason, and how to pass a local file instead) when the
    download fails, e.g. without internet. Nothing is printed before the download starts (torch hub's own
    loader prints a "Downloading" line first), so a failure is that one line.
    """
    import re
    from urllib.parse import urlparse

    from torch.hub import download_url_to_file, get_dir

    name = os.path.basename(urlparse(weights.url).path)
    cached = os.path.join(get_dir(), "checkpoints", name)
    if os.path.isfile(cached):
        return
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    match = re.search(r"-([a-f0-9]+)\.", name)  # torch hub's convention: the file name holds a sha256 prefix
    try:
        download_url_to_file(weights.url, cached, match.group(1) if match else None, progress=True)
    except Exception as exc:  # URLError, timeouts, HTTP errors, hash mismatch
        reason = getattr(exc, "reason", None) or exc
        raise FileNotFoundError(
            f"--pretrained imagenet: downloading torchvision's {backbone} weights failed ({str(reason)[:80]}); "
            f"without internet, fetch {weights.url} once elsewhere and pass the file: --pretrained PATH/{name}"
        ) from None


def make_resnet(
    backbone: str,
    pretrained: str | os.PathLike | None = None,
    replace_stride_with_dilation: Sequence[bool] = (False, False, False),
) -> torchvision.models.ResNet:
    """Build a torchvision ResNet encoder, optionally load ImageNet weights, optionally dilate it.

    Args:
        backbone: one of ``RESNETS``.
        pretrained: ``None`` (random init, nothing downloaded), ``"imagenet"`` (torchvision's
            ``IMAGENET1K_V1`` weights, downloaded by torchvision if not cached: needs
            internet) or the path of a local torchvision ResNet ``state_dict`` file (``.pth``).
        replace_stride_with_dilation: flags for layer2..layer4 (see :func:`dilate_resnet_`).

    Returns:
        The ResNet (its ``avgpool``/``fc`` are still present; callers use the stages only).

    Raises:
        ValueError: unknown backbone, or a checkpoint whose keys/shapes do not match.
        FileNotFoundError: ``pretrained`` is neither ``None``, ``"imagenet"`` nor an existing file.
    """
    if backbone not in RESNETS:  # a programming error: model builders check names (registry.check_backbone)
        raise KeyError(backbone)
    resnet = getattr(torchvision.models, backbone)(weights=None)
    if pretrained is not None:
        if str(pretrained) == "imagenet":
            weights = torchvision.models.get_model_weights(backbone).IMAGENET1K_V1
            _fetch_imagenet(weights, backbone)
            state = weights.get_state_dict(progress=False)  # from torch hub's cache now
            source = f"torchvision {backbone} IMAGENET1K_V1 weights"
        else:
            path = os.fspath(pretrained)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"pretrained checkpoint not found: {path!r} (expected None, 'imagenet' or the path of a "
                    f"torchvision {backbone} state_dict file)"
                )
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # unreadable / not a torch file
                raise ValueError(f"{path}: cannot read a torch state_dict ({exc})") from exc
            state = _unwrap_state_dict(obj, path)
            source = path
        load_resnet_state_dict_(resnet, state, source, backbone)
    if any(replace_stride_with_dilation):
        dilate_resnet_(resnet, replace_stride_with_dilation)
    return resnet
