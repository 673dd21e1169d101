"""Score predicted maps against labels with the contract's metric, streaming full-size maps.

    python score.py --pred P.png --label L.png --source IMAGE.png [--json OUT.json]
    python score.py                       # data/submit/IMAGE_predict.png vs the test labels (synthetic data)

Prints per-class IoU, mIoU (crops 1..C-1, the headline), mIoU_all and the confusion matrix (rows =
label, columns = prediction), counting the pixels valid in the source (alpha 255; for a GeoTIFF its
alpha band, mask or nodata value). Maps, labels and sources may be PNG or GeoTIFF; georeferenced files
must agree on their CRS and transform.
"""

from __future__ import annotations

import argparse
import json
import sys

from cropmap.core.cli import add_map_args, positive_int, run_cli

from cropmap.core.errors import InputError
from cropmap.core.files import atomic_path, check_output_file
from cropmap.core.metrics import ConfusionMatrix
from cropmap.core.classes import class_names
from cropmap.core.layout import errors_path, label_path, map_path, map_suffix, predict_source, submit_dir
from cropmap.maps.scoring import score_dict, score_map
from cropmap.raster.preview import write_map_preview


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Score predicted maps (IoU over valid pixels)", add_help=add_help)
    p.add_argument("--pred", default=None, help="predicted map (default: OUTPUT_DIR/IMAGE_predict.png for each of --images)")
    p.add_argument("--label", default=None, help="label of --pred (default with --images: SOURCE_DIR/IMAGE_label.png)")
    p.add_argument("--source", default=None, help="source image of --pred, for its no-data mask (default with --images: SOURCE_DIR/IMAGE.png; without it every pixel counts)")
    p.add_argument("--json", default=None, help="also write the scores as JSON (iou, mIoU, mIoU_all, confusion) (default: none)")
    p.add_argument("--errors", action="store_true",
                   help="also write MAP_errors.png beside each map: the map over its image and, beside it, where it is "
                        "wrong and as which class, each with a legend (needs the source)")
    p.add_argument("--errors_size", type=positive_int, default=1024,
                   help="with --errors: longest side of each of the two pictures (default: %(default)s)")
    add_map_args(p, "to score when --pred is not given; their scores add up into one")
    return p


def main(args: argparse.Namespace) -> dict:
    if args.pred:
        if not args.label:
            raise InputError("--label is required with --pred")
        jobs = [(args.pred, args.label, args.source)]
    else:
        out_dir = submit_dir(args.data_root, args.output_dir)
        sources = [predict_source(args.data_root, im) for im in args.images]
        jobs = [(map_path(out_dir, im, suffix=map_suffix(src, args.format)), label_path(src), src)
                for im, src in zip(args.images, sources)]
    if args.json:
        check_output_file(args.json)
    if args.errors and any(source is None for _, _, source in jobs):
        raise InputError("--errors needs the source image of each map (--source)")
    total = ConfusionMatrix(args.num_classes)
    for pred, label, source in jobs:
        cm = score_map(pred, label, source, args.num_classes, progress=not args.quiet)
        if args.errors:
            write_map_preview(pred, source, errors_path(pred), class_names(args.num_classes), label, args.errors_size)
            print(f"{pred}: errors in {errors_path(pred)}")
        if len(jobs) > 1:
            print(f"{pred}: mIoU {cm.compute()['mIoU']:.4f}")
        total.merge(cm)
    print(total.table())
    result = score_dict(total)
    print("confusion (rows = label, columns = prediction):")
    for row in result["confusion"]:
        print("  " + " ".join(f"{v:>12d}" for v in row))
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
