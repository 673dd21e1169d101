"""Write the validation blocks of the training images as test-like images, to choose ensembles on.

    python make_val_images.py --data_root data                # after generate_train_data.py
    python generate_test_data.py --data_root data/val --images image_1 image_2
    python predict.py --data_root data/val --images image_1 image_2 --checkpoint M.pth --name M
    python score.py --data_root data/val --images image_1 image_2 ...

For each training image with validation tiles in ``DATA_ROOT/train/tiles.csv``, writes
``VAL_ROOT/jingwei_round1_test_a_20190619/IMAGE.png`` (RGBA: the source inside the validation tiles,
no-data everywhere else) and ``IMAGE_label.png`` beside it: ``VAL_ROOT`` (default ``DATA_ROOT/val``) is
a data root of the contract's layout whose test images are the validation blocks, so every test-side
script works on it with ``--data_root VAL_ROOT --images image_1 image_2``. The models never trained on
these pixels (the split is spatially disjoint), so maps predicted on them, voted and cleaned exactly like
the test maps, score each stage of the pipeline on validation data (run_pipeline.py chooses its final
stage there, never on test labels).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cropmap.data import cut
from cropmap.maps.ensemble import val_rectangles, write_val_image
from cropmap.core.cli import run_cli
from cropmap.core.errors import InputError
from cropmap.core.files import check_output_dir
from cropmap.core.layout import DEFAULT_TRAIN_IMAGES, LABEL_SUFFIX, TEST_SOURCE_DIR, TRAIN_SOURCE_DIR, tiles_csv, train_dir
from cropmap.data.dataset import SPLITS
from cropmap.data.tiling import BASE_COLUMNS, read_tiles_csv


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Write the validation blocks of the training images as images.",
                                add_help=add_help)
    p.add_argument("--data_root", default="data", help="data root holding train/tiles.csv (default: data)")
    p.add_argument("--images", nargs="+", default=DEFAULT_TRAIN_IMAGES,
                   help="training images (names in the layout, or paths to PNGs or GeoTIFFs with their labels beside them), as "
                        "given to generate_train_data.py (default: image_1 image_2)")
    p.add_argument("--val_root", default=None,
                   help="data root the images are written into, as its test images (default: DATA_ROOT/val)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(args: argparse.Namespace) -> list[Path]:
    root = Path(args.data_root)
    csv_path = tiles_csv(train_dir(root))
    rows = read_tiles_csv(csv_path, required=BASE_COLUMNS + ["split"], hint=" (re-run generate_train_data.py)",
                          choices={"split": SPLITS})
    out_dir = (Path(args.val_root) if args.val_root else root / "val") / TEST_SOURCE_DIR
    sources = cut.resolve(root, TRAIN_SOURCE_DIR, args.images, with_label=True)
    check_output_dir(out_dir)
    written = []
    for src in sources:
        rects = val_rectangles(rows, src.name)
        if not len(rects):
            print(f"{src.name}: no validation tiles in {csv_path}; skipped")
            continue
        t0 = time.perf_counter()
        suffix = src.image.suffix.lower()  # a GeoTIFF source gives a GeoTIFF, georeferenced like it
        out = out_dir / f"{src.name}{suffix}"
        share = write_val_image(src.image, src.label, rects, out, out_dir / f"{src.name}{LABEL_SUFFIX}{suffix}",
                                progress=not args.quiet)
        print(f"{out}: {len(rects)} validation tiles, {100 * share:.1f}% of the pixels valid, "
              f"in {time.perf_counter() - t0:.1f} s")
        written.append(out)
    if not written:
        raise InputError(f"{csv_path}: no validation tiles for {', '.join(s.name for s in sources)}")
    return written


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
