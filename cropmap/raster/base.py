"""What every raster format shares: the header facts of a file and the no-data conventions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: The one value for "ignored / no data" inside the pipeline: label tiles and work strips hold 255 where
#: the source is not valid; the metric and the losses ignore it. (Maps on disk hold 0 there.)
IGNORE = 255

#: Colour names by channel count, as error messages show them.
COLOR_NAMES = {1: "grayscale", 2: "grayscale+alpha", 3: "RGB", 4: "RGBA"}


def valid_mask(alpha: np.ndarray) -> np.ndarray:
    """``bool`` mask of valid pixels from an alpha channel (``uint8``, any shape): alpha 255.

    The one definition of "valid" (the contract's metric counts alpha-255 pixels only, so partly
    transparent pixels are no-data too). Readers opened with ``rgba=True`` give every format an alpha
    channel in this sense (RGB sources: 255 everywhere).
    """
    return alpha == 255


@dataclass(frozen=True)
class RasterInfo:
    """Header facts of a raster file, whatever its format.

    ``channels`` is what a reader returns per pixel (a palette PNG counts 1: its indices, and ``color``
    says ``palette``); ``bit_depth`` is per channel; ``format`` names the module that reads it (``png``);
    ``georef`` holds the format's georeferencing (None for files without one, e.g. PNG).
    """

    path: str
    width: int
    height: int
    channels: int
    bit_depth: int
    color: str
    format: str
    georef: Any = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width
