"""GeoTIFF (``.tif``/``.tiff``) through rasterio, whose wheels bundle GDAL (no system GDAL needed).

Reading: any GeoTIFF the bundled GDAL opens (classic or BigTIFF, tiled or striped; none, LZW, DEFLATE,
ZSTD, PackBits, JPEG, WebP or LERC compression) of 8-bit unsigned bands. What is valid (the alpha
channel that readers opened with ``rgba=True`` give, 255 = valid) comes from, in this order:

* a band marked alpha (TIFF extra sample "alpha");
* an internal mask (or a ``.msk`` beside the file): its 0/255;
* a nodata value: 0 where every band holds it;
* none of these: a fourth band is the alpha (as in an RGBA PNG); three bands are valid everywhere.

A fourth band not marked alpha, in a file with a mask or a nodata value, is not read (e.g. near-infrared).
Single-band files (labels, maps) are read as stored.

:class:`Reader` decodes whole rows of the file's blocks (full width, a multiple of the block height), so
each compressed block is decoded once whatever the caller's strip heights, and GDAL's block cache can stay
small (``GDAL_CACHEMAX``: :data:`CACHE_MB` unless the environment sets it). Rows can be skipped without
decoding them.

:class:`StripWriter` collects strips into rows of :data:`BLOCK`-pixel tiles, writes them to a temporary
tiled GeoTIFF (ZSTD level 1: fast), and at :meth:`~StripWriter.close` copies that with GDAL's COG driver
(DEFLATE, overviews, the block order of a Cloud-Optimized GeoTIFF) to a second temporary name, renamed
into place when complete. Maps get the contract's class colours as a colour table and nodata 0.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cropmap.core.errors import InputError, short
from cropmap.core.files import temporary_path
from cropmap.raster.base import COLOR_NAMES, Georef, RasterInfo, StreamingWriter

FORMAT = "geotiff"
BLOCK = 512  # tile side of written files (GDAL's COG default)
CACHE_MB = 64  # GDAL block cache unless GDAL_CACHEMAX is set: blocks are decoded once, so a small cache is enough
READ_ROWS = 256  # fewest rows decoded at once (rounded up to whole rows of blocks)
MAX_BLOCK_ROWS = 4096  # taller blocks (single-strip files) are read READ_ROWS at a time instead
#: What a single-band file written by :class:`StripWriter` holds: ``map`` (class map: colour table,
#: nodata 0), ``label`` (colour table, no nodata: 0 is a class), ``sparse_label`` (colour table, nodata 255:
#: a label rasterised from polygons, 255 where no polygon or conflicting ones lie) or ``data`` (neither:
#: probabilities).
ROLES = ("map", "label", "sparse_label", "data")


def _rio():
    """rasterio, imported lazily (heavy), with GDAL's block cache bounded (see :data:`CACHE_MB`)."""
    os.environ.setdefault("GDAL_CACHEMAX", str(CACHE_MB))
    import rasterio
    import rasterio.errors
    import rasterio.shutil
    import rasterio.transform

    return rasterio


def _open(path: str):
    """Open ``path`` read-only; :class:`InputError` for a missing file, a non-TIFF or a damaged header."""
    if not os.path.exists(path):
        raise InputError(f"{path}: file not found")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, expected a GeoTIFF file")
    rio = _rio()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rio.errors.NotGeoreferencedWarning)
        try:
            ds = rio.open(path)
        except rio.errors.RasterioError as e:
            raise InputError(f"{path}: cannot read as GeoTIFF ({short(e)})") from None
    if ds.driver not in ("GTiff", "COG"):
        ds.close()
        raise InputError(f"{path}: not a GeoTIFF (GDAL reads it as {ds.driver})")
    return ds


@dataclass(frozen=True)
class _Layout:
    """Which bands are read, and where validity comes from (see the module docstring)."""

    bands: tuple[int, ...]  # 1-based band indexes, in channel order
    alpha: str | None  # "band" (the last of ``bands``), "mask", "nodata" or None
    nodata: tuple[float, ...] | None = None  # per band of ``bands``, with alpha "nodata"


