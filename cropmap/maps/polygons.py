"""Class maps to field polygons (polygonize.py), band by band in bounded memory.

Tracing (:func:`trace_band`): for each class, OpenCV's ``findContours`` (outer borders and holes)
gives the chains of boundary pixels of the class's mask; each chain becomes the ring of pixel edges around
it (:func:`_crack_rings`: the edges of a boundary pixel between where the ring enters it and where it
leaves, from the directions of the chain's steps), so rings run exactly along pixel edges and a polygon's
area is its pixel count. OpenCV joins diagonal neighbours; where it did, a ring touches itself at a pixel
corner and is split there (``shapely.make_valid``), so every polygon is one 4-connected region, as
``rasterio.features.shapes`` (GDAL) gives it.

Merging (:class:`Polygonizer`): the map is read in bands of full rows. A polygon cut by the bottom edge of
a band is held; pieces that meet across the cut (the same class in the pixels just above and below) are
joined (union-find, then one shapely union per region), so each region comes out once, whole. A region
is finished as soon as none of its pieces reaches the last cut. Memory: two bands (the next one is decoded
in a thread meanwhile), a class mask and OpenCV's copy of it, and the pieces of the regions still open,
whatever the map's height.

Coordinates stay in pixels (exact integers) until a region is finished, then go through the map's
transform. Areas: pixels times the pixel area in a projected CRS; in a geographic CRS the polygons are
projected to a Lambert azimuthal equal-area projection centred on the map first.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from cropmap.core.cli import progress as progress_bar

from cropmap.core.errors import InputError
from cropmap.core.files import atomic_path
from cropmap.raster import RasterInfo, check_map, check_map_values, open_reader

#: Output drivers by file suffix.
DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}
#: Pixels per band (16 Mpixel). Memory: two bands, a class mask and OpenCV's copy of it, about
#: 4 bytes x width x band rows, plus the traced contours and the regions still open.
BAND_PIXELS = 1 << 24
#: Polygons written at a time (each write opens and closes the file).
BATCH = 50_000


def trace_band(band: np.ndarray, classes: Sequence[int], y0: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Polygons of the 4-connected regions of ``classes`` in one band.

    Args:
        band: ``uint8 [h, W]`` class map rows.
        classes: the values to trace.
        y0: the band's first row in the map (added to the polygons' y).

    Returns:
        ``(geoms, cls)``: shapely Polygons (``object [n]``) in pixel coordinates of the map (x = column,
        y = row, pixel edges on integers) and their class (``int64 [n]``).
    """
    geoms, cls = [], []
    for c in classes:
        mask = (band == c).view(np.uint8)
        contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        if not contours:
            continue
        polys = _polygons(contours, hierarchy[0], mask, y0)
        geoms.append(polys)
        cls.append(np.full(len(polys), c, np.int64))
    if not geoms:
        return np.empty(0, object), np.empty(0, np.int64)
    return np.concatenate(geoms), np.concatenate(cls)


# Pixel corners, in the order a ring with its region on the (mathematical) right goes round a pixel:
# top-left, bottom-left, bottom-right, top-right; as (x, y) offsets from the pixel's top-left corner.
_CORNERS = np.array([[0, 0], [0, 1], [1, 1], [1, 0]], np.int32)
_TL, _BL, _BR, _TR = range(4)


def _step_table(corner_of: dict[tuple[int, int], int]) -> np.ndarray:
    """A lookup by step code ``(dx + 1) * 3 + (dy + 1)`` from a dict keyed by ``(dx, dy)``."""
    table = np.zeros(9, np.int32)
    for (dx, dy), corner in corner_of.items():
        table[(dx + 1) * 3 + dy + 1] = corner
    return table


# OpenCV's chains (outer borders and holes alike) keep the region on their right. The ring passes from
# a pixel to the next one of the chain at a corner they share: for a step (dx, dy), the corner of the
# pixel left (_EXIT) and the same point as a corner of the pixel entered (_ENTRY).
_EXIT = _step_table({(1, 0): _BR, (0, 1): _BL, (-1, 0): _TL, (0, -1): _TR,
                     (1, 1): _BR, (1, -1): _TR, (-1, -1): _TL, (-1, 1): _BL})
_ENTRY = _step_table({(1, 0): _BL, (0, 1): _TL, (-1, 0): _TR, (0, -1): _BR,
                      (1, 1): _TL, (1, -1): _BL, (-1, -1): _BR, (-1, 1): _TR})


