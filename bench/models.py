"""Throughput of every segmentation model: forward and forward+backward, contiguous vs channels_last.

Run by hand, e.g. (from the repository root)::

    python -m bench.models --size 512 --batch_size 2 --iters 3 --device cpu
    python -m bench.models --device cuda --batch_size 8 --iters 20 --amp

Prints a markdown table of images/s.  Forward is timed in ``eval()`` under
``torch.inference_mode()``; forward+backward in ``train()`` mode with a mean-of-logits loss
(out + aux), gradients zeroed between iterations, no optimizer step.  Both memory formats
are timed in the same run on the same model and inputs.  Weights are random (nothing is
downloaded).  DeepLabV3 in train mode needs ``--batch_size >= 2`` (BatchNorm after the
ASPP image pooling); a failing cell prints ``error``.
"""

from __future__ import annotations

import argparse
import sys
import time

from bench.common import cuda_sync, markdown_row, markdown_table


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Benchmark cropmap models (images/s)", add_help=True)
    parser.add_argument("--size", type=int, default=512, help="square input side (multiple of 32)")
    parser.add_argument("--batch_size", type=int, default=2, help="images per iteration")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations before each measurement")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        help="model:backbone pairs, e.g. deeplabv3:resnet18 unet:resnet34 (default: all)",
    )
    parser.add_argument("--output_stride", type=int, default=16, help="DeepLabV3 output stride (8 or 16)")
    parser.add_argument("--num_classes", type=int, default=4)
    parser.add_argument("--amp", action="store_true", help="autocast, as in training (cropmap.core.device.amp_dtype: bf16 where supported, else fp16)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads for this run (0 = leave)")
    return parser


def _pairs(args, models_module) -> list[tuple[str, str]]:
    if not args.models:
        return [(m, b) for m in models_module.MODELS for b in models_module.list_backbones(m)]
    pairs = []
    for spec in args.models:
        model, sep, backbone = spec.partition(":")
        if not sep:
            raise SystemExit(f"--models expects model:backbone, got {spec!r}")
        pairs.append((model, backbone))
    return pairs


def _time(step, device, warmup: int, iters: int) -> float:
    """Seconds per call of ``step`` (mean of ``iters`` timed calls after ``warmup``)."""
    for _ in range(warmup):
        step()
    cuda_sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    cuda_sync(device)
    return (time.perf_counter() - start) / iters


def _measure(model, x, device, args, channels_last: bool, label: str) -> tuple[float | None, float | None, float | None]:
    """(forward img/s, forward+backward img/s, peak CUDA MiB of fwd+bwd); None where a step failed."""
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = x.contiguous(memory_format=fmt)
    from cropmap.core.device import amp_dtype

    dtype = amp_dtype(device, args.amp)

    def autocast():
        return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def forward():
        with torch.inference_mode(), autocast():
            model(x)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        with autocast():
            out = model(x)
            loss = sum(v.float().mean() for v in out.values())
        loss.backward()

    results: list[float | None] = []
    for mode, step in (("eval", forward), ("train", forward_backward)):
        model.train(mode == "train")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            results.append(x.shape[0] / _time(step, device, args.warmup, args.iters))
        except (RuntimeError, ValueError) as exc:  # out of memory; batch 1 in train mode (BatchNorm)
            print(f"{label} channels_last={channels_last} {mode}: {exc}", file=sys.stderr)
            results.append(None)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" and results[1] else None
    model.zero_grad(set_to_none=True)
    return results[0], results[1], peak


def main(args) -> str:
    import torch

    import models

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from cropmap.core.device import select_device

    device = select_device(args.device)
    pairs = _pairs(args, models)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
    header = (
        f"Input {args.batch_size}x3x{args.size}x{args.size}, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f" ({torch.get_num_threads()} threads)")
        + f", DeepLabV3 output stride {args.output_stride}, amp {'on' if args.amp else 'off'}, "
        f"{args.iters} timed iterations after {args.warmup} warm-up; images/s (higher is better)."
    )
    columns = ["model", "backbone", "params (M)", "fwd", "fwd channels_last", "fwd+bwd", "fwd+bwd channels_last"]
    if device.type == "cuda":
        columns += ["fwd+bwd peak MiB", "fwd+bwd peak MiB channels_last"]
    lines = [header, "", markdown_table(columns)]
    print("\n".join(lines), flush=True)
    for name, backbone in pairs:
        model = models.build_model(
            name, backbone, num_classes=args.num_classes, output_stride=args.output_stride, aux=True
        ).to(device)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        cells = {cl: _measure(model, x, device, args, cl, f"{name}/{backbone}") for cl in (False, True)}

        def fmt(entry, i):
            if entry[i] is None:
                return "error" if i < 2 else "-"
            return f"{entry[i]:.2f}" if i < 2 else f"{entry[i]:.0f}"

        row = [name, backbone, f"{params:.1f}", fmt(cells[False], 0), fmt(cells[True], 0), fmt(cells[False], 1), fmt(cells[True], 1)]
        if device.type == "cuda":
            row += [fmt(cells[False], 2), fmt(cells[True], 2)]
        line = markdown_row(row)
        lines.append(line)
        print(line, flush=True)
        del model
    return "\n".join(lines)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
