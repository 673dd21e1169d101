"""Polygon layers (GeoPackage, Shapefile, GeoJSON, FlatGeobuf, anything GDAL reads) on a raster's grid.

* :func:`read_layer` - the polygons of one layer and one attribute of theirs, read with pyogrio
  (:class:`Layer`); one :class:`~cropmap.core.errors.InputError` line for a missing file, layer or field,
  a layer without a CRS or features that are not polygons.
* :func:`value_texts` - attribute values as text, whatever the driver's type.
* :func:`reproject` - polygons from one CRS to another, vertex by vertex (rasterio's PROJ), in chunks.
* :class:`GridFeatures` - polygons in a raster's CRS with a spatial index (``shapely.STRtree``), burnt
  strip by strip: :meth:`~GridFeatures.touching` finds the features whose bounds touch a strip of rows,
  :meth:`~GridFeatures.burn` burns them with ``rasterio.features.rasterize`` and the strip's window
  transform. A pixel is burnt when its centre lies inside a polygon (GDAL's rule without ``all_touched``),
  holes and multipolygons included; memory is the caller's strip, never an image-sized array.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from cropmap.core.errors import InputError, short
from cropmap.raster.base import RasterInfo

#: Geometries reprojected at a time (rasterio's transform works on lists of coordinates).
REPROJECT_CHUNK = 20_000
_POLYGONAL = (3, 6)  # shapely type ids: Polygon, MultiPolygon


@dataclass
class Layer:
    """The polygons of a vector layer and one attribute of theirs.

    ``geoms``: shapely Polygons and MultiPolygons, ``object [n]`` (features without geometry, or with an
    empty one, are left out and counted in ``skipped``); ``values``: the attribute of each, ``[n]`` (the
    driver's dtype: integers, floats, or ``object`` for text; None/NaN where null); ``crs``: the layer's CRS
    as text (WKT or ``EPSG:n``).
    """

    path: str
    name: str | None
    field: str
    geoms: np.ndarray
    values: np.ndarray
    crs: str
    skipped: int = 0


def _layer_names(path: str) -> list[str]:
    import pyogrio

    try:
        return [str(n) for n in pyogrio.list_layers(path)[:, 0]]
    except Exception:  # noqa: BLE001 - only used to word an error
        return []


def read_layer(path: str | os.PathLike, field: str, layer: str | None = None, what: str = "") -> Layer:
    """Read the polygons of ``layer`` (default: the first) of ``path`` and their attribute ``field``.

    ``what`` names the flag the file came from in error messages (e.g. ``"--labels"``). Raises
    :class:`InputError` for a missing or unreadable file, an unknown layer (listing the layers), an unknown
    field (listing the fields), a layer without a CRS, and features that are not polygons.
    """
    import pyogrio
    import shapely
    from pyogrio.errors import DataLayerError, DataSourceError
    from pyogrio.raw import read

    path = str(path)
    where = f"{what} {path}" if what else path
    if not os.path.exists(path):
        raise InputError(f"{where}: file not found")
    try:
        with warnings.catch_warnings():  # "more than one layer found": the first is read, as documented
            warnings.simplefilter("ignore", UserWarning)
            info = pyogrio.read_info(path, layer=layer)
            if field not in list(info["fields"]):
                fields = ", ".join(map(str, info["fields"])) or "none"
                raise InputError(f"{where}: no field {field!r} (fields: {fields})")
            meta, _, wkb, data = read(path, layer=layer, columns=[field])
    except DataLayerError as e:
        names = _layer_names(path)
        listed = f" (layers: {', '.join(names)})" if names else ""
        raise InputError(f"{where}: no layer {layer!r}{listed}" if layer is not None
                         else f"{where}: cannot read a layer ({short(e)})") from None
    except DataSourceError as e:
        raise InputError(f"{where}: cannot read as vector data ({short(e)})") from None
    if not meta.get("crs"):
        raise InputError(f"{where}: the layer has no CRS (its polygons cannot be placed on the image)")
    geoms = shapely.from_wkb(wkb)
    keep = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
    geoms, values = geoms[keep], np.asarray(data[0])[keep]
    kinds = shapely.get_type_id(geoms)
    bad = ~np.isin(kinds, _POLYGONAL)
    if bad.any():
        name = geoms[bad][0].geom_type
        raise InputError(f"{where}: features that are not polygons: {int(bad.sum())} (e.g. a {name}); "
                         "only Polygon and MultiPolygon features can be burnt")
    name = layer if layer is not None else meta.get("layer_name")
    return Layer(path, name, field, geoms, values, str(meta["crs"]), int((~keep).sum()))


def value_texts(values: np.ndarray) -> list[str | None]:
    """Attribute values as text (stripped; a float holding an integer as that integer, ``2.0`` -> ``"2"``);
    None for null (None, NaN)."""
    out: list[str | None] = []
    for v in values.tolist():
        if v is None or (isinstance(v, float) and v != v):
            out.append(None)
        elif isinstance(v, float) and v.is_integer():
            out.append(str(int(v)))
        else:
            out.append(str(v).strip())
    return out


def _same_crs(a, b) -> bool:
    from rasterio.crs import CRS

    try:
        return CRS.from_user_input(a) == CRS.from_user_input(b)
    except Exception:  # noqa: BLE001 - not comparable: reproject
        return False


def reproject(geoms: np.ndarray, src_crs, dst_crs, where: str = "") -> np.ndarray:
    """``geoms`` (shapely, ``object [n]``) from ``src_crs`` to ``dst_crs`` (any of rasterio's CRS inputs),
    each vertex through PROJ (edges are not densified: fine for fields and zones, whose edges are short).
    :class:`InputError` (naming ``where``) when a vertex cannot be transformed."""
    import shapely
    from rasterio.warp import transform

    if _same_crs(src_crs, dst_crs) or len(geoms) == 0:
        return geoms

    def move(xy: np.ndarray) -> np.ndarray:
        if len(xy) == 0:
            return xy
        xs, ys = transform(src_crs, dst_crs, xy[:, 0], xy[:, 1])
        return np.column_stack([xs, ys])

    out = [shapely.transform(geoms[i : i + REPROJECT_CHUNK], move)
           for i in range(0, len(geoms), REPROJECT_CHUNK)]
    moved = np.concatenate(out)
    if not np.isfinite(shapely.bounds(moved)).all():
        raise InputError(f"{where}: some polygons cannot be reprojected to the image's CRS")
    return moved


def require_crs(info: RasterInfo, need: str) -> None:
    """:class:`InputError` unless the raster has a CRS: ``need`` says what needs it."""
    if info.georef is None or info.georef.crs is None:
        kind = "a PNG" if info.format == "png" else "it"
        raise InputError(f"{info.path}: {kind} has no CRS: {need} need a georeferenced GeoTIFF")


def strips(height: int, rows: int) -> Iterator[tuple[int, int]]:
    """``(y0, h)`` of the strips of ``rows`` rows that cover ``height`` rows, top to bottom."""
    for y0 in range(0, height, rows):
        yield y0, min(rows, height - y0)


class GridFeatures:
    """Polygons on a raster's grid, burnt strip by strip (see the module docstring).

    ``geoms``: shapely polygons in the raster's CRS (``object [n]``); ``info``: the raster's
    :class:`RasterInfo` (its georeferencing and width).
    """

    def __init__(self, geoms: np.ndarray, info: RasterInfo):
        import shapely
        from rasterio.transform import Affine

        self.geoms = geoms
        self.width = info.width
        self.height = info.height
        self.transform = Affine(*info.georef.transform)
        self.tree = shapely.STRtree(geoms)

    @classmethod
    def of(cls, layer: Layer, info: RasterInfo, need: str) -> GridFeatures:
        """``layer``'s polygons reprojected to the raster's CRS (:func:`require_crs` first, with ``need``)."""
        require_crs(info, need)
        return cls(reproject(layer.geoms, layer.crs, info.georef.crs, layer.path), info)

    def window_transform(self, y0: int):
        """The affine transform of the strip whose first row is ``y0``."""
        from rasterio.transform import Affine

        return self.transform @ Affine.translation(0, y0)

    def touching(self, y0: int, h: int) -> np.ndarray:
        """Indexes (ascending, ``int64 [k]``) of the features whose bounds touch rows ``y0 .. y0 + h``."""
        import shapely

        corners = [self.transform @ (x, y) for x in (0, self.width) for y in (y0, y0 + h)]
        xs, ys = zip(*corners)
        found = self.tree.query(shapely.box(min(xs), min(ys), max(xs), max(ys)))
        return np.sort(found)

    def burn(self, index: Iterable[int], values, out: np.ndarray, y0: int, add: bool = False) -> np.ndarray:
        """Burn the features ``index`` into ``out`` (the strip starting at row ``y0``: ``[h, W]`` of a dtype
        rasterio burns: uint8, int32, ...) with ``values`` (one per feature of ``index``, or one for all);
        ``add`` sums values where features overlap instead of the last one winning. Returns ``out``."""
        from rasterio.enums import MergeAlg
        from rasterio.features import rasterize

        index = np.asarray(index, np.int64)
        if len(index) == 0:
            return out
        vals = np.broadcast_to(np.asarray(values), (len(index),)).tolist()
        rasterize(zip(self.geoms[index], vals), out=out, transform=self.window_transform(y0),
                  merge_alg=MergeAlg.add if add else MergeAlg.replace)
        return out
