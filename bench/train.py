"""Training throughput: the data loader alone, the full step (loader + augmentation + forward/backward/step)
and a whole training epoch, against the bare model step on the same batches already in memory, in one run.

Run by hand from the repository root on a data root with training tiles, e.g.::

    python -m bench.train --data_root data --backbone resnet18 --crop_size 256 --batch_size 8 \\
        --device cpu --workers 1 --threads 2 --iters 10
    python -m bench.train --data_root data --backbone resnet50 --batch_size 16 --device cuda --amp \\
        --workers 12 --iters 50 --epoch_iters 200                           # on a GPU machine

Takes every training flag of ``train.py`` (model, crops, scales, workers, AMP, ...). Measurements:

* *loader, 1 process*: the training batches (decode + augmentation + collate) produced by the main process
  alone, no model: what one core (one loader worker) delivers;
* *loader, N workers*: the same through the training DataLoader with ``--workers`` processes;
* *full*: the loader of one epoch driving ``Trainer.train_step`` on every batch, exactly as the training
  loop does (warm-up batches untimed: they include starting the loader workers);
* *bare*: the very same batches, collected beforehand, replayed through ``Trainer.train_step``;
* *epoch* (``--epoch_iters N``): ``Trainer.train_one_epoch`` over N iterations, the second of two epochs
  (persistent loader workers), as the training loop logs it (``train_images_per_s``).

Prints images/s of each (median over ``--repeats``), the data-pipeline overhead ``1 - full / bare`` and the
epoch's share of the bare step. Nothing is written.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from bench.common import cuda_sync, markdown_table
from cropmap.core.cli import run_cli
from cropmap.train import engine


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Training throughput: full step with the data pipeline vs bare step on pre-loaded batches.",
        parents=[engine.get_args_parser(add_help=False)], add_help=add_help)
    g = parser.add_argument_group("benchmark")
    g.add_argument("--iters", type=int, default=10, help="timed iterations per measurement (default: 10)")
    g.add_argument("--warmup", type=int, default=2, help="untimed iterations before each measurement (default: 2)")
    g.add_argument("--repeats", type=int, default=2, help="full/bare measurement pairs; the median is reported (default: 2)")
    g.add_argument("--epoch_iters", type=int, default=0,
                   help="also time two training epochs of this many iterations and report the second (default: 0, off)")
    g.add_argument("--repeat_tiles", type=int, default=1,
                   help="list every training tile this many times (in a temporary copy of tiles.csv; the tile files are "
                        "shared), so that a small data set gives epochs of --epoch_iters iterations (default: 1)")
    parser.set_defaults(train=True, quiet=True, exp="bench")
    return parser


def measure_full(trainer: engine.Trainer, epoch: int, warmup: int, iters: int) -> tuple[float, list]:
    """Images/s of ``iters`` loader-fed steps after ``warmup`` untimed ones; also returns the timed batches' sizes."""
    trainer.sampler.set_epoch(epoch)
    trainer.net.train()
    it = iter(trainer.train_loader)
    for _ in range(warmup):
        trainer.train_step(*next(it))
    cuda_sync(trainer.device)
    start, images = time.perf_counter(), 0
    for _ in range(iters):
        x, y = next(it)
        trainer.train_step(x, y)
        images += x.shape[0]
    cuda_sync(trainer.device)
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
    cuda_sync(trainer.device)
    start, images = time.perf_counter(), 0
    for x, y in batches[warmup:]:
        trainer.train_step(x, y)
        images += x.shape[0]
    cuda_sync(trainer.device)
    return images / (time.perf_counter() - start)


def measure_loader(loader, sampler, epoch: int, warmup: int, iters: int) -> float:
    """Images/s of ``loader`` alone (no model): ``iters`` batches after ``warmup`` untimed ones. A loader
    without workers runs with one torch thread, as a DataLoader worker does (several threads make its
    small tensor operations far slower on a busy machine: measured 19 vs 220 images/s with 2 threads)."""
    import torch

    threads = torch.get_num_threads()
    if loader.num_workers == 0:
        torch.set_num_threads(1)
    try:
        sampler.set_epoch(epoch)
        it = iter(loader)
        for _ in range(warmup):
            next(it)
        start, images = time.perf_counter(), 0
        for _ in range(iters):
            images += next(it)[0].shape[0]
        return images / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def measure_epoch(trainer: engine.Trainer, iters: int) -> float:
    """Images/s that ``Trainer.train_one_epoch`` logs for the second of two epochs of ``iters`` iterations."""
    trainer.iters_per_epoch = min(iters, len(trainer.sampler))
    rates = [trainer.train_one_epoch(epoch)["train_images_per_s"] for epoch in (0, 1)]
    return rates[-1]


