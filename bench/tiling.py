"""Benchmark: cutting a huge image and its label into training tiles (run by hand, never by tests).

    python -m bench.tiling                      # 20000 x 20000 synthetic RGBA + label
    python -m bench.tiling --height 40650 --width 77470 --skip_original   # image_2's real size

Side by side in one run, each in a fresh process (so peak RSS is its own):
  decode      pyvips streaming decode of the image and its label, nothing else (the floor)
  ours        generate_train_data.py (streaming, threads; tiles written into temporary folders that
              replace data/ and label/ at the end, so damaged pixels found halfway leave nothing)
  checkfirst  the alternative way to find damaged pixels before any tile is written: decode the image
              once in full first (its label is decoded by the validation anyway), then as ours
  original    the 2019 way: cv2.imread the whole image and label, slice, cv2.imwrite the tiles
Prints seconds, Mpixel/s, peak RSS and the ratios. Sources are cached under bench/out/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from bench.common import OUT, peak_rss_mb, rate_table, run_worker, write_repeated


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Benchmark the training tiler against the original approach.",
                                add_help=add_help)
    p.add_argument("--height", type=int, default=20000, help="source height in pixels (default: 20000)")
    p.add_argument("--width", type=int, default=20000, help="source width in pixels (default: 20000)")
    p.add_argument("--tile_size", type=int, default=512, help="tile side (default: 512)")
    p.add_argument("--workers", type=int, default=2, help="encoding threads for ours (default: 2)")
    p.add_argument("--out", default=str(OUT), help="work folder (default: bench/out)")
    p.add_argument("--skip_original", action="store_true", help="do not run the original approach")
    p.add_argument("--repeat", action="store_true",
                   help="make the source by repeating one 2048x2048 synthetic block (minutes instead of most of an "
                        "hour at image_2's size; fine for memory, less so for speed)")
    p.add_argument("--worker", choices=["decode", "ours", "checkfirst", "original"], help=argparse.SUPPRESS)
    p.add_argument("--src", help=argparse.SUPPRESS)
    return p


def worker(args) -> dict:
    src = Path(args.src)
    label = src.with_name(src.stem + "_label.png")
    work = Path(args.out) / f"tiles_{args.worker}"
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    if args.worker == "decode":
        from cropmap.raster import iter_strips

        for path in (src, label):
            for _ in iter_strips(path, args.tile_size):
                pass
    elif args.worker in ("ours", "checkfirst"):
        import generate_train_data
        from cropmap.data import cut

        if args.worker == "checkfirst":
            from cropmap.raster import iter_strips

            for _ in iter_strips(src, args.tile_size, rgba=True):
                pass
        swap = [0.0]  # seconds spent putting the temporary folders in place
        replace_dir = cut.replace_dir

        def timed_replace(tmp, path):
            t = time.perf_counter()
            replace_dir(tmp, path)
            swap[0] += time.perf_counter() - t

        cut.replace_dir = timed_replace
        a = generate_train_data.get_args_parser().parse_args(
            ["--data_root", str(work), "--images", str(src), "--tile_size", str(args.tile_size),
             "--workers", str(args.workers), "--quiet"])
        generate_train_data.main(a)
    else:
        import cv2
        import numpy as np

        img = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
        lab = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
        (work / "data").mkdir(parents=True)
        (work / "label").mkdir(parents=True)
        t = args.tile_size
        for y in range(0, img.shape[0] - t + 1, t):
            for x in range(0, img.shape[1] - t + 1, t):
                lt = lab[y : y + t, x : x + t]
                if not np.any((lt > 0) & (lt < 4)):
                    continue
                cv2.imwrite(str(work / "data" / f"{y}_{x}.png"), img[y : y + t, x : x + t, :3])
                cv2.imwrite(str(work / "label" / f"{y}_{x}.png"), lt)
    secs = time.perf_counter() - t0
    tiles = work / "train" / "data" if args.worker in ("ours", "checkfirst") else work / "data"
    n = sum(1 for _ in tiles.iterdir()) if tiles.exists() else 0
    t = time.perf_counter()
    shutil.rmtree(work, ignore_errors=True)  # what a rerun adds to ours: deleting the old tiles
    out = {"seconds": secs, "maxrss_mb": peak_rss_mb(), "tiles": n, "delete_seconds": time.perf_counter() - t}
    if args.worker in ("ours", "checkfirst"):
        out["swap_seconds"] = swap[0]
    return out


def main(args) -> None:
    if args.worker:
        print(json.dumps(worker(args)))
        return
    from cropmap.data import synthetic

    out = Path(args.out)
    src = out / f"src_{args.height}x{args.width}{'_repeat' if args.repeat else ''}" / "bench.png"
    if not src.exists():
        print(f"synthesizing {args.height}x{args.width} -> {src} ...", flush=True)
        src.parent.mkdir(parents=True, exist_ok=True)
        if args.repeat:
            write_repeated(src, src.with_name("bench_label.png"), args.height, args.width)
        else:
            synthetic.write_image(src, src.with_name("bench_label.png"), args.height, args.width, seed=1)
    mpix = args.height * args.width / 1e6
    results = {}
    kinds = ["decode", "ours", "checkfirst"] + ([] if args.skip_original else ["original"])
    for kind in kinds:
        r = results[kind] = run_worker("bench.tiling", ["--worker", kind, "--src", str(src), "--tile_size",
                                                         str(args.tile_size), "--workers", str(args.workers),
                                                         "--out", str(out)])
        print(f"{kind:9s} {r['seconds']:8.1f} s  {mpix / r['seconds']:7.1f} Mpixel/s  "
              f"peak RSS {r['maxrss_mb']:8.0f} MB  tiles {r['tiles']}", flush=True)
    ours = results["ours"]
    print("\n" + rate_table(f"{args.height}x{args.width}", results, mpix))
    print(f"\nours / decode throughput: {results['decode']['seconds'] / ours['seconds']:.2f}")
    check = results["checkfirst"]
    print(f"damaged pixels found before any tile is final: temporary folders {ours['seconds']:.1f} s (of which "
          f"{ours['swap_seconds']:.3f} s putting them in place; a rerun also deletes the old tiles, "
          f"{ours['delete_seconds']:.2f} s) vs decode-check first {check['seconds']:.1f} s: "
          f"{check['seconds'] / ours['seconds']:.2f}x")
    if "original" in results:
        o = results["original"]
        print(f"speed-up over original: {o['seconds'] / ours['seconds']:.2f}x; "
              f"peak RSS ours/original: {ours['maxrss_mb'] / o['maxrss_mb']:.3f}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
