"""Labels from field polygons: strip-wise burning identical to rasterio's whole-image rasterize, reprojection,
holes and multipolygons, names and their errors, overlaps, sparse surveys, the label GeoTIFF, tiling with
--labels identical to tiling its raster label, PNG sources refused, the command line."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from pyogrio.raw import write as write_vector
from rasterio.features import rasterize
from rasterio.warp import transform_geom

from _cog import cog_problems
from cropmap.core.errors import InputError
from cropmap.data.vector_labels import LabelOptions, VectorLabels, burn_labels, rasterize_to
from cropmap.raster import RasterInfo, open_writer, write_png
from cropmap.raster.geotiff import make_georef
from cropmap.raster.vectors import GridFeatures

ROOT = Path(__file__).resolve().parents[1]
UTM = "EPSG:32648"
TRANSFORM = (2.0, 0.0, 500_000.0, 0.0, -2.0, 2_800_000.0)  # 2 m pixels
H, W = 45, 61


def info_of(h=H, w=W, transform=TRANSFORM, crs=UTM) -> RasterInfo:
    return RasterInfo("img.tif", w, h, 3, 8, "RGB", "geotiff", make_georef(crs, transform))


def write_image(path, h=H, w=W, alpha=None, transform=TRANSFORM, crs=UTM):
    """A GeoTIFF source (RGB, or RGBA with ``alpha``): its pixels do not matter to the labels."""
    rgba = np.full((h, w, 4), 120, np.uint8)
    rgba[..., 3] = 255 if alpha is None else alpha
    with open_writer(path, w, h, 4 if alpha is not None else 3, like=info_of(h, w, transform, crs)) as wr:
        wr.write(rgba if alpha is not None else rgba[..., :3])
    return path


def to_world(geom, transform=TRANSFORM):
    """A shape drawn in pixel coordinates (x = column, y = row) -> the image's CRS."""
    a, b, c, d, e, f = transform
    return shapely.affinity.affine_transform(geom, [a, b, d, e, c, f])


def write_polygons(path, geoms, values, crs=UTM, field="crop", driver=None):
    geoms = np.array(geoms, dtype=object)
    values = np.asarray(values, dtype=object if isinstance(values[0], str) else None)
    kind = "MultiPolygon" if any(g.geom_type == "MultiPolygon" for g in geoms) else "Polygon"
    write_vector(str(path), shapely.to_wkb(geoms), field_data=[values], fields=[field], crs=crs,
                 geometry_type=kind, driver=driver)
    return path


def random_polygons(rng, n, h=H, w=W):
    """Star-shaped polygons (some with a hole), in pixel coordinates, vertices off the pixel centres' lattice."""
    out = []
    for _ in range(n):
        cx, cy = rng.uniform(-5, w + 5), rng.uniform(-5, h + 5)
        k = int(rng.integers(3, 10))
        ang = (np.arange(k) + rng.uniform(0, 0.9, k)) * 2 * np.pi / k  # star-shaped about the centre
        r = rng.uniform(2, 14, k)
        ring = np.column_stack([r * np.cos(ang), r * np.sin(ang)])
        hole = [ring[::-1] * 0.4 + (cx + 0.013, cy + 0.007)] if rng.random() < 0.3 else None
        out.append(shapely.Polygon(ring + (cx + 0.013, cy + 0.007), hole))
    return out


def burn_in_strips(grid, classes, rows, background=False):
    parts = [burn_labels(grid, classes, y, min(rows, grid.height - y), background) for y in range(0, grid.height, rows)]
    return np.concatenate([p[0] for p in parts]), sum(p[1] for p in parts)


def whole_image(geoms, classes, transform=TRANSFORM, h=H, w=W):
    """The reference: rasterio.features.rasterize on the whole image, once per class; 255 where classes meet."""
    label = np.full((h, w), 255, np.uint8)
    hits = np.zeros((h, w), np.int64)
    for c in np.unique(classes):
        m = rasterize([(g, 1) for g, k in zip(geoms, classes) if k == c], out_shape=(h, w),
                      transform=rasterio.Affine(*transform), fill=0, dtype="uint8").astype(bool)
        hits += m
        label[m] = c
    label[hits > 1] = 255
    return label, int((hits > 1).sum())


