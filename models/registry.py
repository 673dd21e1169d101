"""The names of the models and backbones, and the one check of a backbone name."""

from __future__ import annotations

#: torchvision ResNets the encoders are built from.
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")

#: Valid backbones for each model name.
BACKBONES: dict[str, tuple[str, ...]] = {
    "deeplabv3": RESNETS,
    "unet": ("resnet34", "resnet50"),
}

#: Valid model names.
MODELS: tuple[str, ...] = tuple(BACKBONES)


def list_backbones(model: str) -> tuple[str, ...]:
    """Valid backbone names for ``model`` (ValueError listing the models if unknown)."""
    if model not in BACKBONES:
        raise ValueError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")
    return BACKBONES[model]


def check_backbone(model: str, backbone: str) -> None:
    """ValueError (listing the valid names) unless ``backbone`` is one of ``model``'s."""
    valid = list_backbones(model)
    if backbone not in valid:
        raise ValueError(f"unknown backbone {backbone!r} for {model}; valid: {', '.join(valid)}")
