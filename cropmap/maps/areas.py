"""Crop areas of a class map: pixels, hectares and share of the valid area per class, and per zone.

The map is read in strips (memory follows its width). A pixel counts when it is valid: not 255 (ignored,
as in labels rasterised from polygons) and, with a source image, valid there (alpha 255: maps hold 0, the
value of class 0, where their source is no-data, so only the source tells them apart). Areas: pixels
times the pixel area in a projected CRS (exact); in a geographic CRS each row's pixel area through the
same Lambert azimuthal equal-area projection polygonize.py measures with
(:func:`cropmap.maps.polygons.equal_area_m2`; north-up grids only).

Zones (any polygon layer, e.g. districts or farms) are reprojected to the map's CRS and burnt at pixel
centres strip by strip; features sharing a value of ``zone_field`` form one zone. A pixel in no zone
counts in the row :data:`OUTSIDE`. Zones that overlap another zone are burnt one by one, so that a pixel
in two zones counts in both.
"""

from __future__ import annotations

import contextlib
import csv
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from cropmap.core.classes import class_names as default_names
from cropmap.core.cli import progress as progress_bar
from cropmap.core.errors import InputError
from cropmap.core.files import atomic_path, check_output_file
from cropmap.maps.polygons import equal_area_m2, m2_per_pixel
from cropmap.raster import IGNORE, RasterInfo, check_image, check_map, iter_zip, strip_rows, valid_mask
from cropmap.raster.vectors import GridFeatures, Layer, read_layer, require_crs, value_texts

#: The zone of the pixels in no zone.
OUTSIDE = "(outside zones)"
NEED = "areas in hectares"
M2_PER_HA = 10_000.0


@dataclass
class Zones:
    """Zone polygons on a map's grid: ``names`` (``Z`` zone values as text, first-seen order), the zone of
    each feature (``zone_of``: ``int64 [n]``), ``alone`` (``bool [Z]``: zones overlapping another, burnt one
    by one) and the layer as read (its geometries in their own CRS, for the GeoPackage)."""

    layer: Layer
    names: list[str]
    zone_of: np.ndarray
    grid: GridFeatures
    alone: np.ndarray


def read_zones(path: str | os.PathLike, field: str, info: RasterInfo, layer: str | None = None) -> Zones:
    """The zones of ``path`` (layer ``layer``, named by ``field``) on the grid of the map ``info``."""
    lay = read_layer(path, field, layer, what="--zones")
    grid = GridFeatures.of(lay, info, NEED)
    texts = ["(null)" if t is None else t for t in value_texts(lay.values)]
    names = list(dict.fromkeys(texts))
    if OUTSIDE in names:
        raise InputError(f"--zones {path}: a zone is named {OUTSIDE!r}, the name of the pixels in no zone")
    number = {n: i for i, n in enumerate(names)}
    zone_of = np.fromiter((number[t] for t in texts), np.int64, len(texts))
    alone = _overlapping(grid.geoms, zone_of, len(names), 1e-3 * info.georef.pixel_area)
    return Zones(lay, names, zone_of, grid, alone)


def _overlapping(geoms: np.ndarray, zone_of: np.ndarray, n_zones: int, min_area: float) -> np.ndarray:
    """``bool [Z]``: zones with a feature whose inside overlaps (by more than ``min_area``) another zone's."""
    import shapely

    alone = np.zeros(n_zones, bool)
    if len(geoms) < 2:
        return alone
    valid = shapely.make_valid(geoms)
    a, b = shapely.STRtree(valid).query(valid, predicate="intersects")
    pair = (a < b) & (zone_of[a] != zone_of[b])
    a, b = a[pair], b[pair]
    if len(a):
        over = shapely.area(shapely.intersection(valid[a], valid[b])) > min_area
        alone[zone_of[a[over]]] = True
        alone[zone_of[b[over]]] = True
    return alone


