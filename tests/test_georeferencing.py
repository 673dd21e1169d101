"""From a GeoTIFF orthomosaic to georeferenced maps and field polygons, through the scripts a user runs:
generate_test_data.py, predict.py (an oracle model), vote.py, fill_hole.py, score.py and polygonize.py.
Every map must be a COG with the source's CRS, transform and size, so that it lies on the image in a GIS."""

from __future__ import annotations


import numpy as np
import pytest
import rasterio
import shapely

import fill_hole
import generate_test_data
import polygonize
import predict
import score
import vote
from _cog import cog_problems
from _oracle import STEP, oracle
from _small_data import fake_checkpoints
from cropmap.core.errors import InputError
from cropmap.core.layout import TEST_SOURCE_DIR
from cropmap.raster import iter_strips, raster_info
from test_geotiff import write_tif
from test_polygonize import components, read_fields

CRS = "EPSG:32633"
TRANSFORM = rasterio.Affine(0.5, 0.0, 350_000.0, 0.0, -0.5, 5_200_000.0)


def make_source(root, h=90, w=110):
    """image_3.tif in the layout: RGB + internal mask, red = label * STEP (for the oracle); its label beside it."""
    rng = np.random.default_rng(5)
    coarse = rng.integers(0, 4, (h // 9 + 1, w // 9 + 1))
    label = np.kron(coarse, np.ones((9, 9), np.int64))[:h, :w].astype(np.uint8)
    valid = np.ones((h, w), bool)
    valid[:20, :30] = False
    rgb = np.zeros((3, h, w), np.uint8)
    rgb[0] = label * STEP
    rgb[1] = rng.integers(0, 256, (h, w))
    rgb[:, ~valid] = 0
    folder = root / TEST_SOURCE_DIR
    folder.mkdir(parents=True)
    src = write_tif(folder / "image_3.tif", rgb, crs=CRS, transform=TRANSFORM, mask=np.where(valid, 255, 0).astype(np.uint8),
                    tiled=True, blockxsize=32, blockysize=32, compress="deflate")
    write_tif(folder / "image_3_label.tif", label[None], crs=CRS, transform=TRANSFORM)
    return src, label, valid


def read(path):
    return np.concatenate([s for _, s in iter_strips(path, 50)])


def assert_on_source(path, shape):
    with rasterio.open(path) as ds:
        assert ds.crs == rasterio.crs.CRS.from_user_input(CRS) and ds.transform == TRANSFORM
        assert (ds.height, ds.width) == shape and ds.nodata == 0
    assert cog_problems(path) == []


def test_geotiff_to_maps_and_polygons(tmp_path, monkeypatch):
    root = tmp_path / "data"
    src, label, valid = make_source(root)
    generate_test_data.main(generate_test_data.get_args_parser().parse_args(
        ["--data_root", str(root), "--images", "image_3", "--tile_size", "32", "--stride", "24", "--quiet"]))

    fake_checkpoints(monkeypatch, oracle, path="fake.pth")
    for name in ("a", "b"):
        predict.main(predict.get_args_parser().parse_args(
            ["--data_root", str(root), "--name", name, "--workers", "0", "--quiet", "--save_probs"]
            + (["--images", "image_3"] if name == "a" else ["--images", str(src)])))  # by name, or by path
    submit = root / "submit"
    want = np.where(valid, label, 0)
    for name in ("a", "b"):
        out = submit / f"image_3_predict_{name}.tif"  # the source is a GeoTIFF: so is its map
        assert_on_source(out, label.shape)
        np.testing.assert_array_equal(read(out), want)
        with rasterio.open(submit / f"image_3_predict_{name}_prob1.tif") as ds:  # probabilities: no nodata, no colours
            assert ds.nodata is None and ds.crs == rasterio.crs.CRS.from_user_input(CRS)
    assert all("preview" in p.name for p in submit.glob("*.png"))  # only the colour previews are PNGs

    vote.main(vote.get_args_parser().parse_args(["--data_root", str(root), "--images", "image_3", "--quiet", "--soft"]))
    final = submit / "image_3_predict.tif"
    assert_on_source(final, label.shape)
    fill_hole.main(fill_hole.get_args_parser().parse_args(["--data_root", str(root), "--images", "image_3", "--quiet"]))
    assert_on_source(final, label.shape)
    np.testing.assert_array_equal(read(final), want)  # the oracle's map has no enclosed holes of class 0 to fill
    res = score.main(score.get_args_parser().parse_args(["--data_root", str(root), "--images", "image_3", "--quiet"]))
    assert res["mIoU"] == 1.0 and np.asarray(res["confusion"]).sum() == valid.sum()

    # a PNG on request
    vote.main(vote.get_args_parser().parse_args(["--data_root", str(root), "--images", "image_3", "--quiet",
                                                 "--format", "png", "--inputs", str(submit / "image_3_predict_a.tif"),
                                                 "--output", str(submit / "v.png")]))
    assert raster_info(submit / "v.png").georef is None

    fields = tmp_path / "fields.gpkg"
    polygonize.main(polygonize.get_args_parser().parse_args(["--input", str(final), "--output", str(fields), "--quiet"]))
    meta, geoms, cols = read_fields(fields)
    assert rasterio.crs.CRS.from_user_input(meta["crs"]) == rasterio.crs.CRS.from_user_input(CRS)
    assert sorted(zip(cols["class_id"].tolist(), cols["area_px"].tolist())) == components(want, [1, 2, 3])
    np.testing.assert_allclose(cols["area_m2"], cols["area_px"] * 0.25)
    with rasterio.open(src) as ds:
        assert shapely.covers(shapely.box(*ds.bounds), geoms).all()  # the fields lie on the image


def test_maps_must_lie_on_their_source(tmp_path):
    root = tmp_path / "data"
    src, label, valid = make_source(root)
    moved = write_tif(tmp_path / "moved.tif", label[None], crs=CRS, transform=TRANSFORM @ rasterio.Affine.translation(0, 4))
    with pytest.raises(InputError, match="moved.tif: map transform"):
        fill_hole.main(fill_hole.get_args_parser().parse_args(
            ["--input", str(moved), "--source", str(src), "--output", str(tmp_path / "o.tif"), "--quiet"]))
    with pytest.raises(InputError, match="moved.tif: map transform"):
        score.main(score.get_args_parser().parse_args(
            ["--pred", str(moved), "--label", str(src.with_name("image_3_label.tif")), "--source", str(src), "--quiet"]))
    assert not (tmp_path / "o.tif").exists()