def _layout(ds) -> _Layout:
    from rasterio.enums import ColorInterp, MaskFlags

    n = ds.count
    every = tuple(range(1, n + 1))
    if n in (2, 4) and ds.colorinterp[n - 1] == ColorInterp.alpha:
        return _Layout(every, "band")
    flags = ds.mask_flag_enums[0]
    rgb = every[:3] if n == 4 else every
    if MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags:
        return _Layout(rgb, "mask")
    nodata = ds.nodatavals
    if all(v is not None for v in nodata[: len(rgb)]):
        return _Layout(rgb, "nodata", tuple(nodata[: len(rgb)]))
    return _Layout(every, "band" if n == 4 else None)


def _georef(ds) -> Georef | None:
    t = ds.transform
    if ds.crs is None and t.is_identity:
        return None
    return Georef(ds.crs, tuple(float(v) for v in tuple(t)[:6]))


def _check_dtype(ds, path: str) -> int:
    """Bit depth of the bands; :class:`InputError` unless they are unsigned integers."""
    dtypes = {np.dtype(d) for d in ds.dtypes}
    if any(d.kind != "u" for d in dtypes):
        shown = ", ".join(sorted(str(d) for d in dtypes))
        raise InputError(f"{path}: unsupported data type {shown} ({ds.count} bands; expected 8-bit unsigned integers)")
    return max(d.itemsize for d in dtypes) * 8


def info(path: str | os.PathLike) -> RasterInfo:
    """Header facts of a GeoTIFF (no pixel decoded): size, channels read, bit depth, georeferencing.

    ``channels`` counts what :class:`Reader` returns per pixel without ``rgba`` (see the module docstring).
    Raises :class:`InputError` for a missing or unreadable file and for bands that are not unsigned integers.
    """
    path = str(path)
    with _open(path) as ds:
        depth = _check_dtype(ds, path)
        channels = len(_layout(ds).bands)
        color = COLOR_NAMES.get(channels, f"{channels}-band")
        return RasterInfo(path, ds.width, ds.height, channels, depth, color, FORMAT, _georef(ds))


def make_georef(crs: str, transform: tuple[float, ...]) -> Georef:
    """A :class:`Georef` from a CRS text (``"EPSG:32648"``, WKT) and ``(a, b, c, d, e, f)``."""
    rio = _rio()
    return Georef(rio.crs.CRS.from_user_input(crs), tuple(float(v) for v in transform[:6]))


