"""Crop areas of a class map: pixels, hectares and share of the valid area per class, and per zone.

    python areas.py --map data/submit/ortho_predict.tif --output areas.csv
    python areas.py --map MAP.tif --source ortho.tif --zones districts.gpkg --zone_field name \\
        --output areas.csv --gpkg areas.gpkg

The map (a GeoTIFF with a CRS) is read in strips. Areas are exact in a projected CRS (pixels x pixel area)
and measured in an equal-area projection in a geographic one. Zones are reprojected to the map's CRS and
burnt at pixel centres; pixels in no zone make the rows "(outside zones)". Value 255 is left out (ignored
pixels of a label); maps hold 0 both for class 0 and for no-data, so no-data is left out only with --source.
"""

from __future__ import annotations

import argparse
import sys
import time

from cropmap.core.cli import num_classes_int, run_cli
from cropmap.data.vector_labels import check_class_names, name_list


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Pixels, hectares and shares per class (and per zone) of a class map.",
                                add_help=add_help)
    p.add_argument("--map", required=True,
                   help="class map: a GeoTIFF with a CRS (predict.py's, or a label from rasterize_labels.py) "
                        "(required)")
    p.add_argument("--source", default=None,
                   help="the map's source image: only its valid pixels (alpha 255) count (default: none: every "
                        "pixel but 255 counts, and value 0 counts as class 0 even where it marks no-data)")
    p.add_argument("--zones", default=None,
                   help="zone polygons (GeoPackage, Shapefile, GeoJSON, ...), reprojected to the map's CRS and burnt "
                        "at pixel centres: areas per zone (default: none: the whole map)")
    p.add_argument("--zone_field", default=None, help="attribute naming each zone (required with --zones)")
    p.add_argument("--zone_layer", default=None, help="layer of --zones to read (default: the first)")
    p.add_argument("--num_classes", type=num_classes_int, default=None,
                   help="map values are 0..num_classes-1 (default: the number of --class_names, else 4)")
    p.add_argument("--class_names", type=name_list, default=None,
                   help="comma-separated class names in id order for the table (default: other,tobacco,corn,coix "
                        "for 4 classes, else class0,class1,...)")
    p.add_argument("--output", required=True,
                   help="CSV: [zone,]class_id,class_name,pixels,hectares,share, one row per class (per zone) "
                        "(required)")
    p.add_argument("--gpkg", default=None,
                   help="also write the zones to this GeoPackage (layer 'areas'), with valid_px, valid_ha and one "
                        "hectare column per class, NAME_ha (default: none; needs --zones)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(args: argparse.Namespace) -> dict:
    from cropmap.maps.areas import areas

    num_classes = check_class_names(args.class_names, args.num_classes)
    t0 = time.perf_counter()
    res = areas(args.map, args.output, zones=args.zones, zone_field=args.zone_field, zone_layer=args.zone_layer,
                gpkg=args.gpkg, source=args.source, num_classes=num_classes, class_names=args.class_names,
                progress=not args.quiet)
    print(f"{args.output}: {len(res['rows'])} rows in {time.perf_counter() - t0:.1f} s")
    return res


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
