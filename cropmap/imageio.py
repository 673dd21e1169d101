"""The one PNG reader and writer of the pipeline.

Huge images (tens of thousands of pixels a side) never enter memory whole:

* :func:`png_info` parses the PNG header (and checks the file ends in an IEND chunk) without decoding;
* :func:`check_image` / :func:`check_label` validate sources before any work starts, raising
  :class:`InputError` with one clear line naming the file and the problem;
* :func:`iter_strips` decodes a PNG top to bottom in strips (pyvips, sequential access);
* :func:`iter_row_windows` turns strips into possibly overlapping row windows (a rolling buffer);
* :class:`PngStripWriter` encodes a PNG strip by strip (plain zlib) and renames it into place when complete.

Small files (tiles) go through :func:`read_png` / :func:`write_png`.

Array conventions: images are ``uint8 [H, W, C]`` in RGB(A) order, labels and maps ``uint8 [H, W]``.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> number of channels
_COLOR_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_COLOR_NAMES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}
IGNORE = 255  # label value for ignored / no-data pixels
_FETCH_ROWS = 8  # rows per libvips fetch (measured: 8-16 rows decode ~2x faster than 512, in less memory)
_UMASK = os.umask(0)
os.umask(_UMASK)


def valid_mask(alpha: np.ndarray) -> np.ndarray:
    """``bool`` mask of valid pixels from an alpha channel (``uint8``, any shape): alpha 255.

    The one definition of "valid" (the contract's metric counts alpha-255 pixels only, so partly
    transparent pixels are no-data too). RGB sources read with ``rgba=True`` get alpha 255 everywhere.
    """
    return alpha == 255


class InputError(Exception):
    """A problem with the user's input: printed as one line, exit status non-zero, no traceback."""


@dataclass(frozen=True)
class PngInfo:
    """Header facts of a PNG file.

    ``channels`` is what a decoder returns (palette images count as 1 here: their indices).
    """

    path: str
    width: int
    height: int
    bit_depth: int
    color_type: int
    interlaced: bool

    @property
    def channels(self) -> int:
        return _COLOR_CHANNELS[self.color_type]

    @property
    def color_name(self) -> str:
        return _COLOR_NAMES[self.color_type]

    @property
    def has_alpha(self) -> bool:
        return self.color_type in (4, 6)

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width


def png_info(path: str | os.PathLike) -> PngInfo:
    """Read a PNG's header (signature and IHDR) and check that the file is not truncated.

    Truncation is detected cheaply: a complete PNG ends with the 12-byte IEND chunk.
    Raises :class:`InputError` for a missing file, a non-PNG, a bad header or a truncated file.
    """
    path = str(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: file not found")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, expected a PNG file")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(33)
        if len(head) < 33 or head[:8] != PNG_SIGNATURE:
            raise InputError(f"{path}: not a PNG file (bad signature)")
        length, ctype = struct.unpack(">I4s", head[8:16])
        if ctype != b"IHDR" or length != 13:
            raise InputError(f"{path}: corrupt PNG (first chunk is not IHDR)")
        width, height, depth, color, _comp, _filt, interlace = struct.unpack(">IIBBBBB", head[16:29])
        if zlib.crc32(head[12:29]) != struct.unpack(">I", head[29:33])[0]:
            raise InputError(f"{path}: corrupt PNG (IHDR checksum mismatch)")
        if color not in _COLOR_CHANNELS or width == 0 or height == 0:
            raise InputError(f"{path}: corrupt PNG (invalid header)")
        f.seek(max(size - 12, 0))
        tail = f.read(12)
    if tail[4:8] != b"IEND":
        raise InputError(f"{path}: truncated PNG (no IEND chunk at the end of the file)")
    return PngInfo(path, width, height, depth, color, bool(interlace))


def check_image(path: str | os.PathLike) -> PngInfo:
    """Validate a source image: an 8-bit RGB or RGBA PNG. Returns its :class:`PngInfo`."""
    info = png_info(path)
    if info.bit_depth != 8:
        raise InputError(f"{info.path}: unsupported bit depth {info.bit_depth} (expected 8-bit RGB or RGBA)")
    if info.color_type not in (2, 6):
        raise InputError(
            f"{info.path}: unsupported colour type {info.color_name} (expected 8-bit RGB or RGBA)"
        )
    return info


