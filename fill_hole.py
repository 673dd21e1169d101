"""Fill holes in predicted maps (post-processing), streaming.

    python fill_hole.py                                      # data/submit/image_3_predict.png, image_4 ... in place
    python fill_hole.py --input P.png --output Q.png --source IMAGE.png --method morph --max_hole 250000
    python fill_hole.py --method square                      # the original's 500/400-px square rule

morph (default): a 4-connected region of class-0 valid pixels that touches neither the image border nor
no-data, whose every neighbouring pixel is one class c and whose area is at most --max_hole, becomes c.
With --min_area, islands of a crop class smaller than that then become the one class around them.
square: windows of 500 then 400 px every 50 px; where all four borders of a window carry one class v,
its class-0 pixels become v.
area (the competition winners' small-object and hole removal): for each class in turn (0 first), every
4-connected region smaller than --min_area pixels takes the class most of its neighbours have.
segments: the source image is cut into segments along its edges (the --edge_percentile % of valid pixels
with the weakest gradient after a Gaussian of --edge_sigma px are inside pixels; a segment is a 4-connected
region of them); a segment whose majority class holds --min_share of its pixels takes that class.
close: for each crop class, a morphological closing (ellipse of --radius); class-0 pixels it adds take
that class. No-data pixels (not valid in the source: alpha, mask or nodata value) stay 0 with every
method. Maps may be PNG or GeoTIFF (``IMAGE_predict.tif`` for a GeoTIFF source); a GeoTIFF output keeps
the georeferencing of the map (or, if it has none, of the source).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cropmap.core.cli import add_map_args, experimental_group, fraction, nonneg_float, nonneg_int, percent, positive_int, run_cli

from cropmap.core.errors import InputError
from cropmap.core.files import check_output_file
from cropmap.core.layout import map_path, map_suffix, predict_source, submit_dir
from cropmap.maps.postprocess import FILL_METHODS, FillOptions, fill_map


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Fill enclosed holes in predicted maps", add_help=add_help)
    add_map_args(p, "whose maps to fill when --input is not given")
    p.add_argument("--input", default=None,
                   help="one map to fill (default: OUTPUT_DIR/IMAGE_predict.png, or .tif, for each of --images)")
    p.add_argument("--name", default=None,
                   help="without --input: fill OUTPUT_DIR/IMAGE_predict_NAME (a model's or vote's map) (default: none)")
    p.add_argument("--output_name", default=None,
                   help="without --input: write OUTPUT_DIR/IMAGE_predict_OUTPUT_NAME instead of replacing the input "
                        "(default: replace it)")
    p.add_argument("--output", default=None, help="where the filled map goes (default: replace the input once complete)")
    p.add_argument("--source", default=None,
                   help="the source image (PNG or GeoTIFF) of --input, for its no-data mask; required with --input "
                        "(default: none)")
    p.add_argument("--method", default="morph", choices=FILL_METHODS,
                   help="morph (enclosed regions), square (the original's rule), area (regions smaller than --min_area "
                        "of every class take their neighbours' majority class) or close (morphological closing of each "
                        "crop class, --radius) or segments (each image segment takes its majority class, --edge_percentile) "
                        "(default: %(default)s)")
    g = p.add_argument_group("morph and area")
    g.add_argument("--max_hole", type=nonneg_int, default=250_000,
                   help="morph: largest hole area filled, in pixels (250000: a 500x500 square) (default: %(default)s)")
    g.add_argument("--min_area", type=nonneg_int, default=0,
                   help="morph: crop islands smaller than this many pixels take the class around them; area: regions "
                        "of any class smaller than this take their neighbours' majority class; 0: off "
                        "(default: %(default)s)")
    p.add_argument_group("close").add_argument(
        "--radius", type=nonneg_int, default=3, help="closing: radius in pixels of its elliptical kernel (default: %(default)s)")
    g = p.add_argument_group("segments")
    g.add_argument("--edge_percentile", type=percent, default=70.0,
                   help="segment vote: share in %% of valid pixels inside segments (the weakest gradients); the rest are "
                        "edges, which keep their class (default: %(default)s)")
    g.add_argument("--edge_sigma", type=nonneg_float, default=1.0,
                   help="Gaussian smoothing in px of the source before its gradient (default: %(default)s)")
    experimental_group(p).add_argument(
        "--min_share", type=fraction, default=0.5,
        help="segments: a segment is voted only when its majority class holds at least this share of its pixels "
             "(default: %(default)s)")
    g = p.add_argument_group("square")
    g.add_argument("--sizes", type=positive_int, nargs="+", default=[500, 400],
                   help="window sides, applied in turn (default: 500 400)")
    g.add_argument("--stride", type=positive_int, default=50,
                   help="window step; must divide every size (default: %(default)s)")
    p.add_argument("--band_rows", type=positive_int, default=1024,
                   help="morph, area, close, segments: rows per band; memory is about 12 bytes x width x band_rows "
                        "(map, int32 component labels, masks), more while a region taller than the band is pending; "
                        "segments: about 20 bytes x width x 1.5 x band_rows (map, source, gradient, mask and labels "
                        "of a band and its context rows) (default: %(default)s)")
    return p


def fill_options(args: argparse.Namespace) -> FillOptions:
    """The :class:`~cropmap.maps.postprocess.FillOptions` of parsed flags (those of :func:`get_args_parser`)."""
    return FillOptions(method=args.method, max_hole=args.max_hole, min_area=args.min_area,
                       num_classes=args.num_classes, sizes=args.sizes, stride=args.stride, band_rows=args.band_rows,
                       progress=not args.quiet, radius=args.radius, edge_percentile=args.edge_percentile,
                       edge_sigma=args.edge_sigma, min_share=args.min_share)


def main(args: argparse.Namespace) -> list[Path]:
    if args.method == "area" and args.min_area < 2:
        raise InputError("--method area needs --min_area N (N >= 2: regions smaller than N pixels are removed)")
    if any(s % args.stride for s in args.sizes):
        raise InputError(f"--stride {args.stride} must divide every --sizes value {args.sizes}")
    if args.input:
        if not args.source:
            raise InputError("--source IMAGE.png is required with --input (its alpha marks no-data, which must stay 0)")
        jobs = [(Path(args.input), Path(args.source), Path(args.output or args.input))]
    else:
        out_dir = submit_dir(args.data_root, args.output_dir)
        jobs = []
        for im in args.images:
            source = predict_source(args.data_root, im)
            suffix = map_suffix(source, args.format)
            jobs.append((map_path(out_dir, im, args.name, suffix), source,
                         map_path(out_dir, im, args.output_name or args.name, suffix)))
    for _, _, output in jobs:
        check_output_file(output)
    opts = fill_options(args)
    done = []
    for map_file, source, output in jobs:
        fill_map(map_file, source, output, opts)
        print(f"{map_file} -> {output} ({args.method})")
        done.append(output)
    return done


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