class Reader:
    """Sequential reader of one GeoTIFF: :meth:`read_into` fills caller-owned arrays with the next rows.

    Single-band files give ``uint8 [n, W]`` rows, others ``[n, W, C]`` (``row_shape``). With ``rgba=True``
    a three-band file gets a fourth channel, its validity as alpha 0/255 (255 everywhere without mask or
    nodata). :meth:`skip` moves down without decoding. Decode errors raise :class:`InputError`.
    """

    def __init__(self, path: str | os.PathLike, rgba: bool = False):
        self.path = str(path)
        self._rio = _rio()
        self._ds = _open(self.path)
        if _check_dtype(self._ds, self.path) != 8:
            raise InputError(f"{self.path}: unsupported bit depth {_check_dtype(self._ds, self.path)} (expected 8-bit)")
        lay = _layout(self._ds)
        self._bands = list(lay.bands)
        self._alpha = lay.alpha
        self._nodata = None if lay.nodata is None else np.array(lay.nodata, np.float64)
        self.width, self.height = self._ds.width, self._ds.height
        nb = len(self._bands)
        self._add_alpha = rgba and nb == 3
        channels = nb + self._add_alpha
        self.row_shape = (self.width, channels) if channels > 1 else (self.width,)
        block_h = self._ds.block_shapes[0][0]
        self._step = block_h * -(-READ_ROWS // block_h) if block_h <= MAX_BLOCK_ROWS else READ_ROWS
        self._buf: np.ndarray | None = None  # rows _buf_y .. _buf_y + _buf_n, decoded but not yet handed out
        self._buf_y = self._buf_n = 0
        self.y = 0  # next row to hand out

    def _decode(self, y: int, dst: np.ndarray) -> None:
        """Decode rows ``y .. y + len(dst)`` into ``dst`` (``uint8 [n, W(, C)]``, may be a view)."""
        from rasterio.windows import Window

        win = Window(0, y, self.width, len(dst))
        try:
            if dst.ndim == 2:
                self._ds.read(self._bands[0], window=win, out=dst)
                return
            nb = len(self._bands)
            self._ds.read(self._bands, window=win, out=dst[..., :nb].transpose(2, 0, 1))
            if self._add_alpha:
                alpha = dst[..., 3]
                if self._alpha == "mask":
                    self._ds.read_masks(1, window=win, out=alpha)
                elif self._alpha == "nodata":
                    empty = (dst[..., :3] == self._nodata).all(axis=-1)
                    np.copyto(alpha, np.where(empty, 0, 255).astype(np.uint8))
                else:
                    alpha[...] = 255
        except self._rio.errors.RasterioError as e:
            raise InputError(f"{self.path}: cannot decode GeoTIFF at row {y} ({short(e)})") from None

    def read_into(self, out: np.ndarray) -> int:
        """Decode the next ``len(out)`` rows (fewer at the bottom) into ``out``; returns the rows read."""
        n_total = min(len(out), self.height - self.y)
        done = 0
        while done < n_total:
            y = self.y + done
            left = n_total - done
            if self._buf_y <= y < self._buf_y + self._buf_n:  # rows decoded earlier
                k = min(left, self._buf_y + self._buf_n - y)
                out[done : done + k] = self._buf[y - self._buf_y : y - self._buf_y + k]
            elif y % self._step == 0 and (left >= self._step or y + left == self.height):
                # whole rows of blocks: straight into the caller's array
                k = left if y + left == self.height else (left // self._step) * self._step
                self._decode(y, out[done : done + k])
            else:  # decode the rows of blocks holding row y, keep what the caller does not take now
                y0 = (y // self._step) * self._step
                n = min(self._step, self.height - y0)
                if self._buf is None:
                    self._buf = np.empty((self._step,) + self.row_shape, np.uint8)
                self._decode(y0, self._buf[:n])
                self._buf_y, self._buf_n = y0, n
                continue
            done += k
        self.y += n_total
        return n_total

    def skip(self, n: int) -> None:
        """Move ``n`` rows down without decoding them."""
        self.y = min(self.height, self.y + max(0, n))

    def close(self) -> None:
        self._ds.close()


def histogram(path: str | os.PathLike) -> np.ndarray:
    """Count each of the 256 values of a single-band 8-bit GeoTIFF in one streaming pass: ``int64 [256]``."""
    reader = Reader(path)
    counts = np.zeros(256, np.int64)
    buf = np.empty((reader._step,) + reader.row_shape, np.uint8)
    while reader.y < reader.height:
        n = reader.read_into(buf)
        counts += np.bincount(buf[:n].reshape(-1) if buf.ndim == 2 else buf[:n, :, 0].reshape(-1), minlength=256)
    reader.close()
    return counts


def class_colormap(nodata_class: bool) -> dict[int, tuple[int, int, int, int]]:
    """The colour table of class rasters: the contract's class colours (``cropmap.core.classes.PALETTE``)
    for values 0.., grey for 255 (ignore); value 0 transparent when it is the map's nodata."""
    from cropmap.core.classes import PALETTE

    table = {i: (int(r), int(g), int(b), 255) for i, (r, g, b) in enumerate(PALETTE)}
    table[255] = (128, 128, 128, 255)
    if nodata_class:
        table[0] = (0, 0, 0, 0)
    return table


class StripWriter(StreamingWriter):
    """Stream an 8-bit GeoTIFF to disk strip by strip, finished as a Cloud-Optimized GeoTIFF.

    ``channels`` 1 (class map, label or data: ``role``, see :data:`ROLES`), 3 (RGB) or 4 (RGBA: written as
    RGB and an internal mask, 255 where alpha is 255). ``like`` (the source's :class:`RasterInfo`) gives
    the CRS and transform. Call :meth:`write` with ``uint8 [h, W]`` or ``[h, W, C]`` strips top to bottom
    until ``height`` rows are written, then :meth:`close` (or use it as a context manager: an exception
    inside the ``with`` discards the partial file). Memory: one row of tiles (``512 * W * C`` bytes).
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, channels: int = 1,
                 like: RasterInfo | None = None, role: str = "map"):
        if channels not in (1, 3, 4):
            raise ValueError("channels must be 1, 3 or 4")
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        rio = _rio()
        self._rio = rio
        self.path = Path(path)
        self.width, self.height, self.channels = int(width), int(height), int(channels)
        self.role = role
        self.rows_written = 0
        shape = (BLOCK, self.width) if channels == 1 else (BLOCK, self.width, channels)
        self._rows = np.empty(shape, np.uint8)  # rows not yet written: one row of tiles
        self._fill = 0
        self._tmp = temporary_path(self.path)  # the tiled GeoTIFF being written
        self._out: Path | None = None  # the COG copy, while it is being made
        georef = like.georef if like is not None else None
        profile = dict(driver="GTiff", width=self.width, height=self.height, count=min(channels, 3), dtype="uint8",
                       tiled=True, blockxsize=BLOCK, blockysize=BLOCK, compress="zstd", zstd_level=1,
                       bigtiff="if_safer", interleave="pixel")
        if channels > 1:
            profile["photometric"] = "rgb"
        if georef is not None:
            profile["crs"] = georef.crs
            profile["transform"] = rio.transform.Affine(*georef.transform)
        if channels == 1 and role in ("map", "sparse_label"):
            profile["nodata"] = 0 if role == "map" else 255
        with warnings.catch_warnings(), rio.Env(GDAL_PAM_ENABLED=False):
            warnings.simplefilter("ignore", rio.errors.NotGeoreferencedWarning)
            self._ds = rio.open(self._tmp, "w", **profile)
        if channels == 1 and role != "data":
            self._ds.write_colormap(1, class_colormap(role == "map"))

    def _flush(self) -> None:
        from rasterio.windows import Window

        n = self._fill
        if n == 0:
            return
        win = Window(0, self.rows_written - n, self.width, n)
        rows = self._rows[:n]
        if self.channels == 1:
            self._ds.write(rows, 1, window=win)
        else:
            self._ds.write(rows[..., :3].transpose(2, 0, 1), window=win)
            if self.channels == 4:
                with self._rio.Env(GDAL_TIFF_INTERNAL_MASK=True):
                    self._ds.write_mask(np.where(rows[..., 3] == 255, 255, 0).astype(np.uint8), window=win)
        self._fill = 0

    def write(self, strip: np.ndarray) -> None:
        """Append ``strip`` (``uint8 [h, W]`` or ``[h, W, C]``) below the rows written so far."""
        strip = np.asarray(strip)
        if strip.dtype != np.uint8:
            raise ValueError(f"strip must be uint8, got {strip.dtype}")
        if self.channels == 1 and strip.ndim == 3 and strip.shape[2] == 1:
            strip = strip[..., 0]
        h = strip.shape[0]
        expected = (h,) + self._rows.shape[1:]
        if strip.shape != expected:
            raise ValueError(f"strip shape {strip.shape} does not match {expected}")
        if self.rows_written + h > self.height:
            raise ValueError("more rows written than the image height")
        done = 0
        while done < h:
            k = min(h - done, BLOCK - self._fill)
            self._rows[self._fill : self._fill + k] = strip[done : done + k]
            self._fill += k
            self.rows_written += k
            done += k
            if self._fill == BLOCK:
                self._flush()

    def close(self) -> Path:
        """Finish the file (COG layout, overviews) and rename it into place; returns the final path."""
        if self.rows_written != self.height:
            self.abort()
            raise ValueError(f"{self.path}: {self.rows_written} of {self.height} rows written")
        try:
            self._flush()
            self._ds.close()
            self._out = temporary_path(self.path, clean=False)  # clean=True would delete self._tmp
            options = dict(driver="COG", compress="deflate", blocksize=BLOCK, bigtiff="if_safer",
                           num_threads="all_cpus", resampling="nearest" if self.channels == 1 else "average")
            if self.channels > 1:
                options["predictor"] = "yes"
            with self._rio.Env(GDAL_PAM_ENABLED=False):
                self._rio.shutil.copy(str(self._tmp), str(self._out), **options)
            os.replace(self._out, self.path)
            self._out = None
        except BaseException:
            self.abort()
            raise
        self._tmp.unlink(missing_ok=True)
        return self.path

    def abort(self) -> None:
        """Discard the partial file."""
        if not self._ds.closed:
            self._ds.close()
        self._tmp.unlink(missing_ok=True)
        if self._out is not None:
            self._out.unlink(missing_ok=True)
