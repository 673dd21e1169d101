"""Turn a class map into field polygons (GeoPackage or GeoJSON), in bands of bounded memory.

    python polygonize.py --input data/submit/image_3_predict.tif --output fields.gpkg
    python polygonize.py --input MAP.tif --output fields.geojson --min_area 500 --classes 1,2,3 --simplify 0.5

One polygon per 4-connected region of a class (regions cut by the edge of a band are merged, never
duplicated), in the map's CRS, with the columns ``class_id``, ``class_name``, ``area_px`` (pixels) and
``area_m2`` (m²; through an equal-area projection when the CRS is geographic). A map without
georeferencing (a PNG) gives polygons in pixel coordinates (x = column, y = row) and no ``area_m2``; the
log says so. Class 0 (other) is also the maps' no-data value, so it is not traced unless --classes asks.
"""

from __future__ import annotations

import argparse
import sys
import time

from cropmap.core.cli import int_list, run_cli

from cropmap.core.errors import InputError


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Polygonize a class map into a GeoPackage or GeoJSON", add_help=add_help)
    p.add_argument("--input", required=True,
                   help="class map: GeoTIFF (georeferenced polygons) or PNG (pixel coordinates) (required)")
    p.add_argument("--output", required=True, help="FILE.gpkg (layer 'fields') or FILE.geojson (required)")
    p.add_argument("--classes", type=int_list, default=None,
                   help="classes to turn into polygons, e.g. 1,2,3 (default: 1..num_classes-1, the crops)")
    p.add_argument("--num_classes", type=int, default=4,
                   help="number of classes of the map; names the classes (default: %(default)s)")
    p.add_argument("--min_area", type=float, default=0.0,
                   help="leave out regions smaller than this, in m² (in pixels for a map without a CRS) "
                        "(default: %(default)s)")
    p.add_argument("--simplify", type=float, default=0.0,
                   help="simplify outlines (Douglas-Peucker) with this tolerance in the map's units: metres in a "
                        "projected CRS, pixels without georeferencing; areas are those before; 0 keeps the exact "
                        "pixel edges (default: %(default)s)")
    p.add_argument("--band_rows", type=int, default=None,
                   help="rows read and traced at a time; memory is about 4 bytes x width x band_rows, plus the "
                        "regions still open (default: 16777216 / width, about 16 Mpixel per band)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(args: argparse.Namespace) -> dict:
    from cropmap.maps.polygons import polygonize_map

    if args.min_area < 0 or args.simplify < 0:
        raise InputError("--min_area and --simplify must not be negative")
    if args.band_rows is not None and args.band_rows < 1:
        raise InputError(f"--band_rows must be at least 1, got {args.band_rows}")
    t0 = time.perf_counter()
    res = polygonize_map(args.input, args.output, classes=args.classes, num_classes=args.num_classes,
                         min_area=args.min_area, simplify=args.simplify, band_rows=args.band_rows,
                         progress=not args.quiet)
    where = "pixel coordinates" if res["pixel_coordinates"] else (res["crs"] or "map units, no CRS")
    print(f"{args.input} -> {args.output}: {res['polygons']} polygons ({where}) in {time.perf_counter() - t0:.1f} s")
    return res


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