def check_label(path: str | os.PathLike, image: PngInfo | None = None) -> PngInfo:
    """Validate a label PNG header: 8-bit single channel, same size as ``image`` when given.

    Label values are checked separately with :func:`label_histogram` (that needs a decode).
    """
    info = png_info(path)
    if info.bit_depth != 8:
        raise InputError(f"{info.path}: unsupported bit depth {info.bit_depth} (labels must be 8-bit single-channel)")
    if info.color_type != 0:
        raise InputError(
            f"{info.path}: labels must be 8-bit single-channel (grayscale), got {info.color_name}"
        )
    if image is not None and info.shape != image.shape:
        raise InputError(
            f"{info.path}: label size {info.height}x{info.width} differs from its image "
            f"{image.path} ({image.height}x{image.width}, H x W)"
        )
    return info


def _vips():
    import pyvips  # imported lazily: the library is heavy and only the huge-image paths need it

    return pyvips


def _open_sequential(path: str):
    pyvips = _vips()
    try:
        return pyvips.Image.new_from_file(path, access="sequential", fail_on="error")
    except pyvips.Error as e:  # header-level decode problem
        raise InputError(f"{path}: cannot decode PNG ({_first_line(e)})") from None


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return " ".join(t.strip() for t in text[:3] if t.strip())[:200] or type(err).__name__


def label_histogram(path: str | os.PathLike) -> np.ndarray:
    """Count each of the 256 values of an 8-bit single-channel PNG in one streaming pass.

    Returns ``int64 [256]``. Decode errors (corrupt data) raise :class:`InputError`.
    """
    pyvips = _vips()
    path = str(path)
    img = _open_sequential(path)
    try:
        hist = img.hist_find()
        counts = np.frombuffer(hist.write_to_memory(), dtype=np.uint32).astype(np.int64)
    except pyvips.Error as e:
        raise InputError(f"{path}: cannot decode PNG ({_first_line(e)})") from None
    return counts.reshape(-1)[:256]


def check_label_values(path: str | os.PathLike, num_classes: int) -> np.ndarray:
    """Check that every label value is in ``0..num_classes-1`` or 255; return the histogram ``int64 [256]``."""
    hist = label_histogram(path)
    allowed = np.zeros(256, bool)
    allowed[:num_classes] = True
    allowed[IGNORE] = True
    bad = np.flatnonzero((hist > 0) & ~allowed)
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:8])
        raise InputError(
            f"{path}: label values outside 0..{num_classes - 1} (and not 255): {shown}"
        )
    return hist


