"""The one PNG reader and writer of the pipeline.

* :func:`info` parses the PNG header (and checks that the file has its IEND chunk) without decoding;
* :func:`check_bytes` checks a small PNG's chunks (checksums, IEND) before it is decoded;
* :class:`Reader` decodes a PNG top to bottom (pyvips, sequential access) into caller-owned arrays;
* :class:`StripWriter` encodes a PNG strip by strip (plain zlib) and renames it into place when complete;
* :func:`histogram` counts label values in one streaming pass;
* :func:`read_png` / :func:`write_png` read and write small files (tiles) whole.

Array conventions: images are ``uint8 [H, W, C]`` in RGB(A) order, labels and maps ``uint8 [H, W]``.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from cropmap.core.errors import InputError, short
from cropmap.core.files import atomic_path, temporary_path
from cropmap.raster.base import RasterInfo, StreamingWriter

FORMAT = "png"
SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> (channels a decoder returns, name)
_COLOR_TYPES = {0: (1, "grayscale"), 2: (3, "RGB"), 3: (1, "palette"), 4: (2, "grayscale+alpha"), 6: (4, "RGBA")}
IHDR_BYTES = 33  # signature (8) + IHDR chunk (4 length + 4 type + 13 data + 4 CRC)
IEND_BYTES = 12  # the IEND chunk: 4 length + 4 type + 4 CRC
_MAX_CHUNK = 2**31 - 1  # the PNG specification's largest chunk length
# PNG colour type -> the bit depths the specification allows for it
_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_FETCH_ROWS = 8  # rows per libvips fetch (measured: 8-16 rows decode ~2x faster than 512, in less memory)
_TRIM_BYTES = 16 << 20  # give freed heap back to the OS after this many bytes decoded (see _malloc_trim)


def _walk_chunks(read_at, size: int, path: str) -> Iterator[tuple[bytes, int, int]]:
    """Walk a PNG's chunks after the signature: yields ``(type, offset of the chunk, data length)``
    up to and including IEND; bytes after IEND are not looked at (decoders ignore them too).

    ``read_at(offset, n)`` returns up to ``n`` bytes of the file at ``offset``. :class:`InputError` when a
    chunk runs past the end of the file (truncated) or a chunk header is not one.
    """
    off = len(SIGNATURE)
    while True:
        head = read_at(off, 8)
        if len(head) < 8:
            raise InputError(f"{path}: truncated PNG (the file ends before its IEND chunk)")
        length, kind = struct.unpack(">I4s", head)
        if length > _MAX_CHUNK or not kind.isalpha():
            raise InputError(f"{path}: corrupt PNG (no chunk header at byte {off})")
        if off + 12 + length > size:
            raise InputError(f"{path}: truncated PNG (the file ends inside its {kind.decode()} chunk at byte {off})")
        yield kind, off, length
        if kind == b"IEND":
            return
        off += 12 + length


def info(path: str | os.PathLike) -> RasterInfo:
    """Read a PNG's header (signature and IHDR) and check that the file is not truncated.

    Truncation is detected cheaply: a complete PNG has an IEND chunk, usually as its last 12 bytes; when
    it is not there (bytes after IEND, or a truncated file) the chunks are walked from the start, one
    8-byte read each, to find it. Raises :class:`InputError` for a missing file, a non-PNG, a bad header
    or a truncated file.
    """
    path = str(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: file not found")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, expected a PNG file")
    size = os.path.getsize(path)
    with open(path, "rb", buffering=0) as f:
        head = f.read(IHDR_BYTES)
        channels, depth, name, width, height = _parse_ihdr(head, path)
        f.seek(max(size - IEND_BYTES, 0))
        tail = f.read(IEND_BYTES)
        if tail[4:8] != b"IEND":
            fd = f.fileno()
            for _ in _walk_chunks(lambda off, n: os.pread(fd, n, off), size, path):
                pass
    return RasterInfo(path, width, height, channels, depth, name, FORMAT)


def _parse_ihdr(head: bytes, path: str) -> tuple[int, int, str, int, int]:
    """``(channels, bit depth, colour name, width, height)`` from a PNG's first 33 bytes (signature and IHDR)."""
    if len(head) < IHDR_BYTES or head[:8] != SIGNATURE:
        raise InputError(f"{path}: not a PNG file (bad signature)")
    length, ctype = struct.unpack(">I4s", head[8:16])
    if ctype != b"IHDR" or length != 13:
        raise InputError(f"{path}: corrupt PNG (first chunk is not IHDR)")
    width, height, depth, color, comp, filt, interlace = struct.unpack(">IIBBBBB", head[16:29])
    if zlib.crc32(head[12:29]) != struct.unpack(">I", head[29:33])[0]:
        raise InputError(f"{path}: corrupt PNG (IHDR checksum mismatch)")
    if (color not in _COLOR_TYPES or width == 0 or height == 0 or depth not in _DEPTHS[color] or comp or filt
            or interlace > 1):
        raise InputError(f"{path}: corrupt PNG (invalid header)")
    channels, name = _COLOR_TYPES[color]
    return channels, depth, name, width, height


def check_bytes(data: bytes | memoryview, path: str | os.PathLike) -> None:
    """Check a whole PNG in memory before decoding it: header, every chunk's checksum up to IEND, an
    IDAT chunk. :class:`InputError` naming the first problem.

    (Decoders print their own messages on damaged data - libpng on stderr - before failing; checked
    first, a damaged file gets one clear line instead.)
    """
    path = str(path)
    view = memoryview(data)
    _parse_ihdr(bytes(view[:IHDR_BYTES]), path)
    seen_idat = False
    for kind, off, length in _walk_chunks(lambda o, n: view[o : o + n].tobytes(), len(view), path):
        body = view[off + 4 : off + 8 + length]  # type and data: what the CRC covers
        (crc,) = struct.unpack(">I", view[off + 8 + length : off + 12 + length])
        if zlib.crc32(body) != crc:
            raise InputError(f"{path}: corrupt PNG (checksum mismatch in the {kind.decode()} chunk at byte {off})")
        seen_idat |= kind == b"IDAT"
    if not seen_idat:
        raise InputError(f"{path}: corrupt PNG (no image data)")


