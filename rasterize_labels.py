"""Burn field polygons into a label GeoTIFF on an image's grid (for a GIS, score.py or training).

    python rasterize_labels.py --image a.tif --labels fields.gpkg --label_field crop_id
    python rasterize_labels.py --image a.tif --labels fields.shp --label_field crop \\
        --class_names other,tobacco,corn,coix --unlabelled background --output a_label.tif

The polygons (GeoPackage, Shapefile, GeoJSON, FlatGeobuf, ...) are reprojected to the image's CRS and
burnt at pixel centres, strip by strip in bounded memory. The label is a Cloud-Optimized GeoTIFF with the
image's CRS, transform and size: class ids, 255 (nodata, ignored) where polygons of different classes
overlap and, by default, outside every polygon; the class colour table. The image's pixels are not read.
"""

from __future__ import annotations

import argparse
import sys
import time

from cropmap.core.cli import num_classes_int, run_cli
from cropmap.data import vector_labels


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Burn field polygons into a label GeoTIFF on an image's grid.",
                                add_help=add_help)
    p.add_argument("--image", required=True,
                   help="the GeoTIFF whose grid (CRS, transform, size) the label takes (required)")
    vector_labels.add_label_args(p, required=True)
    p.add_argument("--num_classes", type=num_classes_int, default=None,
                   help="class ids are 0..num_classes-1 (default: the number of --class_names, else 4)")
    p.add_argument("--output", default=None,
                   help="the label GeoTIFF to write (default: NAME_label.tif beside the image, as training expects)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(args: argparse.Namespace) -> dict:
    options = vector_labels.label_options(args, args.num_classes)
    t0 = time.perf_counter()
    res = vector_labels.rasterize_to(args.image, options, args.output, progress=not args.quiet)
    print(f"{res['output']}: written in {time.perf_counter() - t0:.1f} s")
    return res


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
