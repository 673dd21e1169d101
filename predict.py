"""Predict the test images: run a checkpoint over overlapping windows and stitch full-size maps.

    python predict.py                                   # best checkpoint in data/model/, image_3 and image_4
    python predict.py --checkpoint data/model/x_best.pth --name deeplabv3 --tta d4 --save_probs
    python predict.py --source field.png --device cuda --amp          # any image, straight from its file
    torchrun --nproc_per_node 4 predict.py --amp ...                  # several GPUs share the work

Windows come from ``{data_root}/test/tiles.csv`` and the files ``generate_test_data.py`` wrote when it
lists the image (the original's way); otherwise (or with ``--from_source``) straight from the source image
(``{data_root}/jingwei_round1_test_a_20190619/{image}.png`` or ``.tif``, a path in ``--images``, or
``--source PATH``), decoded once in bands, windows of ``--tile_size`` every ``--stride`` pixels. Writes
``{output_dir}/{image}_predict.png`` (or ``{image}_predict_{name}.png`` with ``--name``, for voting;
``.tif`` with the source's CRS and transform when the source is a GeoTIFF, or with ``--format tif``), a
colour preview ``..._preview.png`` beside it and, with ``--save_probs``, per-class probabilities
``..._prob{c}.png`` (uint8, 255 = 1.0) for ``vote.py --soft``. Beside each map a sidecar
``..._predict[_NAME].json`` names the checkpoint that made it and its validation IoU (``vote.py
--weights auto`` reads it). A source without any valid pixel gets an all-zero map, with a warning.

Under ``torchrun`` the processes take whole images when there are at least as many images as processes,
and otherwise share each image by rows; the maps are the same, byte for byte, as one process's.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
import time
from pathlib import Path
from typing import Callable

import torch

from cropmap.core.cli import (add_hardware_args, add_map_args, experimental_group, fraction, nonneg_int,
                               positive_fraction, positive_int, run_cli, warn)

from cropmap.core.errors import InputError
from cropmap.core.files import check_output_dir, check_output_file
from cropmap.data.radiometry import apply_affine, apply_lut, match_affine, match_histogram, source_stats, window_stats
from cropmap.maps.ensemble import checkpoint_summary, write_sidecar
from cropmap.predict.inference import (TTA_MODES, PredictOptions, assign_images, predict_from_source,
                                       predict_image)
from cropmap.train import checkpoint as ckpt
from cropmap.core.layout import (TEST_SOURCE_DIR, map_path, map_suffix, model_dir, preview_path, source_path, submit_dir,
                                 tiles_csv, window_folder, windows_dir)
from cropmap.raster import check_image
from cropmap.predict.stitch import BLEND_MODES
from cropmap.data.tiling import BASE_COLUMNS, read_tiles_csv


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Predict full-size maps from the test windows or straight from the images",
                                add_help=add_help)
    add_map_args(p, "to predict: names of the layout or paths of sources", num_classes=False)
    p.add_argument("--checkpoint", default=None, help="checkpoint .pth (default: the newest *_best.pth in DATA_ROOT/model)")
    p.add_argument(
        "--name",
        default=None,
        help="model name appended to the output: IMAGE_predict_NAME.png, to keep per-model maps for vote.py "
        "(default: none, IMAGE_predict.png)",
    )
    p.add_argument("--source", default=None,
                   help="predict this one image file (PNG or GeoTIFF) straight from its pixels (instead of --images); "
                        "the map is named after its file name: OUTPUT_DIR/STEM_predict[_NAME] (default: none)")
    p.add_argument("--from_source", action="store_true",
                   help="read the windows of --images from their source images even where test/tiles.csv lists them")
    p.add_argument("--tile_size", type=positive_int, default=512,
                   help="window side when reading from the source, at least 32; pre-cut windows keep theirs (default: 512)")
    p.add_argument("--stride", type=positive_int, default=None,
                   help="distance between windows when reading from the source (default: half the window)")
    p.add_argument("--batch_size", type=positive_int, default=8, help="windows per forward pass (default: 8)")
    p.add_argument("--workers", type=nonneg_int, default=2,
                   help="DataLoader worker processes decoding pre-cut window files (default: 2); a source image is "
                        "decoded by one thread running ahead of the model")
    add_hardware_args(p, "CPU threads of PyTorch in each process (default: PyTorch's choice)",
                      "mixed precision, as in training: bf16 where the GPU supports it, else fp16; bf16 on the CPU")
    p.add_argument("--tta", nargs="?", const="d4", default="none", choices=TTA_MODES,
                   help="test-time augmentation: flip (3 views) or d4 (flips and 90-degree rotations, 8 views); "
                        "--tta alone means d4 (default: %(default)s)")
    p.add_argument("--blend", default="gaussian", choices=BLEND_MODES,
                   help="how overlapping windows combine: gaussian (centre-weighted probabilities), centre (keep only "
                        "each window's central --keep pixels, as the competition's winners did) or none (paste, the "
                        "original's way; use with non-overlapping windows) (default: %(default)s)")
    p.add_argument("--adapt_bn", type=nonneg_int, default=0, metavar="N",
                   help="adapt the model to each image before predicting it: re-estimate its BatchNorm statistics on "
                        "the valid pixels of about N of the image's windows spread over all of it (no labels, no "
                        "weight changes); 0: the training statistics (default: %(default)s)")
    p.add_argument("--adapt_weight", type=fraction, default=0.3, metavar="W",
                   help="with --adapt_bn: the image's share of the statistics, W x image + (1 - W) x training "
                        "(default: %(default)s)")
    p.add_argument("--adapt_depth", type=positive_fraction, default=0.25, metavar="D",
                   help="with --adapt_bn: adapt only the first D share of the BatchNorm layers, in the order the "
                        "forward pass reaches them (the shallow ones, which see the acquisition more than the "
                        "scene's content); the others keep the training statistics (default: %(default)s)")
    p.add_argument("--save_probs", action="store_true",
                   help="also write per-class uint8 probabilities IMAGE_predict[_NAME]_prob{c}.png (for vote.py --soft)")
    p.add_argument("--preview_size", type=nonneg_int, default=2048,
                   help="longest side of the colour preview; 0: no preview (default: %(default)s)")
    g = experimental_group(p)
    g.add_argument("--radiometry", default="none", choices=["histogram", "match", "none"],
                   help="bring a new acquisition's colours to the training tiles' (statistics stored in the "
                        "checkpoint) before the model sees them: histogram maps each channel of the image's valid "
                        "pixels onto the training histogram; match applies the per-channel gain and offset giving "
                        "the training mean and standard deviation; none uses the pixels as they are. Both assume "
                        "the image holds about the training images' mix of land cover (default: %(default)s)")
    g.add_argument("--keep", type=positive_int, default=None,
                   help="with --blend centre: side of each window's central square that is kept; the test windows' "
                        "stride (generate_test_data.py --stride) makes the squares tile the image (default: half "
                        "the window)")
    return p


def plan(args: argparse.Namespace) -> list[dict]:
    """One job per image: ``{"image", "pixels", "out", "like"}`` and either ``"rows", "folder"`` (pre-cut
    windows) or ``"source"`` (a source image); every input and output checked before any work starts."""
    output_dir = submit_dir(args.data_root, args.output_dir)
    check_output_dir(output_dir)

    def job(image: str, origin: Path, **extra) -> dict:  # origin: the source image the map is named after
        out = map_path(output_dir, image, args.name, map_suffix(origin, args.format))
        check_output_file(out)
        return {"image": image, "out": out, **extra}

    if args.source:
        source = Path(args.source)
        info = check_image(source)
        return [job(source.stem, source, source=source, like=info, pixels=info.height * info.width)]
    windows = windows_dir(args.data_root)
    csv_path = tiles_csv(windows)
    listed = []
    if csv_path.exists() and not args.from_source:
        listed = read_tiles_csv(csv_path, BASE_COLUMNS + ["height", "width"], " (re-run generate_test_data.py)")
    jobs = []
    for entry in args.images:
        source = source_path(args.data_root, TEST_SOURCE_DIR, entry)  # a name, or the path of the source
        image = source.stem
        like = check_image(source) if source.is_file() else None  # the map keeps the source's georeferencing
        rows = [r for r in listed if r["image"] == image]
        if rows:
            jobs.append(job(image, source, rows=rows, folder=windows / window_folder(image), like=like,
                            pixels=int(rows[0]["height"]) * int(rows[0]["width"])))
        elif like is None:
            raise InputError(f"{source}: file not found, and {csv_path} lists no windows of {image} "
                             "(give the image's path, or run generate_test_data.py)")
        else:
            jobs.append(job(image, source, source=source, like=like, pixels=like.height * like.width))
    return jobs


def main(args: argparse.Namespace) -> list[dict]:
    from cropmap.train.engine import init_distributed

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tile_size < 32:
        raise InputError(f"--tile_size must be at least 32, got {args.tile_size}")
    if args.keep is not None and args.blend != "centre":
        raise InputError(f"--keep {args.keep} goes with --blend centre, not --blend {args.blend}")
    rank, world_size, device = init_distributed(args.device)
    try:
        return _run(args, rank, world_size, device)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _radiometry(job: dict, args, train_stats: dict | None, verbose: bool) -> tuple[Callable | None, dict | None]:
    """``--radiometry``: the transform that maps this image's colours onto the training tiles' statistics,
    and what the sidecar records of it; ``(None, None)`` when off or when the image has no valid pixel."""
    if not train_stats:
        return None, None
    if "rows" in job:
        stats = window_stats(job["folder"], job["rows"])
    else:
        stats = source_stats(job["source"], progress=not args.quiet and verbose)
    if not stats["pixels"]:
        return None, None  # no valid pixel: nothing to match (the map is all 0)
    if args.radiometry == "histogram":
        lut = match_histogram(stats, train_stats)
        record = {"method": "histogram", "lut": lut.tolist()}
        said = "histogram matching to the training tiles: levels 64/128/192 -> " + ", ".join(
            "/".join(str(int(v)) for v in lut[c, [64, 128, 192]]) for c in range(3)) + " (R, G, B)"
        transform = partial(apply_lut, lut=lut)
    else:
        gain, offset = match_affine(stats, train_stats)
        record = {"method": "match", "gain": [round(float(v), 4) for v in gain],
                  "offset": [round(float(v), 2) for v in offset]}
        said = f"radiometric matching to the training tiles: gain {record['gain']}, offset {record['offset']}"
        transform = partial(apply_affine, gain=gain, offset=offset)
    if verbose:
        print(f"{job['image']}: {said}", flush=True)
    return transform, record


def _training_stats(args, state: dict, checkpoint: Path, rank: int) -> dict | None:
    """The training tiles' statistics ``--radiometry`` needs from the checkpoint (None: off, or not kept)."""
    if args.radiometry == "none":
        return None
    train_stats = state.get("input_stats")
    if train_stats and args.radiometry == "histogram" and "hist" not in train_stats:
        train_stats = None  # trained before the histograms were kept
    if not train_stats and rank == 0:
        warn(f"{checkpoint}: no training statistics for --radiometry {args.radiometry} in the checkpoint (trained "
             "before they were kept): the pixels are used as they are")
    return train_stats