def _vips():
    import pyvips  # imported lazily: the library is heavy and only the huge-image paths need it

    return pyvips


def _open_sequential(path: str):
    pyvips = _vips()
    try:
        return pyvips.Image.new_from_file(path, access="sequential", fail_on="error")
    except pyvips.Error as e:  # header-level decode problem
        raise InputError(f"{path}: cannot decode PNG ({short(e)})") from None


def histogram(path: str | os.PathLike) -> np.ndarray:
    """Count each of the 256 values of an 8-bit single-channel PNG in one streaming pass: ``int64 [256]``.

    Decode errors (corrupt data) raise :class:`InputError`.
    """
    pyvips = _vips()
    path = str(path)
    img = _open_sequential(path)
    try:
        hist = img.hist_find()
        counts = np.frombuffer(hist.write_to_memory(), dtype=np.uint32).astype(np.int64)
    except pyvips.Error as e:
        raise InputError(f"{path}: cannot decode PNG ({short(e)})") from None
    return counts.reshape(-1)[:256]


_TRIM = None


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


class Reader:
    """Sequential decoder of one PNG: :meth:`read_into` fills caller-owned arrays with the next rows.

    ``rgba=True`` gives RGB files an alpha channel of 255. Single-channel files give ``[n, W]`` rows, others
    ``[n, W, C]`` (``row_shape``). Decode errors (truncated or corrupt data) raise :class:`InputError`.
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
                raise InputError(f"{self.path}: cannot decode PNG at row {self.y + r} ({short(e)})") from None
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
        """Decode and drop ``n`` rows (a PNG decodes only from its top)."""
        scratch = np.empty((min(n, chunk),) + self.row_shape, np.uint8)
        while n > 0 and self.y < self.height:
            n -= self.read_into(scratch[: min(n, chunk)])


def read_png(path: str | os.PathLike) -> np.ndarray:
    """Read a small PNG whole: ``uint8 [H, W]`` (gray) or ``[H, W, C]`` in RGB/RGBA order.

    For tiles and other small files only; huge images go through :class:`Reader`. The file's chunks
    are checked first (:func:`check_bytes`), so a damaged file is one :class:`InputError` line.
    """
    import cv2

    path = str(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: file not found")
    with open(path, "rb") as f:
        data = f.read()
    check_bytes(data, path)
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise InputError(f"{path}: cannot decode PNG")
    if arr.dtype != np.uint8:
        raise InputError(f"{path}: unsupported bit depth (expected 8-bit)")
    if arr.ndim == 3:
        code = cv2.COLOR_BGR2RGB if arr.shape[2] == 3 else cv2.COLOR_BGRA2RGBA
        arr = cv2.cvtColor(arr, code)
    return arr


def write_png(path: str | os.PathLike, array: np.ndarray, compression: int | None = None, clean: bool = True) -> None:
    """Write a small ``uint8 [H, W]`` / ``[H, W, 3]`` (RGB) / ``[H, W, 4]`` (RGBA) array as a PNG, atomically.

    ``compression``: None keeps OpenCV's default (RLE, sub filter: as small as level 1 and twice as
    fast); 0 stores the rows uncompressed (about 9x faster to write than the default, and to read;
    files about twice as large on noisy imagery); 1-9 is zlib's level. ``clean``: delete what an
    interrupted run left for ``path`` first (see :func:`cropmap.core.files.temporary_path`).
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
    with atomic_path(path, clean) as tmp:
        tmp.write_bytes(data.tobytes())


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


class StripWriter(StreamingWriter):
    """Stream an 8-bit PNG to disk strip by strip; it is renamed into place only when complete.

    ``channels`` 1 (gray), 3 (RGB) or 4 (RGBA). Call :meth:`write` with ``uint8 [h, W]`` or
    ``[h, W, C]`` strips top to bottom until ``height`` rows are written, then :meth:`close`
    (or use it as a context manager: an exception inside the ``with`` discards the partial file).
    Memory: one strip plus zlib's window. Rows use PNG filter 0 (none). ``like`` (the source's
    :class:`RasterInfo`) and ``role`` are accepted for the writers' common signature; a PNG has no
    georeferencing, colour table or nodata value to keep.
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, channels: int = 1, compression: int = 1,
                 like: RasterInfo | None = None, role: str = "map"):
        if channels not in (1, 3, 4):
            raise ValueError("channels must be 1, 3 or 4")
        self.path = Path(path)
        self.width, self.height, self.channels = int(width), int(height), int(channels)
        self.rows_written = 0
        self._tmp = temporary_path(self.path)
        try:
            self._f = open(self._tmp, "wb")
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        self._z = zlib.compressobj(int(compression))
        color = {1: 0, 3: 2, 4: 6}[channels]
        ihdr = struct.pack(">IIBBBBB", self.width, self.height, 8, color, 0, 0, 0)
        self._f.write(SIGNATURE + _chunk(b"IHDR", ihdr))

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
        try:
            self._f.write(_chunk(b"IDAT", self._z.flush()) + _chunk(b"IEND", b""))
            self._f.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Discard the partial file."""
        if not self._f.closed:
            self._f.close()
        self._tmp.unlink(missing_ok=True)
