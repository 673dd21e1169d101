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

from cropmap.data import cut
from cropmap.core.cli import run_cli
from cropmap.core.errors import InputError
from cropmap.core.files import check_output_dir
from cropmap.core.layout import DEFAULT_TEST_IMAGES, TEST_SOURCE_DIR, windows_dir, window_folder, tiles_csv
from cropmap.data.tiling import BASE_COLUMNS, write_tiles_csv


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Cut test images into overlapping windows.", add_help=add_help)
    cut.add_tiling_args(p, TEST_SOURCE_DIR, DEFAULT_TEST_IMAGES, "window", "half the window")
    return p


def main(args: argparse.Namespace) -> list[dict]:
    stride = args.stride or max(1, args.tile_size // 2)
    out = windows_dir(args.data_root)
    csv_path = tiles_csv(out)
    check_output_dir(out)
    sources = cut.resolve(args.data_root, args.source_dir, args.images, with_label=False)
    cut.validate(sources)
    rows: list[dict] = []
    t0 = time.perf_counter()
    # windows go to temporary folders that replace the image folders once every source is cut
    folders = [out / window_folder(src.name) for src in sources]
    if len(set(folders)) < len(folders):
        dup = next(f for f in folders if folders.count(f) > 1)
        raise InputError(f"--images: two sources would share the window folder {dup}")
    with cut.staged_folders(folders) as tmps:
        for src, tmp in zip(sources, tmps):
            rows += cut.cut_source(src, args.tile_size, stride, tmp, None, lambda t, c: True, rgba_out=True,
                                   num_classes=0, workers=args.workers, progress=not args.quiet,
                                   compression=args.compression)
        csv_path.unlink(missing_ok=True)  # the old index goes before the old windows do
    write_tiles_csv(csv_path, rows, BASE_COLUMNS + ["height", "width"])
    secs = time.perf_counter() - t0
    mpix = sum(s.info.width * s.info.height for s in sources) / 1e6
    print(f"{len(rows)} windows from {mpix:.0f} Mpixel in {secs:.1f} s ({mpix / max(secs, 1e-9):.1f} Mpixel/s) -> {out}")
    return rows


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
