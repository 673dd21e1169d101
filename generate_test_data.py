"""Cut the test mosaics into overlapping RGBA windows for predict.py (contract: data/test/image3/, tiles.csv).

    python generate_test_data.py
    python generate_test_data.py --tile_size 512 --stride 256

Windows overlap (default stride: half a tile) so that predict.py can blend them; the last row and column
are moved inward to end at the far edge. Windows whose pixels are all no-data are not written. Streams
each source once; memory does not grow with the image size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cropmap import cut
from cropmap.imageio import run_cli
from cropmap.tiling import BASE_COLUMNS, TEST_DIR, TEST_SOURCE_DIR, test_tile_folder, write_tiles_csv


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Cut test images into overlapping windows.", add_help=add_help)
    p.add_argument("--data_root", default="data", help="data root folder (default: data)")
    p.add_argument("--source_dir", default=TEST_SOURCE_DIR,
                   help=f"folder under --data_root holding the sources (default: {TEST_SOURCE_DIR})")
    p.add_argument("--images", nargs="+", default=["image_3", "image_4"],
                   help="names in --source_dir, or paths to PNGs (default: image_3 image_4)")
    p.add_argument("--tile_size", type=int, default=512, help="window side in pixels (default: 512)")
    p.add_argument("--stride", type=int, default=None, help="distance between windows (default: half the window)")
    p.add_argument("--workers", type=int, default=2, help="threads encoding PNG windows (default: 2)")
    p.add_argument("--compression", type=int, default=0, choices=range(10), metavar="0-9",
                   help="PNG zlib level of the image tiles: 0 (default) stores them uncompressed, fastest to write "
                        "and to read in training, about twice the disk of level 1-9; label tiles are always compressed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(args: argparse.Namespace) -> list[dict]:
    stride = args.stride or max(1, args.tile_size // 2)
    sources = cut.resolve(args.data_root, args.source_dir, args.images, with_label=False)
    cut.validate(sources)
    out = Path(args.data_root) / TEST_DIR
    csv_path = out / "tiles.csv"
    csv_path.unlink(missing_ok=True)
    rows: list[dict] = []
    t0 = time.perf_counter()
    for src in sources:
        folder = out / test_tile_folder(src.name)
        cut.clean_partials(folder)
        new = cut.cut_source(src, args.tile_size, stride, folder, None, lambda t, c: True, rgba_out=True,
                             num_classes=0, workers=args.workers, progress=not args.quiet,
                             compression=args.compression)
        cut.remove_stale(folder, src.name, {r["name"] for r in new})
        rows += new
    write_tiles_csv(csv_path, rows, BASE_COLUMNS + ["height", "width"])
    secs = time.perf_counter() - t0
    mpix = sum(s.info.width * s.info.height for s in sources) / 1e6
    print(f"{len(rows)} windows from {mpix:.0f} Mpixel in {secs:.1f} s ({mpix / max(secs, 1e-9):.1f} Mpixel/s) -> {out}")
    return rows


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
