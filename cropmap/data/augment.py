"""Photometric training augmentation that leaves labels and no-data untouched.

:func:`acquisition_jitter` renders a crop as another acquisition of the same ground might look: another
date and sensor set-up changes the illumination (gain), the colour balance (per-band gains), the tone curve
(gamma), the haze (a blend towards a bright grey), the sharpness (optical blur) and the noise, but not the
hue of vegetation or soil. It is what lets a model trained on one acquisition label another.

The competition's winners trained with a colour jitter of about 0.08 in brightness, contrast,
saturation and hue, so that a model does not learn one acquisition's rendering (illumination,
colour balance, haze) as a class cue. :func:`color_jitter` is that jitter in NumPy/OpenCV on one
``uint8 [H, W, 3]`` RGB image; only valid pixels change (no-data stays 0, and a no-data pixel does not
take part in the image statistics that contrast uses).
"""

from __future__ import annotations

import cv2
import numpy as np


def color_jitter(
    image: np.ndarray, valid: np.ndarray, strength: float, rng: np.random.Generator, hue: float | None = None
) -> np.ndarray:
    """Random brightness, contrast, saturation and hue changes, in a random order.

    Factors are drawn uniformly: brightness ``b``, contrast ``c`` and saturation ``s`` in
    ``[1 - strength, 1 + strength]``, the hue shift ``h`` in ``[-hue, hue]`` of the hue circle
    (``hue`` defaults to ``strength``, capped at 0.5). With ``x`` in [0, 1]:

    * brightness: ``x * b``;
    * contrast: ``m + (x - m) * c``, ``m`` the mean grey level of the valid pixels;
    * saturation: ``g + (x - g) * s``, ``g`` each pixel's grey level (ITU-R 601 luma);
    * hue: the HSV hue rotated by ``h * 360`` degrees.

    Values are clipped to [0, 1] after each step (as torchvision's ColorJitter does).

    Args:
        image: ``uint8 [H, W, 3]`` RGB.
        valid: ``bool [H, W]``: pixels that may change (the others are returned as 0).
        strength: jitter amplitude; 0 returns the image unchanged (without drawing from ``rng``).
        rng: the sample's generator.
        hue: hue amplitude (default: ``strength``).

    Returns:
        ``uint8 [H, W, 3]`` (a new array unless ``strength`` is 0).
    """
    if strength <= 0:
        return image
    hue = min(strength if hue is None else hue, 0.5)
    factors = rng.uniform(1 - strength, 1 + strength, 3)
    shift = float(rng.uniform(-hue, hue))
    order = rng.permutation(4)
    x = image.astype(np.float32) * np.float32(1 / 255)
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    any_valid = bool(valid.any())
    for op in order:
        if op == 0:  # brightness
            x *= np.float32(factors[0])
        elif op == 1:  # contrast around the mean grey of the valid pixels
            mean = float((x[valid] @ luma).mean()) if any_valid else 0.0
            x = np.float32(mean) + (x - np.float32(mean)) * np.float32(factors[1])
        elif op == 2:  # saturation: towards / away from each pixel's grey
            grey = (x @ luma)[..., None]
            x = grey + (x - grey) * np.float32(factors[2])
        else:  # hue rotation
            hsv = cv2.cvtColor(np.clip(x, 0, 1), cv2.COLOR_RGB2HSV)  # float32: H in [0, 360)
            hsv[..., 0] = np.mod(hsv[..., 0] + np.float32(shift * 360.0), 360.0)
            x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        np.clip(x, 0, 1, out=x)
    out = np.rint(x * 255.0).astype(np.uint8)
    out[~valid] = 0
    return out


#: the haze colour's range (RGB in [0, 1]): a bright, slightly bluish grey
_HAZE_LO, _HAZE_HI = np.float32([0.72, 0.74, 0.76]), np.float32([0.88, 0.90, 0.94])


def acquisition_jitter(image: np.ndarray, valid: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Render ``image`` as a random other acquisition; ``strength`` ``s`` sets every range.

    With ``x`` in [0, 1], in this order (one draw per call, uniform in the ranges given):

    * optical blur: Gaussian, sigma in ``[0, 6 s]`` pixels (0.9 px at ``s = 0.15``), over valid pixels only;
    * illumination and colour balance: ``x * b * g_c``, ``b`` in ``[1 - s, 1 + s]``, each band's
      ``g_c`` in ``[1 - s / 2, 1 + s / 2]``;
    * tone curve: ``x ** gamma``, ``log(gamma)`` in ``[-s, s]``;
    * haze: ``(1 - h) x + h * haze``, ``h`` in ``[0, s]``, ``haze`` a bright grey (per band 0.72-0.94);
    * sensor noise: Gaussian, sigma in ``[0, 20 s]`` (RGB units of 0..255).

    Values are clipped to [0, 1] at the end. Hue is not rotated (vegetation stays green).

    Args:
        image: ``uint8 [H, W, 3]`` RGB.
        valid: ``bool [H, W]``: pixels that may change (the others are returned as 0).
        strength: ``s``, 0 returns the image unchanged (without drawing from ``rng``).
        rng: the sample's generator.

    Returns:
        ``uint8 [H, W, 3]`` (a new array unless ``strength`` is 0).
    """
    if strength <= 0:
        return image
    s = float(strength)
    sigma, b, h, noise = rng.uniform(0, 6 * s), rng.uniform(1 - s, 1 + s), rng.uniform(0, s), rng.uniform(0, 20 * s)
    gains = rng.uniform(1 - s / 2, 1 + s / 2, 3).astype(np.float32) * np.float32(b)
    gamma = float(np.exp(rng.uniform(-s, s)))
    haze = rng.uniform(_HAZE_LO, _HAZE_HI).astype(np.float32)
    x = image.astype(np.float32) * np.float32(1 / 255)
    if sigma > 0.05:  # normalised: no-data (0) next to a field does not darken its blurred edge
        weight = valid.astype(np.float32)
        x = cv2.GaussianBlur(x * weight[..., None], (0, 0), sigma)
        x /= np.maximum(cv2.GaussianBlur(weight, (0, 0), sigma), np.float32(1e-6))[..., None]
    x *= gains
    np.clip(x, 0, 1, out=x)
    x **= np.float32(gamma)
    x = x * np.float32(1 - h) + haze * np.float32(h)
    if noise > 0:
        x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(noise / 255)
    np.clip(x, 0, 1, out=x)
    out = np.rint(x * 255.0).astype(np.uint8)
    out[~valid] = 0
    return out
