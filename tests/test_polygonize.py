"""Polygons from class maps: the same regions as GDAL's polygonizer whatever the bands, exact areas,
coordinates in the map's CRS, GeoJSON and GeoPackage, pixel coordinates for PNG maps, bad inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
import shapely
from pyogrio.raw import read as read_vector
from rasterio.features import shapes

from cropmap.core.errors import InputError
from cropmap.maps.polygons import Polygonizer, polygonize_map, trace_band
from cropmap.raster import RasterInfo, open_writer, write_png
from cropmap.raster.geotiff import make_georef

ROOT = Path(__file__).resolve().parents[1]
TRANSFORM = (0.3, 0.0, 400_000.0, 0.0, -0.3, 2_830_000.0)


def gdal_regions(m: np.ndarray, classes) -> list[tuple[int, shapely.Geometry]]:
    """The reference: rasterio.features.shapes (GDAL), 4-connected, in pixel coordinates."""
    sel = np.isin(m, classes)
    return [(int(v), shapely.geometry.shape(g)) for g, v in shapes(m, mask=sel, connectivity=4)]


def banded(m: np.ndarray, classes, rows: int) -> list[tuple[int, shapely.Geometry]]:
    p = Polygonizer(len(m), classes)
    out = []
    for y in range(0, len(m), rows):
        g, c = p.add_band(y, m[y : y + rows])
        out += list(zip(c.tolist(), g))
    return out


def random_map(rng, h, w, k):
    if rng.random() < 0.3:  # speckle: many one-pixel regions, diagonal contacts, holes in holes
        return rng.integers(0, k, (h, w)).astype(np.uint8)
    cell = int(rng.integers(1, 6))
    m = np.kron(rng.integers(0, k, (h // cell + 1, w // cell + 1)), np.ones((cell, cell), np.int64))[:h, :w]
    return np.where(rng.random((h, w)) < 0.08, rng.integers(0, k, (h, w)), m).astype(np.uint8)


def test_regions_equal_gdal_whatever_the_bands():
    rng = np.random.default_rng(0)
    for _ in range(100):
        h, w = (int(v) for v in rng.integers(1, 45, 2))
        k = int(rng.integers(2, 5))
        m = random_map(rng, h, w, k)
        classes = sorted(set(rng.integers(0, k, 2).tolist()))
        rows = int(rng.integers(1, h + 1))
        ref, got = gdal_regions(m, classes), banded(m, classes, rows)
        # one polygon per region, never duplicated nor left cut at a band edge: same count, classes,
        # areas and bounds as GDAL, and the same ground covered, class by class
        key = lambda regs: sorted((c, round(g.area), g.bounds) for c, g in regs)  # noqa: E731
        assert key(got) == key(ref), (m, classes, rows)
        for c in classes:
            a = shapely.union_all([g for k_, g in ref if k_ == c])
            b = shapely.union_all([g for k_, g in got if k_ == c])
            assert shapely.symmetric_difference(a, b).area == 0
        assert all(g.geom_type == "Polygon" and g.is_valid for _, g in got)


def test_known_shapes():
    m = np.zeros((6, 8), np.uint8)
    m[1:5, 1:5] = 1
    m[2:4, 2:4] = 2  # a hole in the 1-region, filled with class 2
    m[0, 6] = m[1, 7] = 3  # diagonal neighbours: two regions under 4-connectivity
    g, c = trace_band(m, [1, 2, 3], y0=10)
    by = sorted(zip(c.tolist(), g), key=lambda t: (t[0], t[1].bounds))
    assert [k for k, _ in by] == [1, 2, 3, 3]
    ring, hole, a, b = (x for _, x in by)
    assert ring.area == 12 and len(ring.interiors) == 1 and ring.bounds == (1, 11, 5, 15)
    assert hole.equals(shapely.box(2, 12, 4, 14))
    assert a.equals(shapely.box(6, 10, 7, 11)) and b.equals(shapely.box(7, 11, 8, 12))


def write_map(path, m, transform=TRANSFORM, crs="EPSG:32648"):
    h, w = m.shape
    like = RasterInfo("src", w, h, 4, 8, "RGBA", "geotiff", make_georef(crs, transform))
    with open_writer(path, w, h, like=like) as wr:
        wr.write(m)
    return path


def components(m, classes):
    """(class, pixel count) of every 4-connected region, from OpenCV's labelling."""
    out = []
    for c in classes:
        n, _, stats, _ = cv2.connectedComponentsWithStats((m == c).view(np.uint8), connectivity=4)
        out += [(c, int(a)) for a in stats[1:, cv2.CC_STAT_AREA]]
    return sorted(out)


