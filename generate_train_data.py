"""Cut the training mosaics and their labels into tiles (contract: data/train/{data,label}/, tiles.csv).

    python generate_train_data.py
    python generate_train_data.py --tile_size 512 --stride 512 --keep crop --val_fraction 0.1
    python generate_train_data.py --images a.tif b.tif --labels fields.gpkg --label_field crop \\
        --class_names other,tobacco,corn,coix

Streams each source and label once, in strips (memory does not grow with the image size); both cores
work (decoding in one thread, PNG encoding in --workers threads). Tiles whose pixels are all no-data are
never written; by default, as in the original, only tiles that contain a crop are kept (--keep valid
keeps every tile with a valid pixel). tiles.csv gets a spatially disjoint train/val/gap split. With
--labels, each GeoTIFF source's label is burnt from field polygons into a temporary GeoTIFF first, then cut
the same way.
"""

from __future__ import annotations

import argparse
import sys
import time


from cropmap.data import cut, vector_labels
from cropmap.core.cli import num_classes_int, positive_int, run_cli, seed_int, unit_float
from cropmap.core.files import check_output_dir
from cropmap.core.layout import DEFAULT_TRAIN_IMAGES, TRAIN_SOURCE_DIR, tiles_csv, train_dir, train_tile_dirs
from cropmap.data.tiling import BASE_COLUMNS, class_columns, write_tiles_csv


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Cut training images and labels into tiles.", add_help=add_help)
    cut.add_tiling_args(p, TRAIN_SOURCE_DIR, DEFAULT_TRAIN_IMAGES, "tile", "the tile size",
                        label_help=" (label: NAME_label.png or .tif beside each)")
    p.add_argument("--keep", choices=["crop", "valid"], default="crop",
                   help="crop: keep tiles with a crop pixel, as the original (default); valid: every tile with a valid pixel")
    p.add_argument("--num_classes", type=num_classes_int, default=None,
                   help="label values are 0..num_classes-1, 255 ignored "
                        "(default: the number of --class_names, else 4)")
    p.add_argument("--val_fraction", type=unit_float, default=0.1,
                   help="share of tiles for validation, 0 to below 1 (default: 0.1)")
    p.add_argument("--split_block", type=positive_int, default=None,
                   help="side in pixels of the blocks drawn for validation (default: 4 tile sizes, less on small images)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the train/val split (default: 0)")
    vector_labels.add_label_args(p.add_argument_group("labels from polygons (GeoTIFF sources)"))
    return p


def main(args: argparse.Namespace) -> list[dict]:
    stride = args.stride or args.tile_size
    out = train_dir(args.data_root)
    data_dir, label_dir = train_tile_dirs(args.data_root)
    csv_path = tiles_csv(out)
    check_output_dir(out)
    labels = vector_labels.label_options(args, args.num_classes)  # None: raster labels beside the images
    num_classes = labels.classes if labels else args.num_classes or 4
    sources = cut.resolve(args.data_root, args.source_dir, args.images, with_label=labels is None)
    crop_classes = slice(1, num_classes)

    def keep(tile, counts) -> bool:
        return args.keep == "valid" or bool(counts[crop_classes].any())

    rows: list[dict] = []
    t0 = time.perf_counter()
    # with --labels, each source's label is burnt into a temporary GeoTIFF first, then cut like any label
    with vector_labels.rasterized_labels(sources, labels, out, progress=not args.quiet):
        cut.validate(sources, num_classes)  # headers and label values, before anything is written
        # tiles go to temporary folders that replace data/ and label/ once every source is cut
        with cut.staged_folders([data_dir, label_dir]) as (tmp_data, tmp_label):
            for src in sources:
                rows += cut.cut_source(src, args.tile_size, stride, tmp_data, tmp_label, keep, rgba_out=False,
                                       num_classes=num_classes, workers=args.workers, progress=not args.quiet,
                                       compression=args.compression)
            cut.assign_split(rows, args.val_fraction, args.seed, args.split_block)
            csv_path.unlink(missing_ok=True)  # the old index goes before the old tiles do
    write_tiles_csv(csv_path, rows, BASE_COLUMNS + class_columns(num_classes) + ["split"])
    secs = time.perf_counter() - t0
    mpix = sum(s.info.width * s.info.height for s in sources) / 1e6
    splits = {k: sum(r["split"] == k for r in rows) for k in ("train", "val", "gap")}
    print(f"{len(rows)} tiles ({splits['train']} train, {splits['val']} val, {splits['gap']} gap) "
          f"from {mpix:.0f} Mpixel in {secs:.1f} s ({mpix / max(secs, 1e-9):.1f} Mpixel/s) -> {out}")
    return rows


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
