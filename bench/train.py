"""Training throughput: the full step (loader + augmentation + forward/backward/step) against the bare
model step on the same batches already in memory, side by side in one run.

Run by hand from the repository root on a data root with training tiles, e.g.::

    python bench/train.py --data_root data --backbone resnet18 --crop_size 256 --batch_size 8 \\
        --device cpu --workers 1 --threads 2 --iters 10

Takes every training flag of ``train.py`` (model, crops, scales, workers, AMP, ...). For each repeat:
the *full* measurement iterates the training loader of one epoch exactly as the training loop does
(``Trainer.train_step`` on every batch, warm-up batches untimed: they include starting the loader
workers); the *bare* measurement replays the very same batches, collected beforehand, through
``Trainer.train_step``. Prints images/s of both (median over repeats) and the data-pipeline overhead
``1 - full / bare``. Nothing is written.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cropmap import engine  # noqa: E402
from cropmap.cli import run_cli  # noqa: E402


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Training throughput: full step with the data pipeline vs bare step on pre-loaded batches.",
        parents=[engine.get_args_parser(add_help=False)], add_help=add_help)
    g = parser.add_argument_group("benchmark")
    g.add_argument("--iters", type=int, default=10, help="timed iterations per measurement (default: 10)")
    g.add_argument("--warmup", type=int, default=2, help="untimed iterations before each measurement (default: 2)")
    g.add_argument("--repeats", type=int, default=2, help="full/bare measurement pairs; the median is reported (default: 2)")
    parser.set_defaults(train=True, quiet=True, exp="bench")
    return parser


def _sync(trainer: engine.Trainer) -> None:
    if trainer.device.type == "cuda":
        import torch

        torch.cuda.synchronize(trainer.device)


def measure_full(trainer: engine.Trainer, epoch: int, warmup: int, iters: int) -> tuple[float, list]:
    """Images/s of ``iters`` loader-fed steps after ``warmup`` untimed ones; also returns the timed batches' sizes."""
    trainer.sampler.set_epoch(epoch)
    trainer.net.train()
    it = iter(trainer.train_loader)
    for _ in range(warmup):
        trainer.train_step(*next(it))
    _sync(trainer)
    start, images = time.perf_counter(), 0
    for _ in range(iters):
        x, y = next(it)
        trainer.train_step(x, y)
        images += x.shape[0]
    _sync(trainer)
    return images / (time.perf_counter() - start), images


def collect(trainer: engine.Trainer, epoch: int, count: int) -> list:
    """The first ``count`` batches the loader yields for ``epoch`` (the full measurement's batches)."""
    trainer.sampler.set_epoch(epoch)
    batches = []
    for x, y in trainer.train_loader:
        batches.append((x, y))
        if len(batches) == count:
            break
    return batches


def measure_bare(trainer: engine.Trainer, batches: list, warmup: int) -> float:
    """Images/s of ``Trainer.train_step`` replaying ``batches[warmup:]`` (``batches[:warmup]`` untimed)."""
    trainer.net.train()
    for x, y in batches[:warmup]:
        trainer.train_step(x, y)
    _sync(trainer)
    start, images = time.perf_counter(), 0
    for x, y in batches[warmup:]:
        trainer.train_step(x, y)
        images += x.shape[0]
    _sync(trainer)
    return images / (time.perf_counter() - start)


def main(args: argparse.Namespace) -> dict:
    args.iters_per_epoch = None
    trainer = engine.Trainer(args)
    need = args.warmup + args.iters
    if len(trainer.sampler) < need:
        from cropmap.cli import InputError

        raise InputError(f"{len(trainer.sampler)} batches per epoch, fewer than --warmup + --iters = {need}")
    full, bare = [], []
    try:
        for r in range(args.repeats):
            batches = collect(trainer, r, need)
            bare.append(measure_bare(trainer, batches, args.warmup))
            full.append(measure_full(trainer, r, args.warmup, args.iters)[0])
            print(f"repeat {r + 1}: full {full[-1]:.2f} images/s, bare {bare[-1]:.2f} images/s", flush=True)
    finally:
        trainer.close(barrier=False)
    result = {"full": statistics.median(full), "bare": statistics.median(bare)}
    result["overhead_pct"] = 100.0 * (1.0 - result["full"] / result["bare"])
    print(f"\n{args.model} {args.backbone}, crops {trainer.scales}, batch sizes {trainer.batch_sizes}, "
          f"{args.workers} workers, device {trainer.device}, threads {args.threads or 'default'}, "
          f"AMP {'on' if args.amp else 'off'}, {args.iters} timed iterations x {args.repeats} repeats")
    print("| step | images/s |")
    print("|---|---|")
    print(f"| full (loader + augmentation + fwd/bwd/step) | {result['full']:.2f} |")
    print(f"| bare (fwd/bwd/step on pre-loaded batches) | {result['bare']:.2f} |")
    print(f"data pipeline overhead: {result['overhead_pct']:.1f}%")
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
