"""Benchmark: GeoTIFF against PNG, side by side in one run (run by hand, never by tests).

    python -m bench.geotiff                 # 20000 x 20000 synthetic RGBA image, label and map
    python -m bench.geotiff --repeat        # the source made of one repeated 2048 x 2048 block (minutes, not tens)

Each worker runs in a fresh process, so its peak RSS (VmHWM) is its own:
  decode     reading the RGBA image top to bottom in 512-row strips, 4 ways: the PNG through pyvips (the
             project's PNG reader) and through rasterio (GDAL's PNG driver); the GeoTIFF (512-pixel tiles,
             DEFLATE + predictor, RGB + internal mask: what the project writes) through rasterio (the
             project's GeoTIFF reader) and through pyvips (libtiff; no mask)
  tiling     generate_train_data.py on the PNG and on the GeoTIFF (image + label)
  polygons   reading the 20000 x 20000 class map (GeoTIFF) vs polygonize.py on it (GeoPackage out), and
             for scale GDAL's polygonizer (rasterio.features.shapes) over the same bands, with no merging
             across bands and no output
Prints seconds, Mpixel/s, peak RSS and the ratios. Sources are cached under bench/out/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from bench.common import OUT, peak_rss_mb, rate_table, run_worker, write_repeated

WORKERS = {
    "decode": ["png_pyvips", "png_rasterio", "tif_rasterio", "tif_pyvips"],
    "tiling": ["tile_png", "tile_tif"],
    "polygons": ["map_read", "polygonize", "gdal_shapes"],
}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Benchmark GeoTIFF reading, tiling and polygons against PNG.",
                                add_help=add_help)
    p.add_argument("--height", type=int, default=20000, help="source height in pixels (default: 20000)")
    p.add_argument("--width", type=int, default=20000, help="source width in pixels (default: 20000)")
    p.add_argument("--parts", nargs="+", default=list(WORKERS), choices=list(WORKERS),
                   help="what to measure (default: all)")
    p.add_argument("--repeat", action="store_true",
                   help="make the source by repeating one 2048 x 2048 synthetic block (much faster to make)")
    p.add_argument("--out", default=str(OUT), help="work folder (default: bench/out)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--src", help=argparse.SUPPRESS)
    return p


def _read_all(reader, rows: int = 512) -> None:
    import numpy as np

    buf = np.empty((rows,) + reader.row_shape, np.uint8)
    while reader.y < reader.height:
        reader.read_into(buf)


def worker(kind: str, folder: Path) -> dict:
    import numpy as np

    png, tif = folder / "bench.png", folder / "bench.tif"
    t0 = time.perf_counter()
    if kind == "png_pyvips":
        from cropmap.raster import png as fmt

        _read_all(fmt.Reader(png, rgba=True))
    elif kind == "tif_rasterio":
        from cropmap.raster import geotiff as fmt

        _read_all(fmt.Reader(tif, rgba=True))
    elif kind == "tif_pyvips":
        from cropmap.raster import png as fmt  # its Reader is libvips' sequential reader, whatever the file type

        _read_all(fmt.Reader(tif, rgba=True))
    elif kind == "png_rasterio":
        import rasterio
        from rasterio.windows import Window

        with rasterio.open(png) as ds:
            buf = np.empty((4, 512, ds.width), np.uint8)
            for y in range(0, ds.height, 512):
                n = min(512, ds.height - y)
                ds.read(window=Window(0, y, ds.width, n), out=buf[:, :n])
    elif kind in ("tile_png", "tile_tif"):
        import generate_train_data

        work = folder / f"tiles_{kind}"
        shutil.rmtree(work, ignore_errors=True)
        src = png if kind == "tile_png" else tif
        generate_train_data.main(generate_train_data.get_args_parser().parse_args(
            ["--data_root", str(work), "--images", str(src), "--workers", "2", "--quiet"]))
        secs = time.perf_counter() - t0
        shutil.rmtree(work, ignore_errors=True)
        return {"seconds": secs, "maxrss_mb": peak_rss_mb()}
    elif kind == "map_read":
        from cropmap.raster import open_reader, strip_rows

        reader = open_reader(folder / "map.tif")
        _read_all(reader, strip_rows(reader.width))
    elif kind == "gdal_shapes":
        from rasterio.features import shapes

        from cropmap.maps.polygons import BAND_PIXELS
        from cropmap.raster import open_reader

        reader = open_reader(folder / "map.tif")
        band = np.empty((BAND_PIXELS // reader.width,) + reader.row_shape, np.uint8)
        n = 0
        while reader.y < reader.height:
            rows = band[: reader.read_into(band)]
            n += sum(1 for _ in shapes(rows, mask=rows > 0, connectivity=4))
        return {"seconds": time.perf_counter() - t0, "maxrss_mb": peak_rss_mb(), "polygons": n}
    elif kind == "polygonize":
        from cropmap.maps.polygons import polygonize_map

        out = folder / "fields.gpkg"
        res = polygonize_map(folder / "map.tif", out, progress=False, log=lambda s: None)
        secs = time.perf_counter() - t0
        out.unlink()
        return {"seconds": secs, "maxrss_mb": peak_rss_mb(), "polygons": res["polygons"]}
    else:
        raise ValueError(kind)
    return {"seconds": time.perf_counter() - t0, "maxrss_mb": peak_rss_mb()}


def make_sources(folder: Path, height: int, width: int, repeat: bool) -> None:
    """bench.png (+ label), the same pixels as bench.tif (+ label, UTM 48N at 0.3 m, RGB + mask), map.tif."""
    import make_synthetic_data
    from cropmap.data import synthetic
    from cropmap.raster import iter_strips, open_writer

    png, label = folder / "bench.png", folder / "bench_label.png"
    if not png.exists():
        print(f"synthesizing {height}x{width} -> {png} ...", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        if repeat:
            write_repeated(png, label, height, width)
        else:
            synthetic.write_image(png, label, height, width, seed=1)
    like = make_synthetic_data.georeferenced("image_1", height, width)
    for src, dst, channels, role in ((png, folder / "bench.tif", 4, "map"), (label, folder / "bench_label.tif", 1, "label"),
                                     (label, folder / "map.tif", 1, "map")):
        if dst.exists():
            continue
        print(f"converting {src.name} -> {dst.name} ...", flush=True)
        with open_writer(dst, width, height, channels, like=like, role=role) as w:
            for _, strip in iter_strips(src, 512):
                w.write(strip)


def main(args) -> None:
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.src))))
        return
    folder = Path(args.out) / f"geo_{args.height}x{args.width}{'_repeat' if args.repeat else ''}"
    make_sources(folder, args.height, args.width, args.repeat)
    mpix = args.height * args.width / 1e6
    results = {}
    for part in args.parts:
        for kind in WORKERS[part]:
            r = results[kind] = run_worker("bench.geotiff", ["--worker", kind, "--src", str(folder)])
            extra = f"  polygons {r['polygons']}" if "polygons" in r else ""
            print(f"{kind:13s} {r['seconds']:7.1f} s  {mpix / r['seconds']:7.1f} Mpixel/s  "
                  f"peak RSS {r['maxrss_mb']:6.0f} MB{extra}", flush=True)
    print("\n" + rate_table(f"{args.height}x{args.width}", results, mpix))
    ratio = lambda a, b: results[b]["seconds"] / results[a]["seconds"]  # noqa: E731 - throughput of a over b
    if "decode" in args.parts:
        print(f"\ndecode, GeoTIFF (rasterio) / PNG (pyvips) throughput: {ratio('tif_rasterio', 'png_pyvips'):.2f}; "
              f"PNG through rasterio / pyvips: {ratio('png_rasterio', 'png_pyvips'):.2f}; "
              f"GeoTIFF through pyvips / rasterio: {ratio('tif_pyvips', 'tif_rasterio'):.2f}")
    if "tiling" in args.parts:
        print(f"tiling, GeoTIFF / PNG throughput: {ratio('tile_tif', 'tile_png'):.2f}")
    if "polygons" in args.parts:
        t = {k: results[k]["seconds"] for k in WORKERS["polygons"]}
        print(f"polygonize / read the map, time: {t['polygonize'] / t['map_read']:.2f}; "
              f"GDAL's polygonizer / polygonize.py, time: {t['gdal_shapes'] / t['polygonize']:.2f}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