def _load(args, jobs: list[dict], device: torch.device) -> tuple:
    """The checkpoint's model (channels_last), its flags, its state and its path; ``--keep`` checked
    against every image's windows."""
    checkpoint = args.checkpoint or ckpt.find_best(model_dir(args.data_root))
    state = ckpt.load_checkpoint(checkpoint)  # read once: weights, validation scores (sidecar), input statistics
    model, ckpt_args = ckpt.load_model(checkpoint, device=device, state=state)
    for job in jobs:
        tile = int(job["rows"][0]["size"]) if "rows" in job else args.tile_size
        if args.keep is not None and args.keep > tile:
            raise InputError(f"--keep {args.keep} is larger than the windows of {job['image']} ({tile} px)")
    if isinstance(model, torch.nn.Module):
        model = model.to(memory_format=torch.channels_last)  # the batches come channels_last
    return model, ckpt_args, state, checkpoint


def predict_options(args, ckpt_args: dict, device: torch.device, share: tuple[int, int]) -> PredictOptions:
    """predict.py's flags (and the checkpoint's classes and input normalisation) as one options object."""
    num_classes = ckpt_args.get("num_classes")
    return PredictOptions(
        device=device, batch_size=args.batch_size, workers=args.workers, tile_size=args.tile_size,
        stride=args.stride, tta=args.tta, amp=args.amp, blend=args.blend, keep=args.keep,
        save_probs=args.save_probs, preview_size=max(args.preview_size, 1), progress=not args.quiet,
        num_classes=int(num_classes) if num_classes else None, rank=share[0], world_size=share[1],
        input_norm=ckpt_args["input_norm"], adapt_windows=args.adapt_bn, adapt_weight=args.adapt_weight,
        adapt_depth=args.adapt_depth)


