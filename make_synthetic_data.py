"""Write a synthetic competition-like data set in the contract's layout.

    python make_synthetic_data.py                 # small: longest side 3000 px (the demo's size)
    python make_synthetic_data.py --size 8000     # larger
    python make_synthetic_data.py --full          # the real competition sizes (streams; tens of GB)
    python make_synthetic_data.py --format tif    # the same set as GeoTIFFs (UTM zone 48N, 0.3 m pixels)

Writes image_1/image_2 (+ labels) for training and image_3/image_4 (+ labels, for scoring only).
GeoTIFFs hold RGB and an internal no-data mask (the PNGs' alpha), tiled and compressed (COG), each image
placed side by side in EPSG:32648; labels are ``image_N_label.tif`` with the same georeferencing.
The test images are another acquisition (``cropmap.data.synthetic.SHIFTED``: other illumination, colour
balance, haze, a slightly finer ground resolution, crops in other proportions), so that scores on them
measure generalisation; ``--no_shift`` renders them like the training images.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

from cropmap.data import synthetic
from cropmap.core.cli import positive_int, run_cli, seed_int
from cropmap.core.files import check_output_dir
from cropmap.core.layout import TEST_SOURCE_DIR, TRAIN_SOURCE_DIR, label_path
from cropmap.raster import RasterInfo

#: Where the GeoTIFF set lies: UTM zone 48N (the competition's region, Guizhou, is near 105 E, 25 N),
#: 0.3 m pixels, image N's top-left corner at (EASTING + (N - 1) * SPACING, NORTHING).
CRS = "EPSG:32648"
PIXEL_SIZE = 0.3
EASTING, NORTHING, SPACING = 400_000.0, 2_830_000.0, 30_000.0


def georeferenced(name: str, height: int, width: int) -> RasterInfo:
    """The :class:`RasterInfo` whose CRS and transform the GeoTIFF ``name`` of the synthetic set gets."""
    from cropmap.raster.geotiff import make_georef

    n = int(name.split("_")[-1])
    transform = (PIXEL_SIZE, 0.0, EASTING + (n - 1) * SPACING, 0.0, -PIXEL_SIZE, NORTHING)
    return RasterInfo(name, width, height, 4, 8, "RGBA", "geotiff", make_georef(CRS, transform))


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Synthesize a competition-like RGBA data set.", add_help=add_help)
    p.add_argument("--data_root", default="data", help="data root folder (default: data)")
    p.add_argument("--size", type=positive_int, default=3000,
                   help="longest side, in pixels, of the largest image; the others keep the real proportions (default: %(default)s)")
    p.add_argument("--full", action="store_true", help="write the real competition sizes (about 7 gigapixels in all)")
    p.add_argument("--seed", type=seed_int, default=0, help="random seed: the same seed gives the same files (default: 0)")
    p.add_argument("--images", nargs="+", default=list(synthetic.REAL_SIZES), choices=list(synthetic.REAL_SIZES),
                   help="which images to write (default: all four)")
    p.add_argument("--format", default="png", choices=["png", "tif"],
                   help="png (RGBA) or tif (GeoTIFF: RGB + no-data mask, UTM zone 48N at 0.3 m pixels) (default: %(default)s)")
    p.add_argument("--no_shift", action="store_true",
                   help="render the test images (image_3, image_4) like the training images instead of as "
                        "another acquisition (default: shifted, see cropmap.data.synthetic.SHIFTED)")
    p.add_argument("--class_prob", type=class_prob, default=None,
                   help="per-parcel class probabilities of the training images, comma-separated "
                        "other,tobacco,corn,coix, e.g. 0.5,0.2,0.1,0.2 (default: "
                        + ",".join(f"{v:g}" for v in synthetic.CLASS_PROB) + ")")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def class_prob(text: str) -> tuple[float, ...]:
    """``--class_prob``'s type: ``"a,b,c,d"`` -> one non-negative float per class, with a positive sum."""
    n = len(synthetic.CLASS_PROB)
    try:
        values = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {n} numbers separated by commas, got {text!r}") from None
    if len(values) != n or not all(math.isfinite(v) and v >= 0 for v in values) or sum(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected {n} non-negative numbers with a positive sum, got {text!r}")
    return values


def acquisition(name: str, args: argparse.Namespace) -> "synthetic.Acquisition":
    """How ``name`` is rendered: the shifted acquisition for test images (unless --no_shift), else the training one."""
    acq = synthetic.TRAIN_ACQUISITION
    if name in synthetic.TEST_IMAGES and not args.no_shift:
        return synthetic.SHIFTED
    return dataclasses.replace(acq, class_prob=args.class_prob) if args.class_prob else acq


def main(args: argparse.Namespace) -> None:
    sizes = synthetic.image_sizes(args.size, args.full)
    root = Path(args.data_root)
    check_output_dir(root / TRAIN_SOURCE_DIR, root / TEST_SOURCE_DIR)
    for i, name in enumerate(args.images):
        folder = root / (TRAIN_SOURCE_DIR if name in synthetic.TRAIN_IMAGES else TEST_SOURCE_DIR)
        h, w = sizes[name]
        t0 = time.perf_counter()
        image = folder / f"{name}.{args.format}"
        like = georeferenced(name, h, w) if args.format == "tif" else None
        acq = acquisition(name, args)
        synthetic.write_image(image, label_path(image), h, w, seed=args.seed * 1000 + int(name.split("_")[-1]),
                              progress=not args.quiet, like=like, acq=acq)
        shifted = " (shifted acquisition)" if acq is synthetic.SHIFTED else ""
        print(f"{image}: {h}x{w} (H x W){shifted} in {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