def test_strips_equal_whole_image_rasterize():
    rng = np.random.default_rng(0)
    info = info_of()
    for trial in range(12):
        geoms = [to_world(g) for g in random_polygons(rng, int(rng.integers(1, 25)))]
        classes = rng.integers(0, 4, len(geoms)).astype(np.uint8)
        grid = GridFeatures(np.array(geoms, dtype=object), info)
        want, want_overlap = whole_image(geoms, classes)
        for rows in (1, 7, 16, H):
            got, overlap = burn_in_strips(grid, classes, rows)
            np.testing.assert_array_equal(got, want, err_msg=f"trial {trial}, {rows} rows")
            assert overlap == want_overlap
    # polygons that do not overlap: the very array of one rasterize call over the whole image
    cells = [shapely.box(x + 0.3, y + 0.2, x + 9.1, y + 8.7) for x in range(0, W, 10) for y in range(0, H, 9)]
    geoms = [to_world(g) for g in cells]
    classes = rng.integers(0, 4, len(geoms)).astype(np.uint8)
    want = rasterize(list(zip(geoms, classes.tolist())), out_shape=(H, W), transform=rasterio.Affine(*TRANSFORM),
                     fill=255, dtype="uint8")
    got, overlap = burn_in_strips(GridFeatures(np.array(geoms, dtype=object), info), classes, 5)
    np.testing.assert_array_equal(got, want)
    assert overlap == 0


def test_holes_multipolygons_overlaps_and_background():
    shell = shapely.box(2, 2, 22, 22).difference(shapely.box(7, 7, 17, 17))  # 400 - 100 px, a 10x10 hole
    island = shapely.box(10, 10, 14, 14)  # 16 px of class 3 inside the hole
    two = shapely.MultiPolygon([shapely.box(30, 2, 35, 7), shapely.box(40, 2, 45, 4)])  # 25 + 10 px
    a, b = shapely.box(30, 20, 40, 30), shapely.box(35, 25, 45, 35)  # classes 1 and 2 overlap on 5x5 px
    same = shapely.box(38, 28, 42, 32)  # class 2 again: overlaps b, no conflict; overlaps a on 2x2 px (already)
    geoms = np.array([to_world(g) for g in (shell, island, two, a, b, same)], dtype=object)
    classes = np.array([1, 3, 2, 1, 2, 2], np.uint8)
    grid = GridFeatures(geoms, info_of())
    label, overlap = burn_in_strips(grid, classes, 6)
    assert np.count_nonzero(label == 3) == 16 and label[12, 12] == 3
    assert label[8, 8] == 255 and label[3, 3] == 1
    assert overlap == 25 and label[27, 37] == 255
    want = {1: 300 + 100 - 25, 2: 35 + 100 - 25, 3: 16}
    assert {c: int(np.count_nonzero(label == c)) for c in (1, 2, 3)} == want
    assert np.count_nonzero(label == 255) == H * W - sum(want.values())
    bg, overlap_bg = burn_in_strips(grid, classes, 6, background=True)
    assert overlap_bg == 25 and np.count_nonzero(bg == 255) == 25  # only the conflicts stay ignored
    assert bg[8, 8] == 0 and np.count_nonzero(bg == 0) == H * W - sum(want.values()) - 25


@pytest.mark.parametrize("suffix, driver", [(".gpkg", None), (".shp", None), (".fgb", None), (".geojson", None)])
def test_polygons_in_4326_over_a_utm_image(tmp_path, suffix, driver):
    rng = np.random.default_rng(3)
    geoms = [to_world(g) for g in random_polygons(rng, 15)]
    classes = rng.integers(1, 4, len(geoms))
    lonlat = [shapely.geometry.shape(transform_geom(UTM, "EPSG:4326", shapely.geometry.mapping(g), precision=-1))
              for g in geoms]
    labels = write_polygons(tmp_path / f"fields{suffix}", lonlat, classes.tolist(), crs="EPSG:4326", driver=driver)
    image = write_image(tmp_path / "img.tif")
    res = rasterize_to(image, LabelOptions(labels, "crop"), log=lambda s: None)
    with rasterio.open(tmp_path / "img_label.tif") as ds:  # NAME_label.tif beside the image by default
        got = ds.read(1)
        assert ds.crs == rasterio.crs.CRS.from_user_input(UTM) and ds.transform == rasterio.Affine(*TRANSFORM)
        assert ds.nodata == 255 and ds.colormap(1)[2][:3] == (0, 200, 0)
    assert not cog_problems(tmp_path / "img_label.tif")
    want, overlap = whole_image(geoms, classes)
    assert np.count_nonzero(want != 255) > 200
    np.testing.assert_array_equal(got, want)  # vertices back in UTM within 1e-9 m: the same pixel centres inside
    assert res["overlap_pixels"] == overlap and res["on_image"] == len(geoms)
    assert res["pixels"].tolist() == [int(np.count_nonzero(want == c)) for c in range(4)]


