"""Pictures of maps, for people: a downscaled colour preview over the image, an error view against a label,
and a legend under each (class colours and names).

A preview is built while a map streams past (:class:`PreviewCanvas`, memory ``4 x (H/s) x (W/s)`` bytes for a
scale ``s``), so a map of any size gets one in bounded memory. :func:`write_map_preview` streams a map, its
source and (optionally) its label from disk and writes ``[map over image | errors]`` side by side.

Error view: correct pixels show the image in grey, darkened; a wrong pixel shows the colour of the class it
was *predicted* as (class 0 in :data:`MISSED`, cyan, since its preview colour is black); no-data is black.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from cropmap.core.classes import IGNORE, PALETTE
from cropmap.raster.base import valid_mask
from cropmap.raster.checks import check_image, check_label, check_map
from cropmap.raster.png import write_png
from cropmap.raster.streams import iter_zip, strip_rows

#: Error view: the colour of a pixel wrongly predicted as class 0 (the preview shows class 0 untinted).
MISSED = np.array([0, 230, 255], np.uint8)
#: Height in pixels of one legend line.
LINE = 22


class PreviewCanvas:
    """A downscaled colour preview of a map over its image, built while the map streams past.

    The scale is ``s = ceil(max(H, W) / max_side)``; preview pixel ``(i, j)`` shows image pixel
    ``(i*s, j*s)`` (nearest). Memory: ``4 * (H/s) * (W/s)`` bytes (5 with a label). The image and the
    labels may be added from two threads (they fill separate arrays).
    """

    def __init__(self, height: int, width: int, max_side: int = 2048):
        self.scale = max(1, -(-max(height, width) // max_side))
        self.height, self.width = height, width
        ph, pw = -(-height // self.scale), -(-width // self.scale)
        self.rgb = np.zeros((ph, pw, 3), np.uint8)
        self.labels = np.zeros((ph, pw), np.uint8)
        self.truth: np.ndarray | None = None  # reference labels (IGNORE: no-data), for the error view

    def _offsets(self, y: int, x: int) -> tuple[int, int]:
        return (-y) % self.scale, (-x) % self.scale

    def add_image(self, y: int, x: int, rgb: np.ndarray) -> None:
        """Paste an image window ``uint8 [h, w, 3+]`` whose top-left pixel is ``(y, x)``."""
        s = self.scale
        h, w = min(rgb.shape[0], self.height - y), min(rgb.shape[1], self.width - x)
        i0, j0 = self._offsets(y, x)
        part = rgb[i0:h:s, j0:w:s, :3]
        py, px = (y + i0) // s, (x + j0) // s
        self.rgb[py : py + part.shape[0], px : px + part.shape[1]] = part

    def _rows_of(self, y: int, rows: np.ndarray) -> tuple[slice, np.ndarray]:
        s = self.scale
        i0 = (-y) % s
        part = rows[i0::s, ::s]
        py = (y + i0) // s
        return slice(py, py + part.shape[0]), part

    def add_labels(self, y: int, labels: np.ndarray) -> None:
        """Record map rows ``labels`` (``uint8 [h, W]``) starting at image row ``y``."""
        sel, part = self._rows_of(y, labels)
        self.labels[sel] = part

    def add_truth(self, y: int, truth: np.ndarray) -> None:
        """Record reference label rows (``uint8 [h, W]``, IGNORE where not counted) starting at row ``y``."""
        if self.truth is None:
            self.truth = np.full(self.labels.shape, IGNORE, np.uint8)
        sel, part = self._rows_of(y, truth)
        self.truth[sel] = part

    def rows(self, start: int, stop: int) -> slice:
        """The preview rows that show image rows ``start..stop``."""
        return slice(-(-start // self.scale), -(-stop // self.scale))

    def merge(self, other: "PreviewCanvas", start: int, stop: int) -> None:
        """Take image rows ``start..stop`` of both arrays from ``other`` (a canvas of the same image)."""
        sel = self.rows(start, stop)
        self.rgb[sel] = other.rgb[sel]
        self.labels[sel] = other.labels[sel]

    def render(self, alpha: float = 0.5, palette: np.ndarray = PALETTE) -> np.ndarray:
        """``uint8 [h, w, 3]``: the image with each crop class tinted by its palette colour."""
        colours = palette[np.minimum(self.labels, len(palette) - 1)].astype(np.float32)
        out = self.rgb.astype(np.float32)
        crop = self.labels > 0
        out[crop] = (1 - alpha) * out[crop] + alpha * colours[crop]
        return out.round().astype(np.uint8)

    def render_errors(self, palette: np.ndarray = PALETTE) -> np.ndarray:
        """``uint8 [h, w, 3]``: correct pixels as the darkened grey image, wrong ones in the colour of the class
        they were predicted as (class 0: :data:`MISSED`), no-data black. Needs :meth:`add_truth`."""
        if self.truth is None:
            raise ValueError("no reference labels: call add_truth first")
        grey = (self.rgb.astype(np.float32).mean(-1) * 0.6).astype(np.uint8)
        out = np.repeat(grey[..., None], 3, axis=-1)
        colours = palette[np.minimum(self.labels, len(palette) - 1)].copy()
        colours[self.labels == 0] = MISSED
        wrong = (self.truth != IGNORE) & (self.truth != self.labels)
        out[wrong] = colours[wrong]
        out[self.truth == IGNORE] = 0
        return out


def legend(entries: list[tuple[str, np.ndarray | None]], width: int) -> np.ndarray:
    """``uint8 [h, width, 3]``: a white band with one coloured box and name per entry, wrapped into lines
    (``None`` colour: the image's own colours, shown as a grey box)."""
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1
    items, line, x = [], 0, 6
    for name, colour in entries:
        w = 20 + cv2.getTextSize(name, font, scale, thick)[0][0] + 14
        if x + w > width and x > 6:
            line, x = line + 1, 6
        items.append((x, line, name, colour))
        x += w
    band = np.full(((line + 1) * LINE + 4, max(width, 1), 3), 255, np.uint8)
    for x, ln, name, colour in items:
        y = 4 + ln * LINE
        box = (128, 128, 128) if colour is None else tuple(int(c) for c in colour)
        cv2.rectangle(band, (x, y + 3), (x + 14, y + 15), box, -1)
        cv2.rectangle(band, (x, y + 3), (x + 14, y + 15), (0, 0, 0), 1)
        cv2.putText(band, name, (x + 20, y + 14), font, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return band


def class_entries(names: list[str], palette: np.ndarray = PALETTE) -> list[tuple[str, np.ndarray | None]]:
    """Legend entries of a map preview: class 0 shows the image untinted, the others their colour."""
    return [(names[0], None)] + [(n, palette[min(c, len(palette) - 1)]) for c, n in enumerate(names) if c > 0]


def error_entries(names: list[str], palette: np.ndarray = PALETTE) -> list[tuple[str, np.ndarray | None]]:
    """Legend entries of an error view."""
    wrong = [(f"wrong: {n}", MISSED if c == 0 else palette[min(c, len(palette) - 1)]) for c, n in enumerate(names)]
    return [("correct", np.array([90, 90, 90], np.uint8)), *wrong, ("no data", np.zeros(3, np.uint8))]


def with_legend(image: np.ndarray, entries: list[tuple[str, np.ndarray | None]]) -> np.ndarray:
    """``image`` with its legend under it."""
    return np.concatenate([image, legend(entries, image.shape[1])], axis=0)


def preview_picture(canvas: PreviewCanvas, names: list[str]) -> np.ndarray:
    """The preview with its legend; with reference labels, the error view and its legend beside it."""
    left = with_legend(canvas.render(), class_entries(names))
    if canvas.truth is None:
        return left
    right = with_legend(canvas.render_errors(), error_entries(names))
    h = max(left.shape[0], right.shape[0])
    pad = lambda a: np.pad(a, ((0, h - a.shape[0]), (0, 0), (0, 0)), constant_values=255)  # noqa: E731
    gap = np.full((h, 8, 3), 255, np.uint8)
    return np.concatenate([pad(left), gap, pad(right)], axis=1)


def write_map_preview(map_path: str | os.PathLike, source: str | os.PathLike, out: str | os.PathLike,
                      names: list[str], label: str | os.PathLike | None = None, max_side: int = 1024) -> None:
    """Stream a map and its source (and label) from disk and write :func:`preview_picture` to ``out`` (PNG)."""
    src = check_image(source)
    info = check_map(map_path, src)
    paths = [map_path, source]
    if label is not None:
        check_label(label, src)
        paths.append(label)
    canvas = PreviewCanvas(info.height, info.width, max_side)
    for y, strips in iter_zip(paths, strip_rows(info.width, bytes_per_pixel=1 + 4 + 1)):
        rgba = strips[1]
        valid = valid_mask(rgba[..., 3]) if rgba.shape[-1] > 3 else np.ones(rgba.shape[:2], bool)
        canvas.add_image(y, 0, np.where(valid[..., None], rgba[..., :3], 0))
        canvas.add_labels(y, np.where(valid, strips[0], 0).astype(np.uint8))
        if label is not None:
            canvas.add_truth(y, np.where(valid, strips[2], IGNORE).astype(np.uint8))
    write_png(out, preview_picture(canvas, names))
