"""What every raster format shares: the header facts of a file and the no-data conventions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cropmap.core.classes import IGNORE  # noqa: F401 (re-exported: the raster layer's no-data value)

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
class Georef:
    """Where a raster lies: its CRS and the affine map from pixel to CRS coordinates.

    ``crs``: the format's CRS object (a ``rasterio.crs.CRS`` for GeoTIFF; compared with ``==``), or
    None when the file has a transform but no CRS. ``transform``: ``(a, b, c, d, e, f)`` with
    ``X = a * col + b * row + c`` and ``Y = d * col + e * row + f`` for pixel corner ``(col, row)``.
    """

    crs: Any
    transform: tuple[float, float, float, float, float, float]

    @property
    def pixel_area(self) -> float:
        """Area of one pixel in squared CRS units: ``|a e - b d|``."""
        a, b, _, d, e, _ = self.transform
        return abs(a * e - b * d)

    def differs(self, other: "Georef") -> str | None:
        """How ``other`` disagrees with this one (``"CRS ..."`` or ``"transform ..."``), None if they agree.

        CRSs are compared only when both have one; transforms agree when their pixel sizes match to
        1e-9 (relative) and their origins to a thousandth of a pixel.
        """
        if self.crs is not None and other.crs is not None and self.crs != other.crs:
            return f"CRS {_crs_name(other.crs)} differs from {_crs_name(self.crs)}"
        a, b, c, d, e, f = self.transform
        a2, b2, c2, d2, e2, f2 = other.transform
        size = max(abs(a), abs(b), abs(d), abs(e), 1e-300)
        scale_ok = all(abs(u - v) <= 1e-9 * size for u, v in ((a, a2), (b, b2), (d, d2), (e, e2)))
        if not scale_ok or abs(c - c2) > 1e-3 * size or abs(f - f2) > 1e-3 * size:
            return f"transform {_fmt(other.transform)} differs from {_fmt(self.transform)}"
        return None


def _crs_name(crs: Any) -> str:
    to_string = getattr(crs, "to_string", None)
    text = to_string() if to_string else str(crs)
    return text if len(text) <= 60 else text[:57] + "..."


def _fmt(t) -> str:
    return "(" + ", ".join(f"{v:.10g}" for v in t) + ")"


class StreamingWriter:
    """What every format's streaming writer shares: ``with writer: ...`` closes it (renamed into place) when
    the block ends normally and aborts it (the partial file deleted) on an exception. Subclasses define
    ``write(strip)``, ``close()`` and ``abort()``."""

    def close(self):
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass(frozen=True)
class RasterInfo:
    """Header facts of a raster file, whatever its format.

    ``channels`` is what a reader returns per pixel (a palette PNG counts 1: its indices, and ``color``
    says ``palette``); ``bit_depth`` is per channel; ``format`` names the module that reads it (``png``);
    ``georef`` holds the file's :class:`Georef` (None for files without one, e.g. PNG).
    """

    path: str
    width: int
    height: int
    channels: int
    bit_depth: int
    color: str
    format: str
    georef: Georef | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width