def test_names_ids_and_their_errors(tmp_path):
    polys = [shapely.box(*(to_world(shapely.box(x, 2, x + 5, 8)).bounds)) for x in (2, 12, 22)]
    names = write_polygons(tmp_path / "n.gpkg", polys, ["corn", "coix", "corn"])
    vl = VectorLabels.read(LabelOptions(names, "crop", class_names=("other", "tobacco", "corn", "coix")))
    assert vl.classes.tolist() == [2, 3, 2]
    floats = write_polygons(tmp_path / "f.gpkg", polys, [1.0, 0.0, 3.0], field="id")
    assert VectorLabels.read(LabelOptions(floats, "id")).classes.tolist() == [1, 0, 3]
    texts = write_polygons(tmp_path / "t.gpkg", polys, ["1", " 2", "3"], field="id")
    assert VectorLabels.read(LabelOptions(texts, "id", num_classes=4)).classes.tolist() == [1, 2, 3]
    bad = [
        (LabelOptions(names, "crop", class_names=("other", "tobacco", "corn")), "values not in --class_names "
         "(other,tobacco,corn): coix (values found: coix, corn)"),
        (LabelOptions(names, "crop"), "values that are not class ids: coix, corn"),
        (LabelOptions(floats, "id", num_classes=3), "class ids outside 0..2: 3 (values found: 0, 1, 3)"),
        (LabelOptions(names, "kind"), "no field 'kind' (fields: crop)"),
        (LabelOptions(names, "crop", layer="roads"), "no layer 'roads' (layers: n)"),
        (LabelOptions(tmp_path / "none.gpkg", "crop"), "none.gpkg: file not found"),
    ]
    for options, text in bad:
        with pytest.raises(InputError) as e:
            VectorLabels.read(options)
        assert text in str(e.value) and "\n" not in str(e.value), str(e.value)
    with pytest.raises(InputError, match="--num_classes 4 differs from the 3 --class_names"):
        LabelOptions(names, "crop", class_names=("a", "b", "c"), num_classes=4)
    with pytest.raises(InputError, match="--unlabelled"):
        LabelOptions(names, "crop", unlabelled="zero")
    nulls = write_polygons(tmp_path / "null.gpkg", polys, ["corn", None, "corn"])
    with pytest.raises(InputError, match=r"\(null\)"):
        VectorLabels.read(LabelOptions(nulls, "crop", class_names=("other", "corn")))
    lines = tmp_path / "l.gpkg"
    write_vector(str(lines), shapely.to_wkb(np.array([shapely.LineString([(0, 0), (1, 1)])], dtype=object)),
                 field_data=[np.array([1])], fields=["crop"], crs=UTM, geometry_type="LineString")
    with pytest.raises(InputError, match="features that are not polygons: 1 "):
        VectorLabels.read(LabelOptions(lines, "crop"))


def test_png_source_and_bad_output_refused(tmp_path):
    write_png(tmp_path / "img.png", np.zeros((8, 8, 3), np.uint8))
    labels = write_polygons(tmp_path / "f.gpkg", [to_world(shapely.box(1, 1, 4, 4))], [1])
    with pytest.raises(InputError, match="img.png: a PNG has no CRS: vector labels"):
        rasterize_to(tmp_path / "img.png", LabelOptions(labels, "crop"))
    image = write_image(tmp_path / "img.tif")
    with pytest.raises(InputError, match="name it .tif"):
        rasterize_to(image, LabelOptions(labels, "crop"), tmp_path / "l.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.gpkg", "img.png", "img.tif"]


