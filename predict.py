"""Predict the test images: run a checkpoint over the test windows and stitch full-size maps.

    python predict.py                                   # best checkpoint in data/model/, image_3 and image_4
    python predict.py --checkpoint data/model/x_best.pth --name deeplabv3 --tta d4 --save_probs

Reads ``{data_root}/test/tiles.csv`` and the windows written by ``generate_test_data.py``; writes
``{output_dir}/{image}_predict.png`` (or ``{image}_predict_{name}.png`` with ``--name``, for voting;
``.tif`` with the source's CRS and transform when the source is a GeoTIFF, or with ``--format tif``),
a colour preview ``..._preview.png`` beside it and, with ``--save_probs``, per-class probabilities
``..._prob{c}.png`` (uint8, 255 = 1.0) for ``vote.py --soft``. ``--images`` takes names of the layout or
paths of the sources (PNG or GeoTIFF; the windows are those of the file's stem). A test image without any
valid pixel (generate_test_data.py writes no window for it) gets an all-zero map, with a warning.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from cropmap.cli import InputError, add_map_args, device_name, nonneg_int, positive_int, run_cli, warn
from cropmap.device import select_device
from cropmap.files import check_output_dir, check_output_file
from cropmap.inference import TTA_MODES, predict_image
from cropmap.layout import (TEST_SOURCE_DIR, map_path, map_suffix, model_dir, preview_path, prob_paths, source_path,
                            submit_dir, tiles_csv, window_folder, windows_dir)
from cropmap.raster import any_valid, check_image, open_writer, strip_rows
from cropmap.stitch import BLEND_MODES
from cropmap.tiling import BASE_COLUMNS, read_tiles_csv


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Predict full-size maps from the test windows", add_help=add_help)
    add_map_args(p, "to predict", num_classes=False)
    p.add_argument("--checkpoint", default=None, help="checkpoint .pth (default: the newest *_best.pth in DATA_ROOT/model)")
    p.add_argument(
        "--name",
        default=None,
        help="model name appended to the output: IMAGE_predict_NAME.png, to keep per-model maps for vote.py "
        "(default: none, IMAGE_predict.png)",
    )
    p.add_argument("--batch_size", type=positive_int, default=8, help="windows per forward pass (default: 8)")
    p.add_argument("--workers", type=nonneg_int, default=2, help="DataLoader worker processes decoding windows (default: 2)")
    p.add_argument("--device", type=device_name, default=None,
                   help="cuda, cuda:N or cpu (default: cuda when available, else cpu; cuda means the current GPU)")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision, as in training: bf16 where the GPU supports it, else fp16; bf16 on the CPU")
    p.add_argument(
        "--tta",
        nargs="?",
        const="d4",
        default="none",
        choices=TTA_MODES,
        help="test-time augmentation: flip (3 views) or d4 (flips and 90-degree rotations, 8 views); "
        "--tta alone means d4 (default: none)",
    )
    p.add_argument(
        "--blend",
        default="gaussian",
        choices=BLEND_MODES,
        help="how overlapping windows combine: gaussian (centre-weighted probabilities) or none "
        "(paste, the original's way; use with non-overlapping windows) (default: gaussian)",
    )
    p.add_argument("--save_probs", action="store_true", help="also write per-class uint8 probabilities IMAGE_predict[_NAME]_prob{c}.png")
    p.add_argument("--preview_size", type=nonneg_int, default=2048, help="longest side of the colour preview; 0: no preview (default: 2048)")
    return p


def write_empty_map(out, source, num_classes: int, save_probs: bool) -> None:
    """An all-zero map (and probabilities) of the size of ``source``: the prediction of a source without
    any valid pixel, for which generate_test_data.py writes no window."""
    info = check_image(source)
    paths = [(out, "map")] + ([(p, "data") for p in prob_paths(out, num_classes)] if save_probs else [])
    rows = strip_rows(info.width)
    zeros = np.zeros((rows, info.width), np.uint8)
    for path, role in paths:
        with open_writer(path, info.width, info.height, like=info, role=role) as writer:
            for y in range(0, info.height, rows):
                writer.write(zeros[: min(rows, info.height - y)])


def main(args: argparse.Namespace) -> list[dict]:
    from cropmap.checkpoint import find_best, load_model

    output_dir = submit_dir(args.data_root, args.output_dir)
    check_output_dir(output_dir)
    device = select_device(args.device)
    windows = windows_dir(args.data_root)
    csv_path = tiles_csv(windows)
    all_rows = read_tiles_csv(csv_path, BASE_COLUMNS + ["height", "width"], " (re-run generate_test_data.py)")
    jobs = []  # (image, source, its windows' rows or None for a source without a valid pixel, output map)
    for entry in args.images:
        source = source_path(args.data_root, TEST_SOURCE_DIR, entry)  # a name, or the path of the source
        image = source.stem
        rows = [r for r in all_rows if r["image"] == image]
        out = map_path(output_dir, image, args.name, map_suffix(source, args.format))
        check_output_file(out)
        if not rows:
            if not source.is_file() or any_valid(source):
                raise InputError(f"{csv_path}: no test windows of {image} (run generate_test_data.py with it)")
            rows = None
        jobs.append((image, source, rows, out))
    checkpoint = args.checkpoint or find_best(model_dir(args.data_root))
    model, ckpt_args = load_model(checkpoint, device=device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    print(f"checkpoint {checkpoint}: {ckpt_args.get('model')} / {ckpt_args.get('backbone')}")
    results = []
    for image, source, rows, out in jobs:
        start = time.perf_counter()
        like = check_image(source) if source.is_file() else None  # the map keeps its georeferencing
        if rows is None:
            warn(f"{source}: no valid pixel (alpha is 255 nowhere): its map is all zero")
            num_classes = int(ckpt_args.get("num_classes", 4))
            write_empty_map(out, source, num_classes, args.save_probs)
            res = {"map": out, "windows": 0, "num_classes": num_classes, "preview": None,
                   "probs": prob_paths(out, num_classes) if args.save_probs else []}
        else:
            res = predict_image(
                model,
                rows,
                windows / window_folder(image),
                out,
                device=device,
                batch_size=args.batch_size,
                workers=args.workers,
                tta=args.tta,
                amp=args.amp,
                blend=args.blend,
                save_probs=args.save_probs,
                preview_path=preview_path(out) if args.preview_size > 0 else None,
                preview_size=max(args.preview_size, 1),
                progress=not args.quiet,
                like=like,
            )
        took = time.perf_counter() - start
        print(f"{image}: {res['windows']} windows in {took:.1f} s -> {res['map']}")
        results.append(res)
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
