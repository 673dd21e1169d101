"""Benchmark: the map clean-ups of fill_hole.py against reading their inputs (run by hand, never by tests).

    python -m bench.fill                          # a synthetic image_3 of 8000 px on its long side
    python -m bench.fill --size 24000 --methods read segments

The source is make_synthetic_data.py's image_3 (the shifted acquisition) and the map is its label with
5% of the pixels set to random classes (so that every method has work to do). Each method runs in a fresh
process (its peak RSS, VmHWM, is its own), alternating with the others for ``--repeats`` rounds; ``read``
is the bare decode of the map and the source in strips, which every method does once (``segments``
twice for the source). Prints the best time of each, its ratio to ``read`` and the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import OUT, ROOT, best_of, peak_rss_mb, run_worker

METHODS = {
    "read": {},
    "morph": dict(method="morph", max_hole=20000),
    "area": dict(method="area", min_area=400),
    "close": dict(method="close", radius=3),
    "segments": dict(method="segments", edge_percentile=70.0),
}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Time fill_hole.py's methods against reading their inputs.", add_help=add_help)
    p.add_argument("--size", type=int, default=8000, help="make_synthetic_data.py --size: image_2's long side (default: 8000)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), help="what to time (default: all)")
    p.add_argument("--repeats", type=int, default=2, help="rounds; the best time of each method is shown (default: 2)")
    p.add_argument("--out", default=str(OUT / "fill"), help="work folder (default: bench/out/fill)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def worker(args) -> dict:
    from cropmap.maps.postprocess import fill_map
    from cropmap.raster import iter_zip, strip_rows

    out = Path(args.out)
    src, m = out / "jingwei_round1_test_a_20190619" / "image_3.png", out / "map.png"
    t = time.perf_counter()
    if args.worker == "read":
        from cropmap.raster import check_image

        for _ in iter_zip([m, src], strip_rows(check_image(src).width, 5)):
            pass
    else:
        fill_map(m, src, out / f"out_{args.worker}.png", progress=False, **METHODS[args.worker])
    return {"s": time.perf_counter() - t, "rss_mb": peak_rss_mb()}


def prepare(args) -> None:
    import numpy as np

    from cropmap.raster import read_png, write_png

    out = Path(args.out)
    if (out / "map.png").exists():
        return
    subprocess.run([sys.executable, str(ROOT / "make_synthetic_data.py"), "--data_root", str(out), "--size",
                    str(args.size), "--images", "image_3", "--quiet"], check=True)
    label = read_png(out / "jingwei_round1_test_a_20190619" / "image_3_label.png")
    alpha = read_png(out / "jingwei_round1_test_a_20190619" / "image_3.png")[..., 3]
    rng = np.random.default_rng(0)
    noisy = np.where(rng.random(label.shape) < 0.05, rng.integers(0, 4, label.shape), label).astype(np.uint8)
    noisy[(alpha == 0) | (label > 3)] = 0
    write_png(out / "map.png", noisy)


def main(args) -> dict:
    if args.worker:
        print(json.dumps(worker(args)))
        return {}
    prepare(args)
    runs = {name: (lambda name=name: run_worker("bench.fill", ["--worker", name, "--out", args.out]))
            for name in args.methods}
    best = best_of(runs, args.repeats, "s")
    from cropmap.raster import check_image

    info = check_image(Path(args.out) / "jingwei_round1_test_a_20190619" / "image_3.png")
    print(f"map {info.height} x {info.width} ({info.height * info.width / 1e6:.0f} Mpixel), best of {args.repeats}")
    base = best.get("read", {}).get("s")
    for name, r in best.items():
        ratio = f"  {r['s'] / base:5.1f}x read" if base else ""
        print(f"{name:9s} {r['s']:7.2f} s{ratio}  peak RSS {r['rss_mb']:6.0f} MB")
    return best


if __name__ == "__main__":
    main(get_args_parser().parse_args())
