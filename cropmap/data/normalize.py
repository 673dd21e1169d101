"""The one input normalisation of the models, which training and prediction both import.

``imagenet`` is the original's fixed ImageNet mean and std; ``window`` standardises each image (crop,
window) per channel over its own valid pixels. A checkpoint records which one its model was trained with.
"""

from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Input normalisations (``--input_norm``): ``imagenet``, the original's fixed ImageNet mean and std;
#: ``window``, each image (crop, window) standardised per channel over its own valid pixels.
INPUT_NORMS = ("window", "imagenet")
#: What a checkpoint that does not say was trained with (every checkpoint before ``--input_norm``).
LEGACY_INPUT_NORM = "imagenet"
#: ``window``: added to each channel's standard deviation (0..1 scale, about 5 grey levels), so that a
#: nearly uniform window (bare soil, water) does not have its sensor noise blown up to unit variance.
WINDOW_STD_FLOOR = 0.02


def normalize(image: torch.Tensor, mode: str = "imagenet", valid: torch.Tensor | None = None) -> torch.Tensor:
    """The one input normalisation of the models: ``uint8 [..., C >= 3, H, W]`` RGB(A) tensor ->
    ``float32 [..., 3, H, W]`` on the input's device (channels past the third, e.g. alpha, are dropped).

    ``mode``:
        ``imagenet``: ``(x / 255 - IMAGENET_MEAN) / IMAGENET_STD`` (the original's).
        ``window``: each image of the batch standardised per channel over its valid pixels,
            ``(x - mean) / (std + WINDOW_STD_FLOOR)`` on the 0..1 scale, and no-data set to 0. What an
            acquisition changes smoothly over a window (illumination, band gains, haze, most of a tone
            curve) is an affine map of each channel there, which this undoes; colours relative to the
            rest of the window stay.
    ``valid``: ``bool [..., H, W]`` (or ``[..., 1, H, W]``), the pixels with data; default: alpha 255
    when there is a fourth channel, else any non-zero RGB value. Only ``window`` reads it.
    """
    if mode not in INPUT_NORMS:
        raise ValueError(f"unknown input normalisation {mode!r}; valid: {INPUT_NORMS}")
    x = image[..., :3, :, :].float().div_(255.0)
    if mode == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1)
        return x.sub_(mean).div_(std)
    if valid is None:
        valid = image[..., 3, :, :] == 255 if image.shape[-3] > 3 else (image[..., :3, :, :] != 0).any(-3)
    w = (valid if valid.dim() == x.dim() else valid.unsqueeze(-3)).to(x.dtype)  # [..., 1, H, W]
    n = w.sum((-2, -1), keepdim=True).clamp_(min=1.0)
    mean = (x * w).sum((-2, -1), keepdim=True).div_(n)
    x.sub_(mean).mul_(w)
    std = x.square().sum((-2, -1), keepdim=True).div_(n).sqrt_().add_(WINDOW_STD_FLOOR)
    return x.div_(std)