def _cyclic(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each element's successor and predecessor around its own ring (rings: ``starts[i]:ends[i]``)."""
    nxt = np.roll(values, -1, axis=0)
    nxt[ends - 1] = values[starts]
    prv = np.roll(values, 1, axis=0)
    prv[starts] = values[ends - 1]
    return nxt, prv


def _crack_rings(contours: Sequence[np.ndarray], mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rings of pixel edges around OpenCV chains of boundary pixels (``CHAIN_APPROX_NONE``).

    Returns ``(xy, ring, pinched)``: the rings' corners ``int32 [m, 2]`` (not closed, collinear corners
    dropped), the index of the chain each belongs to ``int64 [m]`` (in order), and per chain whether it
    steps diagonally between two pixels that share no side in ``mask`` (a corner where its ring touches
    itself or another ring).
    """
    lengths = np.fromiter((len(c) for c in contours), np.int64, len(contours))
    pts = np.concatenate(contours).reshape(-1, 2)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    nxt, prv = _cyclic(pts, starts, ends)
    step_out = nxt - pts
    step_in = pts - prv
    code_out = (step_out[:, 0] + 1) * 3 + step_out[:, 1] + 1
    entry = _ENTRY[(step_in[:, 0] + 1) * 3 + step_in[:, 1] + 1]
    k = (_EXIT[code_out] - entry) % 4  # edges of this pixel on the ring, going round it from entry to exit
    k[(k == 0) & (code_out == 8 - ((step_in[:, 0] + 1) * 3 + step_in[:, 1] + 1))] = 4  # turns back: round it
    alone = np.flatnonzero(lengths == 1)  # a one-pixel region: its four edges
    entry[starts[alone]], k[starts[alone]] = _TR, 4
    ring = np.repeat(np.arange(len(contours)), lengths)
    # a diagonal step whose inner side pixel is not the region: a pinch (8- but not 4-connected)
    diag = np.flatnonzero((step_out[:, 0] != 0) & (step_out[:, 1] != 0))
    sx, sy = step_out[diag, 0], step_out[diag, 1]
    ix = pts[diag, 0] + np.where(sx * sy > 0, sx, 0)
    iy = pts[diag, 1] + np.where(sx * sy > 0, 0, sy)
    pinched = np.zeros(len(contours), bool)
    pinched[ring[diag[mask[iy, ix] == 0]]] = True
    # the corners: k per chain pixel, starting after its entry corner
    rep = np.repeat(np.arange(len(pts)), k)
    j = np.arange(len(rep)) - np.repeat(np.cumsum(k) - k, k) + 1
    xy = pts[rep] + _CORNERS[(entry[rep] + j) % 4]
    ring = ring[rep]
    # drop corners in the middle of a straight run
    ends = np.cumsum(np.bincount(ring, minlength=len(contours)))
    starts = np.concatenate([[0], ends[:-1]])
    nxt, prv = _cyclic(xy, starts, ends)
    turn = ((xy - prv) != (nxt - xy)).any(axis=1)
    return xy[turn], ring[turn], pinched


def _polygons(contours: Sequence[np.ndarray], hierarchy: np.ndarray, mask: np.ndarray, y0: int) -> np.ndarray:
    """Shapely polygons from OpenCV's chains of one class mask (``RETR_CCOMP``: borders and their holes)."""
    import shapely

    xy, ring, pinched = _crack_rings(contours, mask)
    coords = xy.astype(np.float64)
    coords[:, 1] += y0
    parent = hierarchy[:, 3]
    shell = np.where(parent < 0, np.arange(len(contours)), parent)  # the polygon each ring belongs to
    order = np.lexsort((parent >= 0, shell))  # per polygon: its shell, then its holes
    rank = np.empty(len(contours), np.int64)
    rank[order] = np.arange(len(order))
    ring = rank[ring]
    by_ring = np.argsort(ring, kind="stable")
    rings = shapely.linearrings(coords[by_ring], indices=ring[by_ring])
    poly_of_ring = np.unique(shell[order], return_inverse=True)[1]
    polys = shapely.polygons(rings, indices=poly_of_ring)
    polys_pinched = np.zeros(len(polys), bool)
    polys_pinched[poly_of_ring[pinched[order]]] = True
    if polys_pinched.any():  # rings joined at a corner (8-connectivity): split into 4-connected regions
        bad = np.flatnonzero(polys_pinched)
        bad = bad[~shapely.is_valid(polys[bad])]
        if len(bad):
            fixed = shapely.get_parts(shapely.make_valid(polys[bad]))
            fixed = fixed[shapely.get_type_id(fixed) == 3]  # polygons only
            keep = np.ones(len(polys), bool)
            keep[bad] = False
            polys = np.concatenate([polys[keep], fixed])
    return polys


class _UnionFind:
    def __init__(self):
        self.parent: dict[int, int] = {}

    def add(self, i: int) -> None:
        self.parent.setdefault(i, i)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class Polygonizer:
    """Feed bands of a map top to bottom (:meth:`add_band`); get finished regions back.

    ``height``: the map's height; ``classes``: the values traced. Finished regions come back as
    ``(geoms, cls)`` (shapely Polygons in global pixel coordinates, their class) from :meth:`add_band`.
    """

    height: int
    classes: Sequence[int]
    _uf: _UnionFind = field(default_factory=_UnionFind)
    _geom: dict = field(default_factory=dict)  # piece id -> polygon, for pieces of open regions
    _cls: dict = field(default_factory=dict)
    _open: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # pieces reaching the last cut
    _last_row: np.ndarray | None = None
    _next_id: int = 0

    def add_band(self, y0: int, band: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import shapely

        h = len(band)
        geoms, cls = trace_band(band, self.classes, y0)
        bounds = shapely.bounds(geoms) if len(geoms) else np.empty((0, 4))
        top = (bounds[:, 1] == y0) & (y0 > 0)
        bottom = (bounds[:, 3] == y0 + h) & (y0 + h < self.height)
        ids = np.arange(self._next_id, self._next_id + len(geoms))
        self._next_id += len(geoms)
        held = top | bottom
        for i in np.flatnonzero(held):
            self._uf.add(int(ids[i]))
            self._geom[int(ids[i])] = geoms[i]
            self._cls[int(ids[i])] = int(cls[i])
        if y0 > 0 and len(self._open) and top.any():
            self._join(y0, band[0], ids[top], geoms[top])
        done_g, done_c = [geoms[~held]], [cls[~held]]
        # regions of the pieces held so far that no longer reach the cut below this band are finished
        reach = {self._uf.find(int(i)) for i in ids[bottom]}
        groups: dict[int, list[int]] = {}
        for pid in list(self._geom):
            root = self._uf.find(pid)
            if root not in reach:
                groups.setdefault(root, []).append(pid)
        if groups:
            merged, merged_cls = [], []
            for root, members in groups.items():
                parts = [self._geom.pop(m) for m in members]
                merged.append(parts[0] if len(parts) == 1 else shapely.union_all(parts))
                merged_cls.append(self._cls[root])
                for m in members:  # the whole region leaves: nothing else points into it
                    del self._cls[m], self._uf.parent[m]
            done_g.append(np.array(merged, dtype=object))
            done_c.append(np.array(merged_cls, np.int64))
        self._open = ids[bottom]
        self._last_row = band[-1].copy()
        return np.concatenate(done_g), np.concatenate(done_c)

    def _join(self, y0: int, first_row: np.ndarray, top_ids: np.ndarray, top_geoms: np.ndarray) -> None:
        """Join the pieces above the cut at row ``y0`` with those below where the same class meets."""
        above, below = self._last_row, first_row
        selected = np.zeros(256, bool)
        selected[list(self.classes)] = True
        match = (above == below) & selected[below]
        if not match.any():
            return
        # one query per run of matching columns of one value (a run lies inside one piece on each side)
        same_as_left = np.concatenate([[False], match[1:] & match[:-1] & (below[1:] == below[:-1])])
        xs = np.flatnonzero(match & ~same_as_left) + 0.5
        open_ids = self._open
        open_geoms = np.array([self._geom[int(i)] for i in open_ids], dtype=object)
        up = _locate(open_geoms, xs, y0 - 0.5)
        down = _locate(top_geoms, xs, y0 + 0.5)
        for a, b in zip(open_ids[up], top_ids[down]):
            self._uf.union(int(a), int(b))


def _locate(geoms: np.ndarray, xs: np.ndarray, y: float) -> np.ndarray:
    """Index into ``geoms`` of the polygon holding each point ``(x, y)`` (every point lies in exactly one)."""
    import shapely

    tree = shapely.STRtree(geoms)
    points = shapely.points(np.column_stack([xs, np.full(len(xs), y)]))
    hit = tree.query(points, predicate="intersects")
    where = np.full(len(xs), -1, np.int64)
    where[hit[0]] = hit[1]
    if (where < 0).any():  # cannot happen: each pixel centre lies in the piece that traced it
        raise RuntimeError("a pixel on a band edge lies in no traced polygon")
    return where


# ---- areas, coordinates, output -------------------------------------------------------------------


def _to_crs(geoms: np.ndarray, transform: tuple[float, ...]) -> np.ndarray:
    import shapely

    a, b, c, d, e, f = transform
    m = np.array([[a, d], [b, e]])
    t = np.array([c, f])
    return shapely.transform(geoms, lambda xy: xy @ m + t)


def equal_area_m2(geoms: np.ndarray, crs) -> np.ndarray:
    """Areas in m² of polygons in a geographic CRS, through a Lambert azimuthal equal-area projection
    centred on them (WGS 84 ellipsoid). areas.py measures its pixels with it too."""
    import shapely
    from rasterio.warp import transform_geom

    if len(geoms) == 0:
        return np.empty(0)
    x0, y0, x1, y1 = shapely.total_bounds(geoms)
    laea = f"+proj=laea +lat_0={(y0 + y1) / 2} +lon_0={(x0 + x1) / 2} +datum=WGS84 +units=m +no_defs"
    projected = transform_geom(crs, laea, [shapely.geometry.mapping(g) for g in geoms])
    return shapely.area(np.array([shapely.geometry.shape(g) for g in projected], dtype=object))


@dataclass
class _Output:
    """Polygons appended to a GeoPackage or GeoJSON file (pyogrio) in batches of about :data:`BATCH`."""

    path: Path
    driver: str
    crs: str | None
    names: Sequence[str]
    with_m2: bool
    count: int = 0  # polygons written
    created: bool = False
    _parts: list = field(default_factory=list)
    _held: int = 0

    def add(self, geoms: np.ndarray, cls: np.ndarray, area_px: np.ndarray, area_m2: np.ndarray | None) -> None:
        self._parts.append((geoms, cls, area_px, area_m2))
        self._held += len(geoms)
        if self._held >= BATCH:
            self.flush()

    def flush(self) -> None:
        """Write the polygons held; the first call creates the file (an empty layer if there are none)."""
        import shapely
        from pyogrio.raw import write

        if not self._parts:
            if self.created:
                return
            self._parts = [(np.empty(0, object), np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))]
        geoms, cls, area_px = (np.concatenate([p[i] for p in self._parts]) for i in range(3))
        area_m2 = np.concatenate([p[3] for p in self._parts]) if self.with_m2 else None
        self._parts, self._held = [], 0
        fields = ["class_id", "class_name", "area_px"]
        data = [cls.astype(np.int32), np.array([self.names[c] for c in cls], dtype=object), area_px.astype(np.int64)]
        if self.with_m2:
            fields.append("area_m2")
            data.append(np.asarray(area_m2, np.float64))
        with warnings.catch_warnings():  # the temporary name's extension; no CRS for pixel coordinates (logged)
            warnings.filterwarnings("ignore", message=".*(extension|crs).*")
            write(str(self.path), shapely.to_wkb(geoms), field_data=data, fields=fields, crs=self.crs,
                  geometry_type="Polygon", driver=self.driver, append=self.created, layer="fields")
        self.created = True
        self.count += len(geoms)


def _bands(path: str | os.PathLike, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(y, uint8 [h, W])`` bands of a map, top to bottom; the next band is decoded in a thread while
    the caller works on the current one (two buffers: a band is valid until the next is asked for)."""
    reader = open_reader(path)
    bufs = [np.empty((rows,) + reader.row_shape, np.uint8) for _ in range(2)]
    y, i = 0, 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(reader.read_into, bufs[0])
        while True:
            n = pending.result()
            if n == 0:
                return
            band, i = bufs[i][:n], 1 - i
            pending = pool.submit(reader.read_into, bufs[i])
            yield y, band
            y += n


def m2_per_pixel(georef) -> float | None:
    """The area in m² of a pixel of a projected CRS (its units converted); None without a CRS or in a
    geographic one, where it varies (see :func:`equal_area_m2`). Shared with areas.py."""
    crs = georef.crs
    if crs is None or crs.is_geographic:
        return None
    unit = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
    return georef.pixel_area * unit * unit


@dataclass(frozen=True)
class _Frame:
    """Where a map's polygons go from pixel coordinates, and how their areas in m² are had."""

    crs: object | None  # rasterio CRS, or None (pixel coordinates, or map units without a CRS)
    transform: tuple[float, ...]  # pixel -> map coordinates (GDAL order: a, b, c, d, e, f)
    m2_per_px: float | None  # a projected CRS's pixel area in m²; None otherwise

    @classmethod
    def of(cls, info: RasterInfo) -> _Frame:
        georef = info.georef
        if georef is None:
            return cls(None, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), None)
        return cls(georef.crs, georef.transform, m2_per_pixel(georef))

    @property
    def with_m2(self) -> bool:
        """Whether the polygons get an area in m² (the map has a CRS)."""
        return self.crs is not None

    @property
    def crs_text(self) -> str | None:
        return self.crs.to_string() if self.crs is not None else None

    def finish(self, geoms: np.ndarray, cls: np.ndarray, min_area: float,
               simplify: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Finished regions in pixel coordinates -> ``(geoms, cls, area_px, area_m2)`` in the map's
        coordinates, those smaller than ``min_area`` (m² with a CRS, else pixels) left out, simplified."""
        import shapely

        area_px = np.rint(shapely.area(geoms)).astype(np.int64)
        world = _to_crs(geoms, self.transform)
        if self.crs is not None and self.crs.is_geographic:
            area_m2 = equal_area_m2(world, self.crs)
        elif self.m2_per_px is not None:
            area_m2 = area_px * self.m2_per_px
        else:
            area_m2 = None
        keep = (area_m2 if self.with_m2 else area_px) >= min_area
        if not keep.all():
            world, cls, area_px = world[keep], cls[keep], area_px[keep]
            area_m2 = area_m2[keep] if area_m2 is not None else None
        if simplify > 0:
            world = shapely.simplify(world, simplify, preserve_topology=True)
        return world, cls, area_px, area_m2


def _note_frame(path: str | os.PathLike, info: RasterInfo, driver: str, log) -> None:
    """Log what a map without a CRS gives: polygons in pixel coordinates or in its units, areas in pixels."""
    if info.georef is None:
        hint = " (GeoJSON readers take such coordinates for WGS 84 degrees: .gpkg keeps them CRS-less)"
        log(f"note: {path} has no georeferencing: polygons are in pixel coordinates (x = column, y = row from "
            "the top), without a CRS; areas in pixels" + (hint if driver == "GeoJSON" else ""))
    elif info.georef.crs is None:
        log(f"note: {path} has a transform but no CRS: polygons are in its units, without a CRS; areas in pixels")


def polygonize_map(
    path: str | os.PathLike,
    output: str | os.PathLike,
    classes: Sequence[int] | None = None,
    num_classes: int = 4,
    min_area: float = 0.0,
    simplify: float = 0.0,
    band_rows: int | None = None,
    progress: bool = True,
    log=print,
) -> dict:
    """Write one polygon per 4-connected region of ``classes`` in the map ``path`` to ``output``.

    Args:
        path: class map (PNG or GeoTIFF), ``uint8 [H, W]`` in ``0..num_classes-1``.
        output: ``.gpkg`` (layer ``fields``) or ``.geojson``; columns ``class_id``, ``class_name``,
            ``area_px`` (pixels) and, for a map with a CRS, ``area_m2``.
        classes: the values traced (default: the crops ``1..num_classes-1``).
        min_area: regions smaller than this are left out: m² for a map with a CRS, else pixels.
        simplify: Douglas-Peucker tolerance in the map's units (metres in a projected CRS, pixels for a
            map without georeferencing); 0 keeps the exact pixel edges. Areas are those before it.
        band_rows: rows per band (default: about :data:`BAND_PIXELS` pixels).
        log: where the notes on a map without a CRS go.

    Returns:
        ``{"polygons": n, "crs": text or None, "pixel_coordinates": bool}``.
    """
    from cropmap.core.classes import class_names

    output = Path(output)
    driver = DRIVERS.get(output.suffix.lower())
    if driver is None:
        raise InputError(f"{output}: unsupported output type {output.suffix!r} (expected {', '.join(DRIVERS)})")
    info: RasterInfo = check_map(path)
    classes = list(range(1, num_classes)) if classes is None else sorted(set(classes))
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise InputError(f"--classes: {bad[0]} outside 0..{num_classes - 1}")
    names = class_names(num_classes)
    _note_frame(path, info, driver, log)
    frame = _Frame.of(info)
    rows = band_rows or max(1, BAND_PIXELS // max(info.width, 1))
    poly = Polygonizer(info.height, classes)
    with atomic_path(output) as tmp, progress_bar(total=info.height, desc=output.name, unit="row",
                                                  disable=not progress, leave=False) as bar:
        tmp.unlink()  # the driver creates the file
        out = _Output(tmp, driver, frame.crs_text, names, frame.with_m2)
        for y, band in _bands(path, rows):
            check_map_values(band, num_classes, path)
            geoms, cls = poly.add_band(y, band)
            if len(geoms):
                out.add(*frame.finish(geoms, cls, min_area, simplify))
            bar.update(len(band))
        out.flush()
    return {"polygons": out.count, "crs": frame.crs_text, "pixel_coordinates": info.georef is None}