def _run(args, rank: int, world_size: int, device: torch.device) -> list[dict]:
    jobs = plan(args)
    model, ckpt_args, state, checkpoint = _load(args, jobs, device)
    summary = checkpoint_summary(checkpoint, state)
    train_stats = _training_stats(args, state, checkpoint, rank)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if rank == 0:
        print(f"checkpoint {checkpoint}: {ckpt_args.get('model')} / {ckpt_args.get('backbone')}, input normalisation "
              f"{ckpt_args['input_norm']}"
              + (f", {world_size} processes" if world_size > 1 else ""), flush=True)
    share = (rank, world_size)
    if world_size > 1 and len(jobs) >= world_size:  # whole images per process
        jobs = [jobs[i] for i in assign_images([j["pixels"] for j in jobs], world_size)[rank]]
        share = (0, 1)
    opts = predict_options(args, ckpt_args, device, share)
    return [_predict_job(model, job, args, opts, summary, train_stats) for job in jobs]


def _predict_job(model, job: dict, args, opts: PredictOptions, summary: dict, train_stats: dict | None) -> dict:
    """One image's map, its sidecar (first process) and a line saying how it went."""
    out, first = job["out"], opts.rank == 0
    start = time.perf_counter()
    transform, radiometry = _radiometry(job, args, train_stats, first)
    preview = preview_path(out) if args.preview_size > 0 else None
    if "rows" in job:
        res = predict_image(model, job["rows"], job["folder"], out, opts, like=job["like"], preview_path=preview,
                            transform=transform)
    else:
        res = predict_from_source(model, job["source"], out, opts, preview_path=preview, transform=transform)
    if not first:
        return res
    adapted = res["adapted"]
    write_sidecar(out, {"map": out.name, "image": job["image"], **summary, "tta": args.tta,
                        "blend": args.blend, "keep": args.keep, "radiometry": radiometry,
                        "adapt_bn": adapted, "adapt_weight": args.adapt_weight if adapted else None,
                        "adapt_depth": args.adapt_depth if adapted else None,
                        "num_classes": res["num_classes"]})
    took = time.perf_counter() - start
    if res["windows"] == 0:
        warn(f"{job['source']}: no valid pixel (alpha is 255 nowhere): its map is all zero")
    how = "pre-cut windows" if "rows" in job else f"source {job['source']}"
    said = f", BatchNorm adapted on {adapted} windows" if adapted else ""
    print(f"{job['image']}: {res['windows']} windows ({how}{said}) in {took:.1f} s, "
          f"{job['pixels'] / 1e6 / max(took, 1e-9):.1f} Mpixel/s -> {res['map']}", flush=True)
    return res


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