def _malloc_trim() -> None:
    """Give freed heap memory back to the OS (glibc). libvips' decode buffers otherwise pile up in the
    allocator (freed in libvips' threads, not reused by the next fetch): measured on a 77470-pixel-wide
    RGBA PNG, decoding 512 rows raised peak RSS by 570 MB for a 160 MB result; trimming every 16 MB
    decoded keeps the overhead to a few tens of MB, at no measurable cost in speed."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None
_TRIM_BYTES = 16 << 20  # trim after this many bytes decoded


class StripReader:
    """Sequential decoder of one PNG: :meth:`read_into` fills caller-owned arrays with the next rows.

    ``rgba=True`` gives RGB files an alpha channel of 255. Single-channel files give ``[n, W]`` rows, others
    ``[n, W, C]``. Decode errors (truncated or corrupt data) raise :class:`InputError`.
    """

    def __init__(self, path: str | os.PathLike, rgba: bool = False):
        pyvips = _vips()
        self.path = str(path)
        self._img = _open_sequential(self.path)
        if self._img.format != "uchar":
            raise InputError(f"{self.path}: unsupported pixel format {self._img.format} (expected 8-bit)")
        self.width, self.height, self.bands = self._img.width, self._img.height, self._img.bands
        self._region = pyvips.Region.new(self._img)
        self._error = pyvips.Error
        self.expand = rgba and self.bands == 3
        channels = 4 if self.expand else self.bands
        self.row_shape = (self.width, channels) if channels > 1 else (self.width,)
        self.y = 0  # next row to decode
        self._since_trim = 0  # bytes fetched since the last malloc_trim

    def read_into(self, out: np.ndarray) -> int:
        """Decode the next ``len(out)`` rows (fewer at the bottom) into ``out``; returns the rows read."""
        n_total = min(len(out), self.height - self.y)
        src_shape = (self.width, self.bands) if self.bands > 1 else (self.width,)
        # many small fetches: libvips decodes them faster, and in less memory, than one large one
        for r in range(0, n_total, _FETCH_ROWS):
            n = min(_FETCH_ROWS, n_total - r)
            try:
                buf = self._region.fetch(0, self.y + r, self.width, n)
            except self._error as e:
                raise InputError(f"{self.path}: cannot decode PNG at row {self.y + r} ({_first_line(e)})") from None
            rows = np.frombuffer(buf, dtype=np.uint8).reshape((n,) + src_shape)
            if self.expand:
                out[r : r + n, :, :3] = rows
                out[r : r + n, :, 3] = 255
            else:
                out[r : r + n] = rows
            del buf, rows
            self._since_trim += n * self.width * self.bands
            if self._since_trim > _TRIM_BYTES:
                _malloc_trim()
                self._since_trim = 0
        self.y += n_total
        return n_total

    def skip(self, n: int, chunk: int = 256) -> None:
        """Decode and drop ``n`` rows."""
        scratch = np.empty((min(n, chunk),) + self.row_shape, np.uint8)
        while n > 0 and self.y < self.height:
            n -= self.read_into(scratch[: min(n, chunk)])


def iter_strips(path: str | os.PathLike, strip_height: int, rgba: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """Decode a PNG top to bottom in strips of ``strip_height`` rows (the last may be shorter).

    Yields ``(y, strip)`` with ``strip`` a ``uint8 [h, W]`` array for single-channel files, else
    ``uint8 [h, W, C]`` (C = the file's channels; with ``rgba=True`` an RGB file gets an alpha channel
    of 255 appended). Each strip is a new array. Memory is one strip, whatever the image size.
    Decode errors (truncated or corrupt data) raise :class:`InputError`.
    """
    reader = StripReader(path, rgba=rgba)
    for y in range(0, reader.height, strip_height):
        strip = np.empty((min(strip_height, reader.height - y),) + reader.row_shape, np.uint8)
        reader.read_into(strip)
        yield y, strip


def iter_row_windows(
    path: str | os.PathLike,
    rows: Sequence[int],
    height: int,
    rgba: bool = False,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(y, rows y..y+height)`` for each ``y`` of the ascending ``rows``, decoding the file once.

    Windows may overlap (``rows`` closer than ``height``) and may run past the bottom edge, where they
    are padded with zeros (no-data). Yields ``uint8 [height, W(, C)]`` views of one buffer that the
    next step overwrites (copy what you keep). Memory: one window, whatever the image size; rows shared
    by consecutive windows are moved up, not decoded again.
    """
    rows = list(rows)
    if any(b < a for a, b in zip(rows, rows[1:])):
        raise ValueError("rows must be ascending")
    reader = StripReader(path, rgba=rgba)
    win = np.zeros((height,) + reader.row_shape, np.uint8)
    win_y, filled = 0, 0  # win[:filled] holds image rows win_y .. win_y + filled
    for y in rows:
        shift = y - win_y
        if shift >= filled:  # nothing reusable: skip to y
            reader.skip(y - reader.y) if y > reader.y else None
            filled = 0
        elif shift > 0:  # move the shared rows up, in chunks that never overlap their source
            keep = filled - shift
            for i in range(0, keep, shift):
                j = min(i + shift, keep)
                win[i:j] = win[shift + i : shift + j]
            filled = keep
        win_y = y
        if filled < height:
            got = reader.read_into(win[filled:])
            win[filled + got :] = 0  # past the bottom edge: no-data
            filled += got
        yield y, win