def zone_strip(zones: Zones, y0: int, h: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """The zones of rows ``y0 .. y0 + h``: ``int32 [h, W]`` (zone index + 1; 0: in no zone burnt there) and,
    for each overlapping zone (``alone``) touching the strip, ``(zone, bool [h, W])``."""
    grid = zones.grid
    idx = grid.touching(y0, h)
    z = zones.zone_of[idx]
    shared = ~zones.alone[z]
    out = np.zeros((h, grid.width), np.int32)
    grid.burn(idx[shared], z[shared] + 1, out, y0)
    extra = []
    for zone in np.unique(z[~shared]):
        mask = np.zeros((h, grid.width), np.uint8)
        grid.burn(idx[z == zone], 1, mask, y0)
        extra.append((int(zone), mask.view(bool)))
    return out, extra


class PixelArea:
    """The area in m² of the pixels of each row of a map (see the module docstring)."""

    def __init__(self, info: RasterInfo):
        require_crs(info, NEED)
        self.georef = info.georef
        self.constant = m2_per_pixel(self.georef)  # None in a geographic CRS
        a, b, _, d, e, _ = self.georef.transform
        if self.constant is None and (b != 0 or d != 0):
            raise InputError(f"{info.path}: a rotated grid in a geographic CRS is not supported (warp it north-up)")

    def rows(self, y0: int, h: int) -> np.ndarray:
        """``float64 [h]``: m² per pixel of rows ``y0 .. y0 + h``."""
        import shapely

        if self.constant is not None:
            return np.full(h, self.constant)
        a, _, c, _, e, f = self.georef.transform
        top = f + e * np.arange(y0, y0 + h, dtype=np.float64)
        bottom = top + e
        boxes = shapely.box(min(c, c + a), np.minimum(top, bottom), max(c, c + a), np.maximum(top, bottom))
        return equal_area_m2(boxes, self.georef.crs)


def _check_values(m: np.ndarray, valid: np.ndarray, num_classes: int, path) -> None:
    bad = valid & (m >= num_classes)
    if bad.any():
        raise InputError(f"{path}: map value {int(m[bad][0])} outside 0..{num_classes - 1} (255: ignored)")


def count_areas(path: str | os.PathLike, info: RasterInfo, num_classes: int, zones: Zones | None = None,
                source: str | os.PathLike | None = None, rows: int | None = None,
                progress: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """Count the map ``path`` (header ``info``): ``(pixels int64 [Z + 1, K], m2 float64 [Z + 1, K], excluded)``,
    row ``z`` for each zone and the last for :data:`OUTSIDE` (the only row without zones), ``K`` =
    ``num_classes``; ``excluded``: pixels not valid (see the module docstring)."""
    n_zones = len(zones.names) if zones is not None else 0
    k = num_classes
    area = PixelArea(info)
    pix = np.zeros((n_zones + 1) * k, np.int64)
    m2 = np.zeros((n_zones + 1) * k, np.float64)
    excluded = 0
    paths = [path] if source is None else [path, source]
    rows = rows or strip_rows(info.width, 24)
    with progress_bar(total=info.height, desc=Path(path).name, unit="row", disable=not progress, leave=False) as bar:
        for y0, strips in iter_zip(paths, rows):
            m = strips[0]
            h = len(m)
            valid = m != IGNORE
            if source is not None:
                valid &= valid_mask(strips[1][..., 3])
            _check_values(m, valid, k, path)
            excluded += valid.size - int(np.count_nonzero(valid))
            row_m2 = None if area.constant is not None else area.rows(y0, h)
            key = np.full(m.shape, n_zones, np.int64)  # the row OUTSIDE
            if zones is not None:
                zi, extra = zone_strip(zones, y0, h)
                counted = np.zeros_like(valid)  # in overlapping zones: counted in each, not again below
                for zone, inside in extra:
                    _add(pix, m2, zone * k, m, valid & inside, row_m2, k)
                    counted |= inside
                valid &= ~counted
                np.subtract(zi, 1, out=key, where=zi > 0)
            _add(pix, m2, 0, key * k + m, valid, row_m2, (n_zones + 1) * k)
            bar.update(h)
    pix, m2 = pix.reshape(n_zones + 1, k), m2.reshape(n_zones + 1, k)
    if area.constant is not None:
        m2 = pix * area.constant
    return pix, m2, excluded


def _add(pix: np.ndarray, m2: np.ndarray, offset: int, key: np.ndarray, sel: np.ndarray,
         row_m2: np.ndarray | None, n: int) -> None:
    """Add the pixels ``sel`` of the strip to the counts ``offset .. offset + n`` by ``key``; their areas
    too when they vary by row (``row_m2``: ``float64 [h]``)."""
    keys = key[sel]
    pix[offset : offset + n] += np.bincount(keys, minlength=n)
    if row_m2 is not None:
        weights = np.broadcast_to(row_m2[:, None], sel.shape)[sel]
        m2[offset : offset + n] += np.bincount(keys, weights=weights, minlength=n)


def area_rows(names: Sequence[str], zone_names: Sequence[str] | None, pix: np.ndarray, m2: np.ndarray) -> list[dict]:
    """The CSV rows: per zone (and :data:`OUTSIDE`) when there are zones, per class: ``zone``, ``class_id``,
    ``class_name``, ``pixels``, ``hectares``, ``share`` (of the zone's valid area; 0 for a zone without any)."""
    out = []
    zones = list(zone_names) + [OUTSIDE] if zone_names is not None else [None]
    for z, zone in enumerate(zones):
        total = m2[z].sum()
        for c, name in enumerate(names):
            row = {} if zone is None else {"zone": zone}
            row.update(class_id=c, class_name=name, pixels=int(pix[z, c]), hectares=round(m2[z, c] / M2_PER_HA, 6),
                       share=round(m2[z, c] / total, 6) if total > 0 else 0.0)
            out.append(row)
    return out


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _write_gpkg(path: Path, zones: Zones, names: Sequence[str], pix: np.ndarray, m2: np.ndarray) -> None:
    """One MultiPolygon per zone (its features' parts, in the zones' CRS) with its valid pixels and hectares,
    and one hectare column per class (``{name}_ha``)."""
    import shapely
    from pyogrio.raw import write

    geoms = [shapely.multipolygons(shapely.get_parts(zones.layer.geoms[zones.zone_of == z]))
             for z in range(len(zones.names))]
    ha = m2[:-1] / M2_PER_HA
    fields = [zones.layer.field, "valid_px", "valid_ha"] + [f"{n}_ha" for n in names]
    data = [np.array(zones.names, dtype=object), pix[:-1].sum(axis=1), ha.sum(axis=1)]
    data += [np.ascontiguousarray(ha[:, c]) for c in range(len(names))]
    path.unlink(missing_ok=True)  # the driver creates the file
    with warnings.catch_warnings():  # the temporary name's extension
        warnings.filterwarnings("ignore", message=".*extension.*")
        write(str(path), shapely.to_wkb(np.array(geoms, dtype=object)), field_data=data, fields=fields,
              crs=zones.layer.crs, geometry_type="MultiPolygon", driver="GPKG", layer="areas")


def areas(map_path: str | os.PathLike, output: str | os.PathLike, *, zones: str | os.PathLike | None = None,
          zone_field: str | None = None, zone_layer: str | None = None, gpkg: str | os.PathLike | None = None,
          source: str | os.PathLike | None = None, num_classes: int = 4, class_names: Sequence[str] | None = None,
          rows: int | None = None, progress: bool = True, log=print) -> dict:
    """Write the areas of the map ``map_path`` to the CSV ``output`` (and the zones to the GeoPackage ``gpkg``).

    ``source``: the map's source image (its valid pixels); ``class_names``: names of the ``num_classes``
    classes (default: the project's). Returns ``{"rows": CSV rows, "pixels", "m2", "excluded"}``.
    """
    if gpkg is not None and zones is None:
        raise InputError("--gpkg needs --zones (it writes the zones with their areas)")
    if zones is not None and not zone_field:
        raise InputError("--zones needs --zone_field (the attribute naming each zone)")
    if gpkg is not None and Path(gpkg).suffix.lower() != ".gpkg":
        raise InputError(f"{gpkg}: --gpkg writes a GeoPackage: name it .gpkg")
    names = list(class_names) if class_names else default_names(num_classes)
    check_output_file(output, *([gpkg] if gpkg else []))
    src = check_image(source) if source is not None else None
    info = check_map(map_path, like=src)
    PixelArea(info)  # a CRS, a supported grid: before the zones are read
    zs = read_zones(zones, zone_field, info, zone_layer) if zones is not None else None
    pix, m2, excluded = count_areas(map_path, info, len(names), zs, source, rows, progress)
    table = area_rows(names, zs.names if zs else None, pix, m2)
    with atomic_path(output) as tmp, contextlib.ExitStack() as stack:
        if gpkg is not None:
            _write_gpkg(stack.enter_context(atomic_path(gpkg)), zs, names, pix, m2)
        _write_csv(tmp, table)
    valid_ha = m2.sum() / M2_PER_HA
    what = "" if source is not None else " (value 0 counted as class 0: give --source to leave no-data out)"
    log(f"{map_path}: {int(pix.sum())} valid pixels, {valid_ha:.4f} ha{what}; {excluded} pixels left out "
        f"(255 or no-data) -> {output}" + (f", {gpkg}" if gpkg else ""))
    return {"rows": table, "pixels": pix, "m2": m2, "excluded": excluded}
