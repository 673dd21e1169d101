"""GeoTIFF in and out: reading every layout in strips and windows, validity from alpha / mask / nodata,
label georeferencing checks, bad inputs, and maps written as COGs that keep the source's CRS and transform."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio

from _cog import cog_problems
from cropmap.core.errors import InputError
from cropmap.raster import (RasterInfo, check_image, check_label, check_label_values, check_map, iter_row_windows,
                            iter_strips, open_writer, raster_info, read_png, write_png)
from cropmap.raster.geotiff import make_georef
from cropmap.core.classes import PALETTE

ROOT = Path(__file__).resolve().parents[1]
CRS = "EPSG:32648"
TRANSFORM = rasterio.Affine(0.3, 0.0, 400_000.0, 0.0, -0.3, 2_830_000.0)


def write_tif(path, bands: np.ndarray, crs=CRS, transform=TRANSFORM, **profile):
    """Write ``bands`` (``[C, H, W]``) with rasterio directly (not the project's writer)."""
    c, h, w = bands.shape
    opts = dict(driver="GTiff", width=w, height=h, count=c, dtype=bands.dtype, crs=crs, transform=transform)
    opts.update(profile)
    mask = opts.pop("mask", None)
    colorinterp = opts.pop("colorinterp", None)
    with warnings.catch_warnings(), rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", **opts) as ds:
            ds.write(bands)
            if colorinterp is not None:
                ds.colorinterp = colorinterp
            if mask is not None:
                ds.write_mask(mask)
    return Path(path)


def image(h=300, w=200, seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(1, 256, (3, h, w), dtype=np.uint8)
    valid = np.ones((h, w), bool)
    valid[: h // 4, : w // 3] = False  # a no-data corner
    valid[h // 2 : h // 2 + 7, w // 2 : w // 2 + 9] = False  # a hole
    rgb[:, ~valid] = 0
    return rgb, valid


def read_all(path, rows=37, rgba=False):
    return np.concatenate([s for _, s in iter_strips(path, rows, rgba=rgba)])


LAYOUTS = [
    dict(tiled=True, blockxsize=64, blockysize=64, compress="deflate"),
    dict(tiled=True, blockxsize=128, blockysize=32, compress="lzw", predictor=2),
    dict(tiled=False, blockysize=5, compress="zstd"),  # striped
    dict(tiled=False, compress="packbits", bigtiff="yes"),
    dict(tiled=True, blockxsize=16, blockysize=16, compress="none", bigtiff="yes"),
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda d: "-".join(f"{v}" for v in d.values()))
def test_read_layouts_with_internal_mask(tmp_path, layout):
    rgb, valid = image()
    p = write_tif(tmp_path / "a.tif", rgb, mask=np.where(valid, 255, 0).astype(np.uint8), **layout)
    info = raster_info(p)
    assert (info.height, info.width, info.channels, info.bit_depth, info.format) == (300, 200, 3, 8, "geotiff")
    assert info.georef.crs == rasterio.crs.CRS.from_user_input(CRS)
    assert info.georef.transform == tuple(TRANSFORM)[:6]
    got = read_all(p, rgba=True)
    np.testing.assert_array_equal(got[..., :3], rgb.transpose(1, 2, 0))
    np.testing.assert_array_equal(got[..., 3], np.where(valid, 255, 0))
    np.testing.assert_array_equal(read_all(p, rows=300), rgb.transpose(1, 2, 0))  # no alpha asked: RGB
    # windows may overlap, skip rows and run past the bottom (padded with no-data)
    for y, win in iter_row_windows(p, [0, 5, 40, 41, 200, 290], 64, rgba=True):
        want = np.zeros((64, 200, 4), np.uint8)
        part = got[y : y + 64]
        want[: len(part)] = part
        np.testing.assert_array_equal(win, want)


def test_validity_from_alpha_band_nodata_or_nothing(tmp_path):
    rgb, valid = image(60, 50, seed=1)
    alpha = np.where(valid, 255, 0).astype(np.uint8)
    alpha[0, -1] = 128  # partly transparent: no-data, as in a PNG
    from rasterio.enums import ColorInterp as CI

    marked = write_tif(tmp_path / "alpha.tif", np.concatenate([rgb, alpha[None]]), photometric="rgb",
                       colorinterp=[CI.red, CI.green, CI.blue, CI.alpha], tiled=True, blockxsize=16, blockysize=16)
    assert raster_info(marked).channels == 4
    np.testing.assert_array_equal(read_all(marked)[..., 3], alpha)

    nodata = write_tif(tmp_path / "nodata.tif", rgb, nodata=0)
    rgb2 = rgb.copy()
    rgb2[0, 40, 40] = 0  # a valid pixel with one band at the nodata value stays valid
    assert valid[40, 40]
    nodata2 = write_tif(tmp_path / "nodata2.tif", rgb2, nodata=0)
    for p, r in ((nodata, rgb), (nodata2, rgb2)):
        got = read_all(p, rgba=True)
        np.testing.assert_array_equal(got[..., 3], np.where(valid, 255, 0))
        np.testing.assert_array_equal(got[..., :3], r.transpose(1, 2, 0))

    plain = write_tif(tmp_path / "plain.tif", rgb)
    assert (read_all(plain, rgba=True)[..., 3] == 255).all()
    # four bands, none marked alpha, no mask: the fourth is the alpha (as in an RGBA PNG)
    four = write_tif(tmp_path / "four.tif", np.concatenate([rgb, alpha[None]]), photometric="rgb", alpha="unspecified")
    np.testing.assert_array_equal(read_all(four)[..., 3], alpha)
    # ... but with a nodata value, validity comes from it and the fourth band (e.g. near-infrared) is not read
    nir = write_tif(tmp_path / "nir.tif", np.concatenate([rgb, np.full_like(alpha, 7)[None]]), nodata=0,
                    photometric="rgb", alpha="unspecified")
    assert raster_info(nir).channels == 3
    np.testing.assert_array_equal(read_all(nir, rgba=True)[..., 3], np.where(valid, 255, 0))


def test_tiles_from_geotiff_equal_tiles_from_png(tmp_path):
    """make_synthetic_data.py --format tif: same pixels as the PNG set, in a projected CRS with a mask;
    generate_train_data.py cuts identical tiles (and tiles.csv) from either."""
    for fmt in ("png", "tif"):
        r = subprocess.run([sys.executable, "make_synthetic_data.py", "--data_root", str(tmp_path / fmt), "--size", "500",
                            "--images", "image_1", "--format", fmt, "--quiet"], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    src = "jingwei_round1_train_20190619"
    tif, png = tmp_path / "tif" / src / "image_1.tif", tmp_path / "png" / src / "image_1.png"
    info = raster_info(tif)
    assert info.georef.crs.to_epsg() == 32648 and info.georef.transform[0] == 0.3 and info.georef.transform[4] == -0.3
    with rasterio.open(tif) as ds:
        assert ds.count == 3 and ds.mask_flag_enums[0] == [rasterio.enums.MaskFlags.per_dataset]
    np.testing.assert_array_equal(read_all(tif, rgba=True), read_png(png))
    np.testing.assert_array_equal(read_all(tif.with_name("image_1_label.tif")), read_png(png.with_name("image_1_label.png")))
    assert cog_problems(tif) == []
    for fmt in ("png", "tif"):
        r = subprocess.run([sys.executable, "generate_train_data.py", "--data_root", str(tmp_path / fmt), "--images",
                            "image_1", "--tile_size", "128", "--quiet"], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    a, b = tmp_path / "png" / "train", tmp_path / "tif" / "train"
    assert (a / "tiles.csv").read_text() == (b / "tiles.csv").read_text()
    names = sorted(p.name for p in (a / "data").iterdir())
    assert names and names == sorted(p.name for p in (b / "data").iterdir())
    for sub in ("data", "label"):
        for n in names:
            np.testing.assert_array_equal(read_png(a / sub / n), read_png(b / sub / n))


def like_info(h, w, transform=TRANSFORM, crs=CRS):
    return RasterInfo("source.tif", w, h, 4, 8, "RGBA", "geotiff", make_georef(crs, tuple(transform)[:6]))


@pytest.mark.parametrize("h,w", [(1100, 700), (40, 30)])
def test_map_writer_keeps_georeferencing_as_cog(tmp_path, h, w):
    rng = np.random.default_rng(2)
    m = rng.integers(0, 4, (h, w), dtype=np.uint8)
    out = tmp_path / "image_3_predict.tif"
    with open_writer(out, w, h, like=like_info(h, w)) as wr:
        for y in range(0, h, 333):  # strips not aligned with the 512-pixel tiles
            wr.write(m[y : y + 333])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image_3_predict.tif"]  # no temporaries, no .aux.xml
    np.testing.assert_array_equal(read_all(out), m)
    with rasterio.open(out) as ds:
        assert ds.crs == rasterio.crs.CRS.from_user_input(CRS) and ds.transform == TRANSFORM
        assert ds.nodata == 0 and ds.profile["tiled"] and ds.compression.name == "deflate"
        cmap = ds.colormap(1)
        for c in range(1, 4):
            assert cmap[c][:3] == tuple(PALETTE[c])
        if h > 512:
            assert ds.overviews(1)
    assert cog_problems(out) == []
    assert check_map(out, like_info(h, w)).georef.differs(like_info(h, w).georef) is None


def test_cog_check_catches_a_plain_tiff(tmp_path):
    p = write_tif(tmp_path / "plain.tif", np.zeros((1, 1100, 700), np.uint8), tiled=True, blockxsize=256, blockysize=256)
    assert cog_problems(p)


def test_writer_interrupted_leaves_nothing(tmp_path):
    out = tmp_path / "m.tif"
    with pytest.raises(RuntimeError):
        with open_writer(out, 50, 60, like=like_info(60, 50)) as wr:
            wr.write(np.zeros((30, 50), np.uint8))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_label_must_lie_on_its_image(tmp_path):
    rgb, _ = image(40, 30)
    img = check_image(write_tif(tmp_path / "a.tif", rgb))
    lab = np.zeros((1, 40, 30), np.uint8)
    check_label(write_tif(tmp_path / "ok_label.tif", lab), img)
    check_label(write_tif(tmp_path / "nogeo_label.tif", lab, crs=None, transform=rasterio.Affine.identity()), img)
    write_png(tmp_path / "png_label.png", lab[0])
    check_label(tmp_path / "png_label.png", img)  # a label without georeferencing: size only
    shifted = write_tif(tmp_path / "shift_label.tif", lab, transform=TRANSFORM @ rasterio.Affine.translation(3, 0))
    with pytest.raises(InputError, match="shift_label.tif: label transform"):
        check_label(shifted, img)
    other = write_tif(tmp_path / "crs_label.tif", lab, crs="EPSG:32649")
    with pytest.raises(InputError, match="crs_label.tif: label CRS EPSG:32649 differs"):
        check_label(other, img)
    small = write_tif(tmp_path / "small_label.tif", np.zeros((1, 39, 30), np.uint8))
    with pytest.raises(InputError, match="size 39x30 differs"):
        check_label(small, img)
    bad = lab.copy()
    bad[0, 3, 3] = 9
    with pytest.raises(InputError, match="outside 0..3"):
        check_label_values(write_tif(tmp_path / "v_label.tif", bad), 4)


def _cli(script, *args):
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=ROOT)


def test_bad_geotiffs_are_one_line_errors(tmp_path):
    rgb, _ = image(40, 30)
    write_tif(tmp_path / "five.tif", np.concatenate([rgb, rgb[:2]]))
    write_tif(tmp_path / "gray.tif", rgb[:1])
    write_tif(tmp_path / "u16.tif", rgb.astype(np.uint16) * 200)
    write_tif(tmp_path / "f32.tif", rgb.astype(np.float32))
    (tmp_path / "junk.tif").write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    write_png(tmp_path / "png_inside.tif", rgb.transpose(1, 2, 0))
    good = write_tif(tmp_path / "good.tif", rgb, tiled=True, blockxsize=16, blockysize=16, compress="deflate")
    data = good.read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    want = {"five.tif": "5-band", "gray.tif": "grayscale", "u16.tif": "bit depth 16", "f32.tif": "data type float32",
            "junk.tif": "cannot read as GeoTIFF", "png_inside.tif": "not a GeoTIFF (GDAL reads it as PNG)",
            "cut.tif": "cannot decode GeoTIFF at row", "missing.tif": "file not found"}
    for name, text in want.items():
        r = _cli("generate_test_data.py", "--data_root", str(tmp_path / "out"), "--images", str(tmp_path / name),
                 "--quiet")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and name in r.stderr and text in r.stderr, r.stderr
