"""Crop areas: hand counts in a projected and a geographic CRS, no-data from the source, zones (reprojected,
overlapping, split over several features) and the "(outside zones)" row, the GeoPackage, the command line."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
from pyogrio.raw import read as read_vector
from pyogrio.raw import write as write_vector
from rasterio.warp import transform_geom

from cropmap.core.errors import InputError
from cropmap.maps.areas import OUTSIDE, areas
from cropmap.raster import RasterInfo, open_writer, write_png
from cropmap.raster.geotiff import make_georef

ROOT = Path(__file__).resolve().parents[1]
UTM = "EPSG:32648"
TRANSFORM = (0.5, 0.0, 400_000.0, 0.0, -0.5, 2_830_000.0)  # 0.25 m² pixels
H, W = 40, 60


def write_map(path, m, transform=TRANSFORM, crs=UTM, channels=1):
    h, w = m.shape[:2]
    like = RasterInfo("src", w, h, 4, 8, "RGBA", "geotiff", make_georef(crs, transform))
    with open_writer(path, w, h, channels, like=like) as wr:
        wr.write(m)
    return path


def a_map(rng):
    m = rng.integers(0, 4, (H, W)).astype(np.uint8)
    m[:5, :7] = 255  # ignored (e.g. a label's unlabelled pixels): never counted
    return m


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def quiet(*_):
    pass


def test_projected_hand_counts_and_source_nodata(tmp_path):
    rng = np.random.default_rng(0)
    m = a_map(rng)
    path = write_map(tmp_path / "m.tif", m)
    res = areas(path, tmp_path / "a.csv", progress=False, log=quiet, rows=7)
    rows = read_csv(tmp_path / "a.csv")
    assert list(rows[0]) == ["class_id", "class_name", "pixels", "hectares", "share"]
    counts = np.bincount(m[m != 255], minlength=4)
    assert [int(r["pixels"]) for r in rows] == counts.tolist()
    assert [r["class_name"] for r in rows] == ["other", "tobacco", "corn", "coix"]
    np.testing.assert_allclose([float(r["hectares"]) for r in rows], counts * 0.25 / 1e4)
    np.testing.assert_allclose([float(r["share"]) for r in rows], counts / counts.sum(), atol=1e-6)
    assert res["excluded"] == 35
    # with the source: its no-data pixels (alpha 0) are left out, whatever the map holds there
    alpha = np.full((H, W), 255, np.uint8)
    alpha[20:, 50:] = 0
    src = np.zeros((H, W, 4), np.uint8)
    src[..., 3] = alpha
    write_map(tmp_path / "src.tif", src, channels=4)
    areas(path, tmp_path / "b.csv", source=tmp_path / "src.tif", progress=False, log=quiet)
    keep = (m != 255) & (alpha == 255)
    assert [int(r["pixels"]) for r in read_csv(tmp_path / "b.csv")] == np.bincount(m[keep], minlength=4).tolist()


def test_geographic_areas_are_equal_area(tmp_path):
    # 0.001 degree pixels from 45.15 N down: each row's pixels have one area, from the authalic sphere
    transform = (0.001, 0.0, 10.0, 0.0, -0.001, 45.15)
    m = np.zeros((300, 200), np.uint8)
    m[100:200, 50:150] = 1
    m[0:50, :] = 2
    areas(write_map(tmp_path / "g.tif", m, transform, "EPSG:4326"), tmp_path / "a.csv", progress=False, log=quiet,
          rows=64)
    got = {int(r["class_id"]): float(r["hectares"]) for r in read_csv(tmp_path / "a.csv")}
    r = 6_371_007.0
    lat = 45.15 - 0.001 * np.arange(301)
    row_m2 = r * r * np.radians(0.001) * (np.sin(np.radians(lat[:-1])) - np.sin(np.radians(lat[1:])))
    want = {c: float((np.bincount(np.nonzero(m == c)[0], minlength=300) * row_m2).sum() / 1e4) for c in range(3)}
    for c in range(3):
        assert got[c] == pytest.approx(want[c], rel=3e-3)
    assert got[2] / got[1] == pytest.approx(want[2] / want[1], rel=1e-4)  # latitude matters, consistently


def zone_file(path, polys, names, crs=UTM):
    write_vector(str(path), shapely.to_wkb(np.array(polys, dtype=object)),
                 field_data=[np.array(names, dtype=object)], fields=["name"], crs=crs, geometry_type="Polygon")
    return path


def world_box(x0, y0, x1, y1):
    """A box given in pixel coordinates (x = column, y = row), in the map's CRS."""
    a, _, c, _, e, f = TRANSFORM
    return shapely.box(c + a * x0, f + e * y1, c + a * x1, f + e * y0)


