"""A synthetic, competition-like data set: RGBA mosaics of crop parcels with their labels.

Each image is a Voronoi-like patchwork of parcels (a jittered grid of seeds). A parcel has a class
(0 other, 1 tobacco, 2 corn, 3 coix) and a texture drawn from that class: crop rows whose spacing,
sharpness and plant spacing differ by class, at a random orientation, over a random soil/vegetation
tint that every class shares, so colour alone does not tell the classes apart. Field edges, roads,
large-scale illumination, sensor noise and a slight blur are added; an irregular no-data border and
no-data holes (alpha 0, RGB 0) cut into the mosaic. Labels under no-data are 0.

Everything is a function of pixel coordinates and hashed seeds, computed in blocks of rows, so an image
of any size streams to disk in bounded memory (``--full`` writes the real competition sizes), and the
result does not depend on how it is cut into blocks.

An :class:`Acquisition` says how an image is rendered: the default is the training images' rendering;
:data:`SHIFTED` is another acquisition of the same kind of landscape (another date and sensor set-up):
dimmer, warmer colour balance, a contrast change (gamma), spatially varying haze, a slightly finer
ground resolution (objects 8% larger in pixels) and crops in other proportions, so that a test image
rendered with it measures generalisation rather than memory of one rendering.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cropmap.core.cli import progress as progress_bar
from cropmap.raster import open_writer

# Real sizes (H, W) of the competition's images.
REAL_SIZES = {
    "image_1": (50141, 47161),
    "image_2": (40650, 77470),
    "image_3": (19903, 37241),
    "image_4": (28832, 25936),
}
TRAIN_IMAGES = ("image_1", "image_2")
TEST_IMAGES = ("image_3", "image_4")

CELL = 160  # mean parcel size in pixels (a fixed ground resolution, whatever the image size)
BLOCK = 256  # rows computed at a time; the noise is seeded per block, so outputs never depend on callers
HALO = 4  # extra rows each side of a block, so the blur has no seams
CLASS_PROB = np.array([0.46, 0.18, 0.20, 0.16])  # other, tobacco, corn, coix (by parcel count)



@dataclass(frozen=True)
class Acquisition:
    """How one acquisition renders a landscape; the defaults are the training images' rendering.

    Attributes:
        scale: ground resolution relative to the training images: ``s`` > 1 shows every object ``s``
            times larger in pixels (parcels, row spacings, roads); the no-data border and holes are
            image-relative and do not scale.
        class_prob: probability of each class per parcel (other, tobacco, corn, coix).
        brightness: overall gain on the RGB values.
        gain: per-channel colour balance (R, G, B), applied with ``brightness``.
        gamma: ``out = 255 * (in / 255) ** gamma`` after the gains (> 1 darkens mid-tones).
        haze: mean haze strength in [0, 1): ``rgb = (1 - h) * rgb + h * haze_rgb`` with ``h`` varying
            smoothly over the image between about 0.4 and 1.6 times ``haze``.
        haze_rgb: colour of the haze.
        noise: standard deviation of the sensor noise (RGB units).
        blur: sigma of the optical blur in pixels.
    """

    scale: float = 1.0
    class_prob: tuple = tuple(float(p) for p in CLASS_PROB)
    brightness: float = 1.0
    gain: tuple = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    haze: float = 0.0
    haze_rgb: tuple = (205.0, 208.0, 214.0)
    noise: float = 5.0
    blur: float = 0.7

    @property
    def photometric(self) -> bool:
        """True when brightness, colour balance, gamma or haze differ from the training rendering."""
        return (self.brightness, tuple(self.gain), self.gamma, self.haze) != (1.0, (1.0, 1.0, 1.0), 1.0, 0.0)


#: The training images' rendering.
TRAIN_ACQUISITION = Acquisition()
#: Another acquisition: what make_synthetic_data.py renders the test images with (unless --no_shift).
SHIFTED = Acquisition(
    scale=1.08,
    class_prob=(0.40, 0.12, 0.20, 0.28),
    brightness=0.88,
    gain=(1.06, 1.0, 0.88),
    gamma=1.12,
    haze=0.14,
    noise=6.5,
    blur=0.9,
)

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    h = h ^ (h >> np.uint64(30))
    h = h * _M1
    h = h ^ (h >> np.uint64(27))
    h = h * _M2
    return h ^ (h >> np.uint64(31))


def _uniform(seed: int, *keys) -> np.ndarray:
    """Deterministic uniform [0, 1) floats from integer keys (broadcast arrays)."""
    with np.errstate(over="ignore"):
        h = np.uint64(seed & 0xFFFFFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
        for k in keys:
            h = _mix(h ^ (np.asarray(k).astype(np.int64).astype(np.uint64) + np.uint64(0x632BE59BD9B4E019)))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass
class _Cells:
    """Per-parcel parameters on the cell grid (rows r0.., cols c0..), all float32/int arrays [nr, nc]."""

    r0: int
    c0: int
    sy: np.ndarray
    sx: np.ndarray
    cls: np.ndarray
    kind: np.ndarray  # texture kind for class 0 parcels: 0 bare, 1 meadow, 2 wide rows
    theta: np.ndarray
    spacing: np.ndarray
    spacing2: np.ndarray
    cover: np.ndarray
    soil: np.ndarray  # [nr, nc, 3]
    veg: np.ndarray  # [nr, nc, 3]
    roadside: np.ndarray  # bool: a road runs along this parcel's boundary


def _cells(seed: int, r0: int, r1: int, c0: int, c1: int, class_prob=CLASS_PROB) -> _Cells:
    r = np.arange(r0, r1)[:, None]
    c = np.arange(c0, c1)[None, :]
    u = lambda k: _uniform(seed, r, c, k).astype(np.float32)  # noqa: E731
    sy = (r + 0.15 + 0.7 * u(0)) * CELL
    sx = (c + 0.15 + 0.7 * u(1)) * CELL
    cum = np.cumsum(np.asarray(class_prob, np.float64))
    cls = np.searchsorted(cum / cum[-1], u(2)).clip(0, 3)
    kind = np.floor(u(3) * 3).astype(np.int64)
    theta = u(4) * np.pi
    # row spacing (px) across rows, and plant spacing along them, by class
    lo = np.array([18.0, 10.0, 5.0, 7.5], np.float32)[cls]
    hi = np.array([26.0, 13.0, 6.5, 9.0], np.float32)[cls]
    spacing = lo + (hi - lo) * u(5)
    spacing2 = 7.0 + 5.0 * u(6)
    cover = 0.55 + 0.4 * u(7)
    soil = np.stack([110 + 40 * u(8), 85 + 30 * u(9), 60 + 25 * u(10)], -1)
    veg = np.stack([40 + 45 * u(11), 90 + 50 * u(12), 30 + 35 * u(13)], -1)
    roadside = u(14) < 0.3
    return _Cells(r0, c0, sy, sx, cls, kind, theta, spacing, spacing2, cover, soil, veg, roadside)


def _block(seed: int, height: int, width: int, y0: int, y1: int, holes: np.ndarray,
           acq: Acquisition = TRAIN_ACQUISITION):
    """Compute rows y0..y1 (may extend past the image; clipped by the caller).

    Returns ``rgb float32 [h, W, 3]``, ``label uint8 [h, W]``, ``valid bool [h, W]``.
    """
    h = y1 - y0
    py = np.arange(y0, y1, dtype=np.float32)[:, None]  # pixel coordinates
    px = np.arange(width, dtype=np.float32)[None, :]
    # ground coordinates of the landscape (parcels, textures, roads): pixels / scale
    ys, xs = (py, px) if acq.scale == 1.0 else (py / np.float32(acq.scale), px / np.float32(acq.scale))
    ci = np.floor(ys / CELL).astype(np.int64)
    cj = np.floor(xs / CELL).astype(np.int64)
    r0, r1 = int(ci.min()) - 1, int(ci.max()) + 2
    c0, c1 = -1, int(cj.max()) + 2
    cells = _cells(seed, r0, r1, c0, c1, acq.class_prob)

    nc = c1 - c0
    row_base = ((ci - r0) * nc).astype(np.int32)  # [h, 1]
    col_base = (cj - c0).astype(np.int32)  # [1, W]
    sy, sx = cells.sy.ravel(), cells.sx.ravel()
    d1 = np.full((h, width), np.inf, np.float32)
    d2 = np.full((h, width), np.inf, np.float32)
    best = np.zeros((h, width), np.int32)  # flat cell index of the nearest seed
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            idx = (row_base + di * nc) + (col_base + dj)
            d = np.square(ys - np.take(sy, idx))
            d += np.square(xs - np.take(sx, idx))
            nearer = d < d1
            np.minimum(d2, np.maximum(d, d1), out=d2)  # the second smallest so far
            np.minimum(d, d1, out=d1)
            np.copyto(best, idx, where=nearer)
    edge = np.sqrt(d2) - np.sqrt(d1)  # about twice the distance to the parcel boundary

    take = lambda a: np.take(a.reshape(-1, *a.shape[2:]), best, axis=0)  # noqa: E731
    cls = take(cells.cls)
    kind = take(cells.kind)
    th = take(cells.theta)
    sp = take(cells.spacing)
    sp2 = take(cells.spacing2)
    cover = take(cells.cover)
    ca, sa = np.cos(th), np.sin(th)
    u = xs * ca + ys * sa  # across the rows
    v = ys * ca - xs * sa  # along the rows
    rows = 0.5 + 0.5 * np.cos((2 * np.pi) * u / sp)
    plants = 0.5 + 0.5 * np.cos((2 * np.pi) * v / sp2)
    blobs = 0.5 + 0.25 * (np.sin(xs / 9.0 + 3 * ca) * np.sin(ys / 7.0 + 3 * sa))
    r = np.select(
        [cls == 1, cls == 2, cls == 3, kind == 0, kind == 1],
        [rows**1.5 * (0.35 + 0.65 * plants), rows, np.where(plants > 0.25, rows**4, 0.15 * rows), 0.12 * blobs, blobs],
        default=rows**2,
    ).astype(np.float32)
    a = (cover * r)[..., None]
    rgb = take(cells.soil) * (1 - a) + take(cells.veg) * a

    # field edges (dark) and roads (grey) along the boundaries of some parcels
    road = (edge < 9.0) & take(cells.roadside)
    field_edge = edge < 2.0
    rgb[field_edge] *= 0.6
    rgb[road] = 158.0
    label = np.where(road | field_edge, 0, cls).astype(np.uint8)

    # large-scale illumination
    light = 1 + 0.08 * np.sin(2 * np.pi * px / 1700.0 + seed % 7) * np.sin(2 * np.pi * py / 2300.0 + seed % 5)
    rgb = rgb * light[..., None]
    if acq.photometric:
        rgb = _render(rgb, acq, seed, py, px)

    # no-data: wobbly border and elliptical holes (image-relative, in pixels)
    valid = _valid(seed, height, width, py, px)
    for cy, cx, ry, rx in holes:
        if cy + ry < y0 or cy - ry > y1:
            continue
        valid &= ((py - cy) / ry) ** 2 + ((px - cx) / rx) ** 2 > 1
    return rgb.astype(np.float32), label, valid


def _render(rgb: np.ndarray, acq: Acquisition, seed: int, py: np.ndarray, px: np.ndarray) -> np.ndarray:
    """The acquisition's photometry on scene radiance ``rgb float [h, W, 3]`` (0..255 scale).

    Colour balance and brightness (gains), then gamma, then haze whose strength varies smoothly with
    the pixel position (``py [h, 1]``, ``px [1, W]``).
    """
    gain = np.float32(acq.brightness) * np.asarray(acq.gain, np.float32)
    out = np.clip(rgb * gain / 255.0, 0.0, 1.0)
    if acq.gamma != 1.0:
        out = out ** np.float32(acq.gamma)
    out = out * 255.0
    if acq.haze > 0:
        ph = _uniform(seed, np.arange(2), 91).astype(np.float32) * 2 * np.pi
        field = 0.5 + 0.5 * np.sin(2 * np.pi * px / 2900.0 + ph[0]) * np.cos(2 * np.pi * py / 2100.0 + ph[1])
        h = (np.float32(acq.haze) * (0.4 + 1.2 * field))[..., None]  # [h, W, 1], 0.4..1.6 x haze
        out = out * (1 - h) + h * np.asarray(acq.haze_rgb, np.float32)
    return out.astype(np.float32)


def _valid(seed: int, height: int, width: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    p = _uniform(seed, np.arange(8), 7).astype(np.float32) * 2 * np.pi
    wob = lambda t, n, ph: 0.5 + 0.5 * np.sin(2 * np.pi * t * n + ph)  # noqa: E731
    left = width * (0.01 + 0.05 * wob(ys / height, 1.3, p[0]) + 0.02 * wob(ys / height, 5.1, p[1]))
    right = width * (0.99 - 0.05 * wob(ys / height, 0.9, p[2]) - 0.02 * wob(ys / height, 4.3, p[3]))
    top = height * (0.01 + 0.05 * wob(xs / width, 1.1, p[4]) + 0.02 * wob(xs / width, 3.7, p[5]))
    bottom = height * (0.99 - 0.05 * wob(xs / width, 1.7, p[6]) - 0.02 * wob(xs / width, 6.1, p[7]))
    corner = xs / width + ys / height > 0.18  # a cut corner, as where a mosaic's strips end
    return (xs >= left) & (xs < right) & (ys >= top) & (ys < bottom) & corner


def _holes(seed: int, height: int, width: int) -> np.ndarray:
    """No-data holes: rows of (centre y, centre x, radius y, radius x)."""
    rng = np.random.default_rng([seed, 12345])
    n = 2 + int(height * width / 1500**2)
    scale = min(height, width)
    radii = rng.uniform(0.015, 0.06, (n, 2)) * scale + 8
    centres = rng.uniform(0.1, 0.9, (n, 2)) * [height, width]
    return np.concatenate([centres, radii], axis=1)


def synthesize_rows(seed: int, height: int, width: int, y0: int, y1: int,
                    acq: Acquisition = TRAIN_ACQUISITION):
    """Rows ``y0..y1`` of a synthetic image: ``rgba uint8 [h, W, 4]`` and ``label uint8 [h, W]``.

    Rows are computed in fixed blocks of :data:`BLOCK` rows with a halo, so any split gives the
    same pixels. ``acq``: how the image is rendered (:class:`Acquisition`).
    """
    holes = _holes(seed, height, width)
    rgbas, labels = [], []
    b0 = (y0 // BLOCK) * BLOCK
    for b in range(b0, y1, BLOCK):
        rgba, label = _block_rgba(seed, height, width, b, holes, acq)
        lo, hi = max(y0 - b, 0), min(y1 - b, BLOCK)
        rgbas.append(rgba[lo:hi])
        labels.append(label[lo:hi])
    return np.concatenate(rgbas), np.concatenate(labels)


def _block_rgba(seed: int, height: int, width: int, b: int, holes: np.ndarray,
                acq: Acquisition = TRAIN_ACQUISITION):
    rgb, label, valid = _block(seed, height, width, b - HALO, b + BLOCK + HALO, holes, acq)
    rng = np.random.default_rng([seed, b])
    rgb += rng.normal(0, acq.noise, rgb.shape).astype(np.float32)
    rgb = cv2.GaussianBlur(rgb, (0, 0), acq.blur)[HALO:-HALO]
    label, valid = label[HALO:-HALO], valid[HALO:-HALO]
    rgba = np.empty(rgb.shape[:2] + (4,), np.uint8)
    rgba[..., :3] = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    rgba[..., 3] = np.where(valid, 255, 0)
    rgba[~valid, :3] = 0
    label = np.where(valid, label, 0).astype(np.uint8)
    return rgba, label


def write_image(image_path, label_path, height: int, width: int, seed: int, progress: bool = True,
                like=None, acq: Acquisition = TRAIN_ACQUISITION) -> None:
    """Stream one synthetic image and its label to files (RGBA and 8-bit gray; the format of the suffix),
    rendered with ``acq``.

    Blocks are computed in this thread and compressed in a writer thread (zlib releases the GIL).
    Peak memory: a few blocks of ``BLOCK`` rows, whatever the size. ``like``: a
    :class:`~cropmap.raster.RasterInfo` whose georeferencing GeoTIFF files get.
    """
    holes = _holes(seed, height, width)
    q: queue.Queue = queue.Queue(maxsize=2)
    errors: list[BaseException] = []

    def writer():
        ended = False  # the producer's None was received
        try:
            with open_writer(image_path, width, height, 4, like=like) as wi, \
                    open_writer(label_path, width, height, 1, like=like, role="label") as wl:
                while (item := q.get()) is not None:
                    wi.write(item[0])
                    wl.write(item[1])
                ended = True
                if wi.rows_written != height:  # aborted by the producer
                    raise RuntimeError("incomplete")
        except BaseException as e:  # noqa: BLE001 - reported by the producer
            errors.append(e)
            while not ended and q.get() is not None:  # drain so the producer never blocks
                pass

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        bar = progress_bar(total=height, desc=Path(image_path).stem, unit="row", disable=not progress, leave=False)
        for b in range(0, height, BLOCK):
            rgba, label = _block_rgba(seed, height, width, b, holes, acq)
            n = min(BLOCK, height - b)
            q.put((rgba[:n], label[:n]))
            bar.update(n)
            if errors:
                break
        bar.close()
    finally:
        q.put(None)
        t.join()
    if errors:
        raise errors[0]


def image_sizes(size: int | None, full: bool = False) -> dict[str, tuple[int, int]]:
    """(H, W) of each image: the real sizes scaled so the longest side of all is ``size`` pixels."""
    if full:
        return dict(REAL_SIZES)
    longest = max(max(s) for s in REAL_SIZES.values())
    scale = size / longest
    return {k: (max(1, round(h * scale)), max(1, round(w * scale))) for k, (h, w) in REAL_SIZES.items()}
