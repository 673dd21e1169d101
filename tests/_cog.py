"""A Cloud-Optimized GeoTIFF check for the tests, written from the TIFF 6 / BigTIFF layout (not GDAL's).

The rules checked (those of the COG specification that a reader relies on):
* the main image is tiled, and images larger than one tile have overviews (reduced-resolution IFDs);
* every IFD lies before all tile data (a reader gets the whole index with its first requests);
* within each image the tiles are stored in row-major order, and the overviews' tiles come before
  the main image's (the full-resolution data is at the end of the file);
* GDAL's ghost header says ``LAYOUT=IFDS_BEFORE_DATA`` (what GDAL's COG driver promises to keep).
"""

from __future__ import annotations

import struct
from pathlib import Path

_TYPES = {1: 1, 2: 1, 3: 2, 4: 4, 16: 8}  # BYTE, ASCII, SHORT, LONG, LONG8 -> bytes per value
_FMT = {1: "B", 2: "B", 3: "H", 4: "I", 16: "Q"}


def _ifds(data: bytes):
    order = {b"II": "<", b"MM": ">"}[data[:2]]
    magic = struct.unpack(order + "H", data[2:4])[0]
    big = magic == 43
    if big:
        offset = struct.unpack(order + "Q", data[8:16])[0]
        count_fmt, entry_size, inline, next_fmt = "Q", 20, 8, "Q"
    else:
        offset = struct.unpack(order + "I", data[4:8])[0]
        count_fmt, entry_size, inline, next_fmt = "H", 12, 4, "I"
    header_end = 16 if big else 8
    out = []
    while offset:
        n = struct.unpack_from(order + count_fmt, data, offset)[0]
        pos = offset + struct.calcsize(count_fmt)
        tags = {}
        for i in range(n):
            e = pos + i * entry_size
            tag, typ = struct.unpack_from(order + "HH", data, e)
            count = struct.unpack_from(order + ("Q" if big else "I"), data, e + 4)[0]
            size = _TYPES.get(typ, 1) * count
            where = e + (12 if big else 8)
            if size > inline:
                where = struct.unpack_from(order + ("Q" if big else "I"), data, where)[0]
            if typ in _FMT:
                tags[tag] = list(struct.unpack_from(order + _FMT[typ] * count, data, where))
        end = pos + n * entry_size
        out.append((offset, end, tags))
        offset = struct.unpack_from(order + next_fmt, data, end)[0]
    return out, data[header_end: header_end + 400]


def cog_problems(path: str | Path) -> list[str]:
    """What keeps ``path`` from being a valid COG (an empty list when it is one)."""
    data = Path(path).read_bytes()
    ifds, ghost = _ifds(data)
    problems = []
    if b"LAYOUT=IFDS_BEFORE_DATA" not in ghost:
        problems.append("no COG ghost header (LAYOUT=IFDS_BEFORE_DATA)")
    main = ifds[0][2]
    if 322 not in main or 324 not in main:
        return problems + ["main image not tiled"]
    width, height, tile = main[256][0], main[257][0], main[322][0]
    images = [t for _, _, t in ifds if not (t.get(254, [0])[0] & 4)]  # not masks
    if (width > tile or height > tile) and len(images) < 2:
        problems.append("no overviews")
    ifd_end = max(end for _, end, _ in ifds)
    starts = []
    for i, (_, _, tags) in enumerate(ifds):
        offsets = [o for o, n in zip(tags.get(324, []), tags.get(325, [])) if n > 0]
        if not offsets:
            continue
        if min(offsets) < ifd_end:
            problems.append(f"IFD {i}: tile data before the end of the IFDs")
        if offsets != sorted(offsets):
            problems.append(f"IFD {i}: tiles not in row-major order")
        if not (tags.get(254, [0])[0] & 4):  # masks are interleaved with their image's tiles
            starts.append(min(offsets))
    if starts and starts[0] != max(starts):
        problems.append("the main image's data is not after the overviews'")
    return problems