def test_zones_outside_and_overlaps(tmp_path):
    rng = np.random.default_rng(1)
    m = a_map(rng)
    path = write_map(tmp_path / "m.tif", m)
    # north: two features; south: one; east overlaps north; (pixel coordinates, edges between centres)
    boxes = {"north": [(0.2, 0.2, 20.2, 15.2), (30.2, 0.2, 40.2, 10.2)], "south": [(0.2, 25.2, 59.9, 39.9)],
             "east": [(35.2, 5.2, 59.9, 20.2)]}
    polys, names = [], []
    for name, bs in boxes.items():
        for b in bs:
            lonlat = transform_geom(UTM, "EPSG:4326", shapely.geometry.mapping(world_box(*b)), precision=-1)
            polys.append(shapely.geometry.shape(lonlat))  # zones in another CRS: reprojected to the map's
            names.append(name)
    zones = zone_file(tmp_path / "z.gpkg", polys, names, crs="EPSG:4326")
    res = areas(path, tmp_path / "a.csv", zones=zones, zone_field="name", gpkg=tmp_path / "a.gpkg", progress=False,
                log=quiet, rows=9)
    rows = read_csv(tmp_path / "a.csv")
    assert list(rows[0]) == ["zone", "class_id", "class_name", "pixels", "hectares", "share"]
    assert [r["zone"] for r in rows[::4]] == ["north", "south", "east", OUTSIDE]
    yy, xx = np.mgrid[0:H, 0:W] + 0.5  # pixel centres
    inside = {n: np.any([(xx > b[0]) & (xx < b[2]) & (yy > b[1]) & (yy < b[3]) for b in bs], axis=0)
              for n, bs in boxes.items()}
    inside[OUTSIDE] = ~np.any(list(inside.values()), axis=0)
    valid = m != 255
    for z, zone in enumerate(["north", "south", "east", OUTSIDE]):
        want = np.bincount(m[valid & inside[zone]], minlength=4)
        got = [int(r["pixels"]) for r in rows[4 * z : 4 * z + 4]]
        assert got == want.tolist(), zone
        np.testing.assert_allclose([float(r["hectares"]) for r in rows[4 * z : 4 * z + 4]], want * 0.25e-4)
    assert np.count_nonzero(inside["north"] & inside["east"]) > 0  # counted in both
    meta, _, wkb, data = read_vector(str(tmp_path / "a.gpkg"))
    cols = dict(zip(meta["fields"], data))
    assert list(meta["fields"]) == ["name", "valid_px", "valid_ha", "other_ha", "tobacco_ha", "corn_ha", "coix_ha"]
    assert cols["name"].tolist() == ["north", "south", "east"]
    geoms = shapely.from_wkb(wkb)
    assert [len(shapely.get_parts(g)) for g in geoms] == [2, 1, 1]
    np.testing.assert_allclose(cols["corn_ha"], res["m2"][:3, 2] / 1e4)
    assert cols["valid_px"].tolist() == res["pixels"][:3].sum(axis=1).tolist()


def test_areas_command_and_bad_input(tmp_path):
    rng = np.random.default_rng(2)
    m = a_map(rng) % 3
    path = write_map(tmp_path / "m.tif", m)
    zones = zone_file(tmp_path / "z.gpkg", [world_box(0.2, 0.2, 30.2, 30.2)], ["farm"])

    def run(*args):
        return subprocess.run([sys.executable, str(ROOT / "areas.py"), "--quiet", *args], capture_output=True,
                              text=True, cwd=ROOT)

    r = run("--map", str(path), "--zones", str(zones), "--zone_field", "name", "--class_names", "bare,rice,maize",
            "--output", str(tmp_path / "a.csv"), "--gpkg", str(tmp_path / "a.gpkg"))
    assert r.returncode == 0, r.stderr
    rows = read_csv(tmp_path / "a.csv")
    assert [r_["class_name"] for r_ in rows] == ["bare", "rice", "maize"] * 2
    assert sum(int(r_["pixels"]) for r_ in rows) == np.count_nonzero(m != 255)
    bad = m.copy()
    bad[10, 10] = 3
    write_map(tmp_path / "bad.tif", bad)
    write_png(tmp_path / "m.png", m)
    out = ["--output", str(tmp_path / "b.csv")]
    for args, text in (
        (["--map", str(path), "--gpkg", str(tmp_path / "b.gpkg"), *out], "--gpkg needs --zones"),
        (["--map", str(path), "--zones", str(zones), *out], "--zones needs --zone_field"),
        (["--map", str(path), "--zones", str(zones), "--zone_field", "id", *out], "no field 'id' (fields: name)"),
        (["--map", str(path), "--num_classes", "4", "--class_names", "a,b,c", *out], "--num_classes 4 differs"),
        (["--map", str(tmp_path / "bad.tif"), "--num_classes", "3", *out], "map value 3 outside 0..2"),
        (["--map", str(tmp_path / "m.png"), *out], "m.png: a PNG has no CRS: areas in hectares need"),
        (["--map", str(tmp_path / "none.tif"), *out], "none.tif: file not found"),
    ):
        r = run(*args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and text in r.stderr, (args, r.stderr)
    assert not (tmp_path / "b.csv").exists() and not (tmp_path / "b.gpkg").exists()
    assert not list(tmp_path.glob(".*.part"))
    with pytest.raises(InputError, match="name it .gpkg"):
        areas(path, tmp_path / "c.csv", zones=zones, zone_field="name", gpkg=tmp_path / "c.shp")
