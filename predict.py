"""Predict the test images: run a checkpoint over the test windows and stitch full-size maps.

    python predict.py                                   # best checkpoint in data/model/, image_3 and image_4
    python predict.py --checkpoint data/model/x_best.pth --name deeplabv3 --tta d4 --save_probs

Reads ``{data_root}/test/tiles.csv`` and the windows written by ``generate_test_data.py``; writes
``{output_dir}/{image}_predict.png`` (or ``{image}_predict_{name}.png`` with ``--name``, for voting),
a colour preview ``..._preview.png`` beside it and, with ``--save_probs``, per-class probabilities
``..._prob{c}.png`` (uint8, 255 = 1.0) for ``vote.py --soft``. Beside each map a sidecar
``..._predict[_NAME].json`` names the checkpoint that made it and its validation IoU (``vote.py
--weights auto`` reads it).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
import time
from pathlib import Path

import torch

from cropmap.imageio import run_cli
from cropmap.inference import TTA_MODES, output_paths, predict_image
from cropmap.stitch import BLEND_MODES
from cropmap.tiling import TEST_DIR, read_tiles_csv, test_tile_folder


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Predict full-size maps from the test windows", add_help=add_help)
    p.add_argument("--data_root", default="data", help="data folder of the contract's layout (default: data)")
    p.add_argument("--images", nargs="+", default=["image_3", "image_4"], help="images to predict (default: image_3 image_4)")
    p.add_argument("--checkpoint", default=None, help="checkpoint .pth (default: the newest *_best.pth in DATA_ROOT/model)")
    p.add_argument("--output_dir", default=None, help="where maps go (default: DATA_ROOT/submit)")
    p.add_argument(
        "--name",
        default=None,
        help="model name appended to the output: IMAGE_predict_NAME.png, to keep per-model maps for vote.py "
        "(default: none, IMAGE_predict.png)",
    )
    p.add_argument("--batch_size", type=int, default=8, help="windows per forward pass (default: 8)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes decoding windows (default: 2)")
    p.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default: cuda if available, else cpu)"
    )
    p.add_argument("--amp", action="store_true", help="mixed precision (float16 autocast on CUDA, bfloat16 on CPU)")
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
        help="how overlapping windows combine: gaussian (centre-weighted probabilities), centre (keep only each "
        "window's central --keep pixels: large windows, their centre kept, as the competition's winners did) or none "
        "(paste, the original's way; use with non-overlapping windows) (default: gaussian)",
    )
    p.add_argument("--keep", type=int, default=None,
                   help="with --blend centre: side of each window's central square that is kept; the test windows' "
                        "stride (generate_test_data.py --stride) makes the squares tile the image (default: half the window)")
    p.add_argument("--radiometry", default="match", choices=["match", "none"],
                   help="match: map each image's colours through the per-channel gain and offset that give its valid "
                        "pixels the training tiles' mean and standard deviation (stored in the checkpoint), so a new "
                        "acquisition (other illumination, colour balance, haze) looks like the training one; none: use "
                        "the pixels as they are (default: match, when the checkpoint has the statistics)")
    p.add_argument("--save_probs", action="store_true", help="also write per-class uint8 probabilities IMAGE_predict[_NAME]_prob{c}.png")
    p.add_argument("--preview_size", type=int, default=2048, help="longest side of the colour preview; 0: no preview (default: 2048)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(args: argparse.Namespace) -> list[dict]:
    from cropmap.checkpoint import find_best, load_checkpoint, load_model
    from cropmap.ensemble import checkpoint_summary, write_sidecar
    from cropmap.radiometry import apply_affine, match_affine, window_stats

    data_root = Path(args.data_root)
    output_dir = Path(args.output_dir) if args.output_dir else data_root / "submit"
    checkpoint = args.checkpoint or find_best(data_root / "model")
    device = torch.device(args.device)
    model, ckpt_args = load_model(checkpoint, device=device)
    state = load_checkpoint(checkpoint)
    summary = checkpoint_summary(checkpoint, state)
    train_stats = state.get("input_stats") if args.radiometry == "match" else None
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    print(f"checkpoint {checkpoint}: {ckpt_args.get('model')} / {ckpt_args.get('backbone')}")
    test_dir = data_root / TEST_DIR
    all_rows = read_tiles_csv(test_dir / "tiles.csv")
    results = []
    for image in args.images:
        rows = [r for r in all_rows if r["image"] == image]
        paths = output_paths(output_dir, image, args.name)
        start = time.perf_counter()
        transform, radiometry = None, None
        if train_stats and rows:
            gain, offset = match_affine(window_stats(test_dir / test_tile_folder(image), rows), train_stats)
            transform = partial(apply_affine, gain=gain, offset=offset)
            radiometry = {"gain": [round(float(v), 4) for v in gain], "offset": [round(float(v), 2) for v in offset]}
            print(f"{image}: radiometric matching to the training tiles: gain {radiometry['gain']}, "
                  f"offset {radiometry['offset']}")
        res = predict_image(
            model,
            rows,
            test_dir / test_tile_folder(image),
            paths["map"],
            device=device,
            batch_size=args.batch_size,
            workers=args.workers,
            tta=args.tta,
            amp=args.amp,
            blend=args.blend,
            save_probs=args.save_probs,
            preview_path=paths["preview"] if args.preview_size > 0 else None,
            preview_size=max(args.preview_size, 1),
            progress=not args.quiet,
            keep=args.keep,
            transform=transform,
        )
        write_sidecar(paths["map"], {"map": str(paths["map"]), "image": image, **summary, "tta": args.tta,
                                     "blend": args.blend, "keep": args.keep, "radiometry": radiometry,
                                     "num_classes": res["num_classes"]})
        took = time.perf_counter() - start
        print(f"{image}: {res['windows']} windows in {took:.1f} s -> {res['map']}")
        results.append(res)
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
