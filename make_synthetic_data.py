"""Write a synthetic competition-like data set in the contract's layout.

    python make_synthetic_data.py                 # small: longest side 3000 px (the demo's size)
    python make_synthetic_data.py --size 8000     # larger
    python make_synthetic_data.py --full          # the real competition sizes (streams; tens of GB)

Writes image_1/image_2 (+ labels) for training and image_3/image_4 (+ labels, for scoring only).
The test images are another acquisition (``cropmap.synthetic.SHIFTED``: other illumination, colour
balance, haze, a slightly finer ground resolution, crops in other proportions), so that scores on them
measure generalisation; ``--no_shift`` renders them like the training images.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from cropmap import synthetic
from cropmap.imageio import InputError, run_cli
from cropmap.tiling import TEST_SOURCE_DIR, TRAIN_SOURCE_DIR


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Synthesize a competition-like RGBA data set.", add_help=add_help)
    p.add_argument("--data_root", default="data", help="data root folder (default: data)")
    p.add_argument("--size", type=int, default=3000,
                   help="longest side, in pixels, of the largest image; the others keep the real proportions (default: 3000)")
    p.add_argument("--full", action="store_true", help="write the real competition sizes (about 7 gigapixels in all)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same files (default: 0)")
    p.add_argument("--images", nargs="+", default=list(synthetic.REAL_SIZES), choices=list(synthetic.REAL_SIZES),
                   help="which images to write (default: all four)")
    p.add_argument("--no_shift", action="store_true",
                   help="render the test images (image_3, image_4) like the training images instead of as "
                        "another acquisition (default: shifted, see cropmap.synthetic.SHIFTED)")
    p.add_argument("--class_prob", default=None,
                   help="per-parcel class probabilities of the training images, comma-separated "
                        "other,tobacco,corn,coix, e.g. 0.5,0.2,0.1,0.2 (default: "
                        + ",".join(f"{v:g}" for v in synthetic.CLASS_PROB) + ")")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def parse_class_prob(text: str | None) -> tuple | None:
    """``"a,b,c,d"`` -> four non-negative floats with a positive sum (InputError otherwise)."""
    if text is None:
        return None
    try:
        values = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise InputError(f"--class_prob {text!r}: expected four numbers separated by commas") from None
    if len(values) != len(synthetic.CLASS_PROB) or min(values) < 0 or sum(values) <= 0:
        raise InputError(f"--class_prob {text!r}: expected {len(synthetic.CLASS_PROB)} non-negative numbers with a positive sum")
    return values


def acquisition(name: str, args: argparse.Namespace) -> "synthetic.Acquisition":
    """How ``name`` is rendered: the shifted acquisition for test images (unless --no_shift), else the training one."""
    acq = synthetic.TRAIN_ACQUISITION
    if name in synthetic.TEST_IMAGES and not args.no_shift:
        return synthetic.SHIFTED
    probs = parse_class_prob(args.class_prob)
    return dataclasses.replace(acq, class_prob=probs) if probs else acq


def main(args: argparse.Namespace) -> None:
    sizes = synthetic.image_sizes(args.size, args.full)
    root = Path(args.data_root)
    parse_class_prob(args.class_prob)  # bad input fails before anything is written
    for i, name in enumerate(args.images):
        folder = root / (TRAIN_SOURCE_DIR if name in synthetic.TRAIN_IMAGES else TEST_SOURCE_DIR)
        h, w = sizes[name]
        t0 = time.perf_counter()
        synthetic.write_image(folder / f"{name}.png", folder / f"{name}_label.png", h, w,
                              seed=args.seed * 1000 + int(name.split("_")[-1]), progress=not args.quiet,
                              acq=acquisition(name, args))
        shifted = " (shifted acquisition)" if acquisition(name, args) is synthetic.SHIFTED else ""
        print(f"{folder / name}.png: {h}x{w} (H x W){shifted} in {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
