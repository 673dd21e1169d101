"""Write a synthetic competition-like data set in the contract's layout.

    python make_synthetic_data.py                 # small: longest side 3000 px (the demo's size)
    python make_synthetic_data.py --size 8000     # larger
    python make_synthetic_data.py --full          # the real competition sizes (streams; tens of GB)

Writes image_1/image_2 (+ labels) for training and image_3/image_4 (+ labels, for scoring only).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cropmap import synthetic
from cropmap.cli import positive_int, run_cli, seed_int
from cropmap.files import check_output_dir
from cropmap.layout import TEST_SOURCE_DIR, TRAIN_SOURCE_DIR, label_path


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Synthesize a competition-like RGBA data set.", add_help=add_help)
    p.add_argument("--data_root", default="data", help="data root folder (default: data)")
    p.add_argument("--size", type=positive_int, default=3000,
                   help="longest side, in pixels, of the largest image; the others keep the real proportions (default: 3000)")
    p.add_argument("--full", action="store_true", help="write the real competition sizes (about 7 gigapixels in all)")
    p.add_argument("--seed", type=seed_int, default=0, help="random seed: the same seed gives the same files (default: 0)")
    p.add_argument("--images", nargs="+", default=list(synthetic.REAL_SIZES), choices=list(synthetic.REAL_SIZES),
                   help="which images to write (default: all four)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(args: argparse.Namespace) -> None:
    sizes = synthetic.image_sizes(args.size, args.full)
    root = Path(args.data_root)
    check_output_dir(root / TRAIN_SOURCE_DIR, root / TEST_SOURCE_DIR)
    for i, name in enumerate(args.images):
        folder = root / (TRAIN_SOURCE_DIR if name in synthetic.TRAIN_IMAGES else TEST_SOURCE_DIR)
        h, w = sizes[name]
        t0 = time.perf_counter()
        image = folder / f"{name}.png"
        synthetic.write_image(image, label_path(image), h, w,
                              seed=args.seed * 1000 + int(name.split("_")[-1]), progress=not args.quiet)
        print(f"{folder / name}.png: {h}x{w} (H x W) in {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