def read_fields(path):
    meta, _, wkb, data = read_vector(str(path))
    cols = dict(zip(meta["fields"], data))
    return meta, shapely.from_wkb(wkb), cols


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson"])
def test_geotiff_map_to_polygons(tmp_path, suffix):
    rng = np.random.default_rng(1)
    m = random_map(rng, 300, 530, 4)
    path = write_map(tmp_path / "m.tif", m)
    out = tmp_path / f"fields{suffix}"
    res = polygonize_map(path, out, band_rows=64, progress=False, log=lambda s: None)
    meta, geoms, cols = read_fields(out)
    assert rasterio.crs.CRS.from_user_input(meta["crs"]).to_epsg() == 32648
    assert [f for f in meta["fields"] if "class" in f] == ["class_id", "class_name"]
    want = components(m, [1, 2, 3])
    assert res["polygons"] == len(geoms) == len(want)
    assert sorted(zip(cols["class_id"].tolist(), cols["area_px"].tolist())) == want
    np.testing.assert_allclose(cols["area_m2"], cols["area_px"] * 0.09)
    np.testing.assert_allclose(shapely.area(geoms), cols["area_m2"], rtol=1e-6)  # coordinates ~1e6: float error
    assert set(cols["class_name"]) == {"tobacco", "corn", "coix"}
    x0, y1 = TRANSFORM[2], TRANSFORM[5]
    bounds = shapely.box(x0, y1 - 300 * 0.3, x0 + 530 * 0.3, y1)
    assert shapely.covers(bounds, geoms).all()  # every polygon lies on the map
    assert sorted(tmp_path.iterdir()) == sorted([path, out])  # no temporaries left


def test_min_area_classes_simplify(tmp_path):
    m = np.zeros((60, 80), np.uint8)
    m[5:25, 5:45] = 2  # 800 px = 72 m²
    m[30:33, 50:53] = 2  # 9 px
    m[40:50, 10:20] = 1
    path = write_map(tmp_path / "m.tif", m)
    out = tmp_path / "f.gpkg"
    polygonize_map(path, out, classes=[2], min_area=10.0, progress=False, log=lambda s: None)
    _, geoms, cols = read_fields(out)
    assert cols["class_id"].tolist() == [2] and cols["area_px"].tolist() == [800]
    m2 = np.zeros((60, 80), np.uint8)
    m2[10:50, 10:50] = 1
    m2[10:30, 30:50] = 0  # an L: 6 corners
    stair = write_map(tmp_path / "s.tif", np.where(np.add.outer(np.arange(60), np.arange(80)) < 70, m2, 0))
    polygonize_map(stair, out, simplify=0.0, progress=False, log=lambda s: None)
    exact = read_fields(out)[1][0]
    polygonize_map(stair, out, simplify=0.5, progress=False, log=lambda s: None)
    simple = read_fields(out)[1][0]
    assert len(simple.exterior.coords) < len(exact.exterior.coords)
    assert shapely.hausdorff_distance(simple, exact) <= 0.5 + 1e-9


def test_png_map_gives_pixel_coordinates(tmp_path):
    m = np.zeros((30, 40), np.uint8)
    m[2:6, 3:9] = 3
    write_png(tmp_path / "m.png", m)
    notes = []
    res = polygonize_map(tmp_path / "m.png", tmp_path / "f.gpkg", progress=False, log=notes.append)
    meta, geoms, cols = read_fields(tmp_path / "f.gpkg")
    assert res["pixel_coordinates"] and meta["crs"] is None and "area_m2" not in cols
    assert len(notes) == 1 and "pixel coordinates" in notes[0]
    assert geoms[0].equals(shapely.box(3, 2, 9, 6)) and cols["area_px"].tolist() == [24]


def test_geographic_crs_areas_are_equal_area(tmp_path):
    # 0.001 degree pixels at 45 N: a 100 x 200 pixel region is 0.1 x 0.2 degrees
    m = np.zeros((300, 300), np.uint8)
    m[100:200, 50:250] = 1
    path = write_map(tmp_path / "geo.tif", m, transform=(0.001, 0.0, 10.0, 0.0, -0.001, 45.15), crs="EPSG:4326")
    polygonize_map(path, tmp_path / "f.gpkg", progress=False, log=lambda s: None)
    _, _, cols = read_fields(tmp_path / "f.gpkg")
    # on the authalic sphere (R = 6371007 m): R² Δλ (sin φ1 - sin φ0), latitudes 45.05 .. 45.15 (near 45 N)
    r = 6_371_007.0
    want = r * r * np.radians(0.2) * (np.sin(np.radians(45.05)) - np.sin(np.radians(44.95)))
    assert abs(cols["area_m2"][0] / want - 1) < 5e-3


def _cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "polygonize.py"), "--quiet", *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_cli_and_bad_inputs(tmp_path):
    m = np.zeros((20, 20), np.uint8)
    m[3:9, 3:9] = 1
    path = write_map(tmp_path / "m.tif", m)
    r = _cli("--input", str(path), "--output", str(tmp_path / "f.gpkg"))
    assert r.returncode == 0 and "1 polygons (EPSG:32648)" in r.stdout, r.stderr
    bad = m.copy()
    bad[0, 0] = 7
    write_map(tmp_path / "bad.tif", bad)
    for args, text in (
        (["--input", str(path), "--output", str(tmp_path / "f.shp")], "unsupported output type '.shp'"),
        (["--input", str(path), "--output", str(tmp_path / "g.gpkg"), "--classes", "1,4"], "--classes: 4 outside 0..3"),
        (["--input", str(tmp_path / "bad.tif"), "--output", str(tmp_path / "g.gpkg")], "map value 7 outside 0..3"),
        (["--input", str(tmp_path / "none.tif"), "--output", str(tmp_path / "g.gpkg")], "none.tif: file not found"),
    ):
        r = _cli(*args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and text in r.stderr, r.stderr
    assert not (tmp_path / "g.gpkg").exists() and not list(tmp_path.glob(".*.part"))
    with pytest.raises(InputError):
        polygonize_map(path, tmp_path / "x.txt", progress=False)