def repeated_root(data_root: str, times: int, folder: str) -> str:
    """A data root in ``folder`` whose ``train/tiles.csv`` lists each training tile ``times`` times (the
    validation tiles once); ``train/data`` and ``train/label`` link to those of ``data_root``."""
    import csv

    from cropmap.core.layout import tiles_csv, train_dir, train_tile_dirs

    src, dst = train_dir(data_root), train_dir(folder)
    dst.mkdir(parents=True)
    for d in train_tile_dirs(data_root):
        os.symlink(os.path.abspath(d), dst / d.name, target_is_directory=True)
    with open(tiles_csv(src), newline="") as f:
        reader = csv.DictReader(f)
        rows, fields = list(reader), reader.fieldnames
    with open(tiles_csv(dst), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerows([r] * (times if r.get("split") == "train" else 1))
    return folder


def main(args: argparse.Namespace) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        if args.repeat_tiles > 1:
            args.data_root = repeated_root(args.data_root, args.repeat_tiles, tmp)
        return run(args)


def run(args: argparse.Namespace) -> dict:
    from torch.utils.data import DataLoader

    from cropmap.data.dataset import collate

    args.iters_per_epoch = None
    trainer = engine.Trainer(args)
    need = args.warmup + args.iters
    if len(trainer.sampler) < need:
        from cropmap.core.errors import InputError

        raise InputError(f"{len(trainer.sampler)} batches per epoch, fewer than --warmup + --iters = {need}")
    single = DataLoader(trainer.train_set, batch_sampler=trainer.sampler, num_workers=0, collate_fn=collate)
    full, bare, one, many = [], [], [], []
    epoch_rate = None
    try:
        for r in range(args.repeats):
            one.append(measure_loader(single, trainer.sampler, r, args.warmup, args.iters))
            if args.workers > 0:
                many.append(measure_loader(trainer.train_loader, trainer.sampler, r, args.warmup, args.iters))
            batches = collect(trainer, r, need)
            bare.append(measure_bare(trainer, batches, args.warmup))
            full.append(measure_full(trainer, r, args.warmup, args.iters)[0])
            print(f"repeat {r + 1}: loader {one[-1]:.2f} images/s in 1 process"
                  + (f", {many[-1]:.2f} with {args.workers} workers" if many else "")
                  + f"; full {full[-1]:.2f} images/s, bare {bare[-1]:.2f} images/s", flush=True)
        if args.epoch_iters > 0:
            epoch_rate = measure_epoch(trainer, args.epoch_iters)
    finally:
        trainer.close(barrier=False)
    result = {"full": statistics.median(full), "bare": statistics.median(bare),
              "loader_1": statistics.median(one), "loader_n": statistics.median(many) if many else None,
              "epoch": epoch_rate}
    result["overhead_pct"] = 100.0 * (1.0 - result["full"] / result["bare"])
    print(f"\n{args.model} {args.backbone}, crops {trainer.scales}, batch sizes {trainer.batch_sizes}, "
          f"{args.workers} workers, device {trainer.device}, threads {args.threads or 'default'}, "
          f"AMP {'on' if args.amp else 'off'}, {args.iters} timed iterations x {args.repeats} repeats")
    bare_rate = result["bare"]
    rows = [["loader alone, 1 process (one worker's rate)", f"{result['loader_1']:.2f}",
             f"{result['loader_1'] / bare_rate:.2f}"]]
    if result["loader_n"] is not None:
        rows.append([f"loader alone, {args.workers} workers", f"{result['loader_n']:.2f}",
                     f"{result['loader_n'] / bare_rate:.2f}"])
    rows += [["full (loader + augmentation + fwd/bwd/step)", f"{result['full']:.2f}",
              f"{result['full'] / bare_rate:.3f}"],
             ["bare (fwd/bwd/step on pre-loaded batches)", f"{bare_rate:.2f}", "1"]]
    if epoch_rate is not None:
        rows.append([f"training epoch of {trainer.iters_per_epoch} iterations (train_one_epoch, 2nd epoch)",
                     f"{epoch_rate:.2f}", f"{epoch_rate / bare_rate:.3f}"])
    print(markdown_table(["what", "images/s", "share of the bare step"], rows))
    print(f"data pipeline overhead: {result['overhead_pct']:.1f}%")
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
