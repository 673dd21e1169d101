"""Benchmark: reading tiles with raster.read_png (chunk checksums checked first) vs a bare OpenCV decode.

    python -m bench.png_read                      # 512x512 tiles as the tilers write them
    python -m bench.png_read --size 256 --count 400

read_png checks every chunk (checksums, IEND) before OpenCV decodes, so that a damaged tile is one clear
error line instead of libpng's messages, then returns RGB(A) order. Side by side in one process, alternating,
the best of ``--repeats``: the bare decode (cv2.imdecode of the file's bytes), read_png, and check_bytes
alone. Tiles: training RGB (uncompressed, the default of generate_train_data.py), test RGBA windows
(uncompressed) and RGB at OpenCV's default compression. Random pixels (nothing compresses).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import best_of


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    from cropmap.core.cli import positive_int

    p = argparse.ArgumentParser(description="Time read_png against a bare OpenCV decode.", add_help=add_help)
    p.add_argument("--size", type=positive_int, default=512, help="tile side (default: 512)")
    p.add_argument("--count", type=positive_int, default=200, help="reads per measurement (default: 200)")
    p.add_argument("--repeats", type=positive_int, default=3, help="alternating passes; the best counts (default: 3)")
    return p


def per_call(fn, count: int):
    """A measurement: milliseconds per call of ``fn``, over ``count`` calls."""

    def run() -> dict:
        t = time.perf_counter()
        for _ in range(count):
            fn()
        return {"ms": (time.perf_counter() - t) / count * 1e3}

    return run


def main(args) -> dict:
    import cv2
    import numpy as np

    from cropmap.raster import read_png, write_png
    from cropmap.raster.png import check_bytes

    rng = np.random.default_rng(0)
    kinds = {"RGB, uncompressed": (3, 0), "RGBA, uncompressed": (4, 0), "RGB, OpenCV default": (3, None)}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (channels, compression) in kinds.items():
            path = Path(tmp) / f"t{channels}_{compression}.png"
            write_png(path, rng.integers(0, 256, (args.size, args.size, channels), dtype=np.uint8), compression)
            data = path.read_bytes()

            def bare():
                cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)

            runs = {"bare": bare, "read_png": lambda: read_png(path), "checks": lambda: check_bytes(data, path)}
            timed = best_of({k: per_call(fn, args.count) for k, fn in runs.items()}, args.repeats, "ms")
            best = results[name] = {k: r["ms"] for k, r in timed.items()}
            print(f"{name:22s} {len(data) / 1e6:5.2f} MB: bare decode {best['bare']:.2f} ms, read_png "
                  f"{best['read_png']:.2f} ms ({best['read_png'] / best['bare']:.2f}x), of which checks "
                  f"{best['checks']:.2f} ms", flush=True)
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