def test_polygons_elsewhere_warn(tmp_path, capsys):
    far = write_polygons(tmp_path / "far.gpkg", [shapely.box(0, 0, 10, 10)], [1])  # another place in UTM 48N
    res = rasterize_to(write_image(tmp_path / "img.tif"), LabelOptions(far, "crop"), log=lambda s: None)
    assert res["on_image"] == 0 and res["ignored"] == H * W
    assert "no polygon of" in capsys.readouterr().err


def _run(script, *args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=cwd)


def test_rasterize_labels_command_and_bad_flags(tmp_path):
    image = write_image(tmp_path / "a.tif")
    polys = [to_world(shapely.box(2.2, 2.2, 12.2, 10.2)), to_world(shapely.box(20.2, 5.2, 30.2, 9.2))]
    labels = write_polygons(tmp_path / "f.gpkg", polys, ["corn", "tobacco"])
    out = tmp_path / "lab.tif"
    r = _run("rasterize_labels.py", "--image", str(image), "--labels", str(labels), "--label_field", "crop",
             "--class_names", "other,tobacco,corn", "--unlabelled", "background", "--output", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "0 pixels where polygons of different classes overlap" in r.stdout
    with rasterio.open(out) as ds:
        lab = ds.read(1)
    assert np.bincount(lab.ravel(), minlength=256)[[0, 1, 2, 255]].tolist() == [H * W - 120, 40, 80, 0]
    for args, text in (
        (["--class_names", "other,tobacco,corn", "--num_classes", "4"],
         "--num_classes 4 differs from the 3 --class_names"),
        (["--class_names", "other,tobacco"], "values not in --class_names (other,tobacco): corn"),
        (["--label_field", "name"], "no field 'name' (fields: crop)"),
    ):
        flags = ["--label_field", "crop"] if "--label_field" not in args else []
        r = _run("rasterize_labels.py", "--image", str(image), "--labels", str(labels), *flags, *args,
                 "--output", str(tmp_path / "bad.tif"), "--quiet")
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and text in r.stderr, r.stderr
    r = _run("rasterize_labels.py", "--image", str(image), "--labels", str(labels), "--output",
             str(tmp_path / "bad.tif"))
    assert r.returncode == 2
    assert r.stderr.strip() == "error: --labels needs --label_field (the attribute holding the class)"
    assert not (tmp_path / "bad.tif").exists() and not list(tmp_path.glob(".*.part"))


def _tiles(root: Path) -> tuple[list[dict], dict[str, bytes]]:
    with open(root / "train" / "tiles.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, {p.name: p.read_bytes() for p in sorted((root / "train" / "label").iterdir())}


def test_generate_train_data_with_labels_equals_its_raster_label(tmp_path):
    import generate_train_data

    alpha = np.full((H, W), 255, np.uint8)
    alpha[:, :6] = 0  # no-data: 255 in the label tiles, as with raster labels
    rng = np.random.default_rng(5)
    geoms = [to_world(g) for g in random_polygons(rng, 20)]
    names = ["other", "tobacco", "corn"]
    labels = write_polygons(tmp_path / "f.gpkg", geoms, [names[i] for i in rng.integers(0, 3, len(geoms))])
    (tmp_path / "v").mkdir()
    (tmp_path / "r").mkdir()
    vec_image = write_image(tmp_path / "v" / "img.tif", alpha=alpha)
    ras_image = write_image(tmp_path / "r" / "img.tif", alpha=alpha)
    rasterize_to(ras_image, LabelOptions(labels, "crop", class_names=tuple(names)), log=lambda s: None)

    def run(root, image, *extra):
        args = generate_train_data.get_args_parser().parse_args(
            ["--data_root", str(root), "--images", str(image), "--tile_size", "16", "--keep", "valid", "--quiet",
             *extra])
        return generate_train_data.main(args)

    run(tmp_path / "rd", ras_image, "--num_classes", "3")
    run(tmp_path / "vd", vec_image, "--labels", str(labels), "--label_field", "crop", "--class_names", ",".join(names))
    ras, vec = _tiles(tmp_path / "rd"), _tiles(tmp_path / "vd")
    assert ras == vec and len(ras[0]) > 5 and "c2" in ras[0][0] and "c3" not in ras[0][0]
    assert sorted(p.name for p in (tmp_path / "vd" / "train").iterdir()) == ["data", "label", "tiles.csv"]
    # a PNG source: one line before anything is written
    write_png(tmp_path / "p.png", np.zeros((20, 20, 4), np.uint8))
    r = _run("generate_train_data.py", "--data_root", str(tmp_path / "pd"), "--images", str(tmp_path / "p.png"),
             "--labels", str(labels), "--label_field", "crop", "--quiet")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "p.png: a PNG has no CRS: vector labels (--labels) need a georeferenced GeoTIFF" in r.stderr
    assert not (tmp_path / "pd" / "train" / "tiles.csv").exists()


def test_bench_runs_on_a_tiny_image(tmp_path, capsys):
    from bench import vector_labels as bench

    args = bench.get_args_parser().parse_args(["--size", "300", "--polygons", "40", "--repeats", "1",
                                               "--out", str(tmp_path), "--steps", "ours", "whole", "areas"])
    best = bench.main(args)
    assert set(best) == {"ours", "whole", "areas"} and all(r["s"] > 0 and r["rss_mb"] > 0 for r in best.values())
    assert "40 polygons over 300 x 300 pixels" in capsys.readouterr().out


def test_run_pipeline_burns_train_and_test_polygons_beside_linked_images(tmp_path, monkeypatch):
    """run_pipeline.py --train_labels/--test_labels: every image is linked into DATA_ROOT/sources/SPLIT with its label
    burnt beside it (what every later step reads), the classes come from --class_names, and a PNG is refused."""
    import run_pipeline

    rng = np.random.default_rng(9)
    geoms = [to_world(g) for g in random_polygons(rng, 12)]
    names = ["other", "field"]
    labels = write_polygons(tmp_path / "f.gpkg", geoms, [names[i] for i in rng.integers(0, 2, len(geoms))])
    images = [write_image(tmp_path / f"{n}.tif") for n in ("a", "b", "c")]
    commands = []
    monkeypatch.setattr(run_pipeline, "run", commands.append)
    monkeypatch.setattr(run_pipeline, "copy_atomic", lambda src, dst: None)
    monkeypatch.setattr(run_pipeline, "final_pictures", lambda *a: None)
    monkeypatch.setattr(run_pipeline, "score_stage", lambda *a: None)
    root = tmp_path / "run"
    args = run_pipeline.get_args_parser().parse_args(
        ["--data_root", str(root), "--train_images", str(images[0]), str(images[1]), "--test_images", str(images[2]),
         "--train_labels", str(labels), "--test_labels", str(labels), "--label_field", "crop",
         "--class_names", "other,field", "--quiet", "--skip_training"])
    run_pipeline.main(args)
    assert args.num_classes == 2
    cut = next(c for c in commands if c[0] == "generate_train_data.py")
    trained = cut[cut.index("--images") + 1: cut.index("--tile_size")]
    assert trained == [str(root / "sources" / "train" / f"{n}.tif") for n in ("a", "b")]
    expected = rasterize_to(images[0], LabelOptions(labels, "crop", class_names=("other", "field")),
                            tmp_path / "expected.tif", log=lambda s: None)
    burnt = root / "sources" / "train" / "a_label.tif"
    import rasterio

    with rasterio.open(burnt) as got, rasterio.open(expected["output"]) as want:
        np.testing.assert_array_equal(got.read(1), want.read(1))
    assert (root / "sources" / "test" / "c_label.tif").exists()
    predicts = [c for c in commands if c[0] == "predict.py" and "--name" in c]
    assert all(str(root / "sources" / "test" / "c.tif") in c for c in predicts if str(root / "val") not in c[2])
    write_png(tmp_path / "p.png", np.zeros((20, 20, 4), np.uint8))
    args.train_images = [str(tmp_path / "p.png")]
    with pytest.raises(InputError, match="p.png: polygon labels need a georeferenced GeoTIFF"):
        run_pipeline.main(args)