def read_png(path: str | os.PathLike) -> np.ndarray:
    """Read a small PNG whole: ``uint8 [H, W]`` (gray) or ``[H, W, C]`` in RGB/RGBA order.

    For tiles and other small files only; huge images go through :func:`iter_strips`.
    """
    import cv2

    path = str(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: file not found")
    arr = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if arr is None:
        info = png_info(path)  # raises a clear error for the usual problems
        raise InputError(f"{info.path}: cannot decode PNG")
    if arr.dtype != np.uint8:
        raise InputError(f"{path}: unsupported bit depth (expected 8-bit)")
    if arr.ndim == 3:
        code = cv2.COLOR_BGR2RGB if arr.shape[2] == 3 else cv2.COLOR_BGRA2RGBA
        arr = cv2.cvtColor(arr, code)
    return arr


def _tmp_name(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; finished files get the usual permissions
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; rename it to ``path`` on success, delete it on error.

    The one way outputs are written in this project: an interrupted run never leaves a file that looks
    finished under its final name (temporary names start with ``.`` and end in ``.part``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_png(path: str | os.PathLike, array: np.ndarray, compression: int | None = None) -> None:
    """Write a small ``uint8 [H, W]`` / ``[H, W, 3]`` (RGB) / ``[H, W, 4]`` (RGBA) array as a PNG, atomically.

    The file appears under its final name only when complete (temporary name, then rename).
    ``compression``: None keeps OpenCV's default (RLE, sub filter: as small as level 1 and twice as
    fast); 0 stores the rows uncompressed (about 9x faster to write than the default, and to read;
    files about twice as large on noisy imagery); 1-9 is zlib's level.
    """
    import cv2

    path = Path(path)
    arr = np.ascontiguousarray(array)
    if arr.dtype != np.uint8:
        raise ValueError(f"write_png expects uint8, got {arr.dtype}")
    if arr.ndim == 3:
        code = {3: cv2.COLOR_RGB2BGR, 4: cv2.COLOR_RGBA2BGRA}[arr.shape[2]]
        arr = cv2.cvtColor(arr, code)
    if compression is None:
        params = []
    elif compression == 0:
        params = [cv2.IMWRITE_PNG_COMPRESSION, 0, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
    else:
        params = [cv2.IMWRITE_PNG_COMPRESSION, int(compression)]
    ok, data = cv2.imencode(".png", arr, params)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


class PngStripWriter:
    """Stream an 8-bit PNG to disk strip by strip; it is renamed into place only when complete.

    ``channels`` 1 (gray), 3 (RGB) or 4 (RGBA). Call :meth:`write` with ``uint8 [h, W]`` or
    ``[h, W, C]`` strips top to bottom until ``height`` rows are written, then :meth:`close`
    (or use it as a context manager: an exception inside the ``with`` discards the partial file).
    Memory: one strip plus zlib's window. Rows use PNG filter 0 (none).
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, channels: int = 1, compression: int = 1):
        if channels not in (1, 3, 4):
            raise ValueError("channels must be 1, 3 or 4")
        self.path = Path(path)
        self.width, self.height, self.channels = int(width), int(height), int(channels)
        self.rows_written = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _tmp_name(self.path)
        self._f = open(self._tmp, "wb")
        self._z = zlib.compressobj(int(compression))
        color = {1: 0, 3: 2, 4: 6}[channels]
        ihdr = struct.pack(">IIBBBBB", self.width, self.height, 8, color, 0, 0, 0)
        self._f.write(PNG_SIGNATURE + _chunk(b"IHDR", ihdr))

    def write(self, strip: np.ndarray) -> None:
        """Append ``strip`` (``uint8 [h, W]`` or ``[h, W, C]``) below the rows written so far."""
        strip = np.asarray(strip)
        if strip.dtype != np.uint8:
            raise ValueError(f"strip must be uint8, got {strip.dtype}")
        h = strip.shape[0]
        expected = (h, self.width) if self.channels == 1 else (h, self.width, self.channels)
        if self.channels == 1 and strip.ndim == 3 and strip.shape[2] == 1:
            strip = strip[..., 0]
        if strip.shape != expected:
            raise ValueError(f"strip shape {strip.shape} does not match {expected}")
        if self.rows_written + h > self.height:
            raise ValueError("more rows written than the image height")
        rows = np.empty((h, 1 + self.width * self.channels), np.uint8)
        rows[:, 0] = 0  # filter type: none
        rows[:, 1:] = strip.reshape(h, -1)
        data = self._z.compress(rows.tobytes())
        if data:
            self._f.write(_chunk(b"IDAT", data))
        self.rows_written += h

    def close(self) -> Path:
        """Finish the file and rename it into place; returns the final path."""
        if self.rows_written != self.height:
            self.abort()
            raise ValueError(f"{self.path}: {self.rows_written} of {self.height} rows written")
        self._f.write(_chunk(b"IDAT", self._z.flush()) + _chunk(b"IEND", b""))
        self._f.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Discard the partial file."""
        if not self._f.closed:
            self._f.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "PngStripWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def run_cli(main, args) -> int:
    """Run an entry script's ``main(args)``, turning :class:`InputError` into one line on stderr, exit 2."""
    import sys

    try:
        main(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
