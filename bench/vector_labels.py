"""Benchmark: field polygons burnt into a label, and crop areas, in strips (run by hand, never by tests).

    python -m bench.vector_labels                                 # 20,000 polygons over 8000 x 8000 pixels
    python -m bench.vector_labels --polygons 100000 --size 20000  # the issue's size

Each step in a fresh process (its peak RSS, VmHWM, is its own), alternating for ``--repeats`` rounds:
  ours        rasterize_to: read the GeoPackage, burn in strips (overlaps of different classes -> 255),
              write the label as a COG (what rasterize_labels.py does)
  whole       the same polygons read the same way, then one rasterio.features.rasterize call over the whole
              image in memory (no overlap rule, no file written)
  read_map    decoding ours' label in strips (the floor of areas.py)
  areas       areas.py on that label
  areas_zones areas.py on that label with a 10 x 10 grid of zones
The image is a sparse GeoTIFF (no pixel written: the label reads only its header); polygons are random
star-shaped fields (8 vertices, some with a hole) of 4 classes covering about half the image, in UTM.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.common import OUT, best_of, markdown_table, peak_rss_mb, run_worker

STEPS = ["ours", "whole", "read_map", "areas", "areas_zones"]
PIXEL = 1.0  # metres
ORIGIN = (400_000.0, 2_800_000.0)
CRS = "EPSG:32648"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Time rasterize_labels and areas against whole-image rasterize and a "
                                            "bare read.", add_help=add_help)
    p.add_argument("--size", type=int, default=8000, help="image side in pixels (default: %(default)s)")
    p.add_argument("--polygons", type=int, default=20000, help="number of random fields (default: %(default)s)")
    p.add_argument("--steps", nargs="+", default=STEPS, choices=STEPS, help="what to time (default: all)")
    p.add_argument("--repeats", type=int, default=2, help="rounds; the best time of each step is shown "
                                                          "(default: %(default)s)")
    p.add_argument("--out", default=None, help="work folder (default: bench/out/vector_labels_SIZE_POLYGONS)")
    p.add_argument("--worker", choices=STEPS, help=argparse.SUPPRESS)
    return p


def _work(args) -> Path:
    return Path(args.out or OUT / f"vector_labels_{args.size}_{args.polygons}")


def random_fields(n: int, size: int, seed: int = 0):
    """``(polygons object [n], classes int64 [n])``: star-shaped fields in the image's CRS whose areas add up
    to about half the image (overlaps included)."""
    import numpy as np
    import shapely

    rng = np.random.default_rng(seed)
    k = 8
    radius = np.sqrt(0.5 * size * size / n / 2.0) * rng.uniform(0.6, 1.4, n)  # a star of radius r: about 2 r²
    ang = (np.arange(k) + rng.uniform(0, 0.9, (n, k))) * 2 * np.pi / k
    r = radius[:, None] * rng.uniform(0.7, 1.3, (n, k))
    cx, cy = rng.uniform(0, size, n), rng.uniform(0, size, n)
    xs = ORIGIN[0] + PIXEL * (cx[:, None] + r * np.cos(ang))
    ys = ORIGIN[1] - PIXEL * (cy[:, None] + r * np.sin(ang))
    ring = np.stack([xs, ys], axis=-1)
    shells = shapely.linearrings(np.concatenate([ring, ring[:, :1]], axis=1))
    polys = shapely.polygons(shells)
    holed = np.flatnonzero(rng.random(n) < 0.1)
    centre = np.column_stack([ORIGIN[0] + PIXEL * cx[holed], ORIGIN[1] - PIXEL * cy[holed]])
    hole = (ring[holed] - centre[:, None]) * 0.3 + centre[:, None]
    for i, h in zip(holed, hole):
        polys[i] = shapely.Polygon(ring[i], [h[::-1]])
    return polys, rng.integers(0, 4, n)


def prepare(args) -> None:
    import numpy as np
    import rasterio
    import shapely
    from pyogrio.raw import write

    work = _work(args)
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "image.tif").exists():  # sparse: no tile written, the header is all the label reads
        profile = dict(driver="GTiff", width=args.size, height=args.size, count=3, dtype="uint8", tiled=True,
                       blockxsize=512, blockysize=512, compress="deflate", crs=CRS, sparse_ok=True,
                       transform=rasterio.Affine(PIXEL, 0, ORIGIN[0], 0, -PIXEL, ORIGIN[1]))
        with rasterio.open(work / "image.tif", "w", **profile):
            pass
    if not (work / "fields.gpkg").exists():
        polys, classes = random_fields(args.polygons, args.size)
        write(str(work / "fields.gpkg"), shapely.to_wkb(polys), field_data=[classes.astype(np.int32)],
              fields=["crop"], crs=CRS, geometry_type="Polygon", driver="GPKG")
    if not (work / "zones.gpkg").exists():
        side = args.size * PIXEL / 10
        boxes = [shapely.box(ORIGIN[0] + i * side, ORIGIN[1] - (j + 1) * side, ORIGIN[0] + (i + 1) * side,
                             ORIGIN[1] - j * side) for j in range(10) for i in range(10)]
        write(str(work / "zones.gpkg"), shapely.to_wkb(np.array(boxes, dtype=object)),
              field_data=[np.array([f"z{i}" for i in range(100)], dtype=object)], fields=["name"], crs=CRS,
              geometry_type="Polygon", driver="GPKG")


def worker(args) -> dict:
    from cropmap.data.vector_labels import LabelOptions, VectorLabels, rasterize_to

    work = _work(args)
    options = LabelOptions(work / "fields.gpkg", "crop")
    label = work / "label.tif"
    t = time.perf_counter()
    out: dict = {}
    if args.worker == "ours":
        res = rasterize_to(work / "image.tif", options, label, log=lambda s: None)
        out["overlap_pixels"] = res["overlap_pixels"]
    elif args.worker == "whole":
        import rasterio
        from rasterio.features import rasterize

        vl = VectorLabels.read(options)
        with rasterio.open(work / "image.tif") as ds:
            shape, transform = ds.shape, ds.transform
        rasterize(zip(vl.layer.geoms, vl.classes.tolist()), out_shape=shape, transform=transform, fill=255,
                  dtype="uint8")
    elif args.worker == "read_map":
        from cropmap.raster import iter_strips, strip_rows

        for _ in iter_strips(label, strip_rows(args.size, 24)):
            pass
    else:
        from cropmap.maps.areas import areas

        zones = dict(zones=work / "zones.gpkg", zone_field="name") if args.worker == "areas_zones" else {}
        areas(label, work / f"{args.worker}.csv", progress=False, log=lambda s: None, **zones)
    return {"s": time.perf_counter() - t, "rss_mb": peak_rss_mb(), **out}


def main(args) -> dict:
    if args.worker:
        print(json.dumps(worker(args)))
        return {}
    prepare(args)
    flags = ["--size", str(args.size), "--polygons", str(args.polygons)] + (["--out", args.out] if args.out else [])
    steps = [s for s in STEPS if s in args.steps]
    if any(s != "ours" and s != "whole" for s in steps) and not (_work(args) / "label.tif").exists():
        run_worker("bench.vector_labels", ["--worker", "ours", *flags])  # the map the other steps read
    runs = {s: (lambda s=s: run_worker("bench.vector_labels", ["--worker", s, *flags])) for s in steps}
    best = best_of(runs, args.repeats, "s")
    rows = [[s, f"{r['s']:.2f}", f"{r['rss_mb']:.0f}"] for s, r in best.items()]
    print(f"{args.polygons} polygons over {args.size} x {args.size} pixels, best of {args.repeats}")
    print(markdown_table(["step", "seconds", "peak RSS (MB)"], rows))
    return best


if __name__ == "__main__":
    main(get_args_parser().parse_args())
