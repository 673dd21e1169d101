"""Prediction of full-size maps: batched model inference over windows, test-time augmentation, blending.

:func:`predict_from_source` reads an image's windows straight from the source image (decoded once, in
bands); :func:`predict_image` reads the windows that ``generate_test_data.py`` cut (the rows of its
``tiles.csv``). Both run any model callable in batches on its device and stream the stitched map (and
optionally per-class probabilities and a colour preview) to disk; see :mod:`cropmap.predict.windows` for the
windows, :mod:`cropmap.predict.stitch` for the blending and :mod:`cropmap.predict.outputs` for the files.

The model is any callable ``model(x) -> logits`` or ``-> {"out": logits, ...}`` with ``x`` float32
``[B, 3, H, W]`` ImageNet-normalised RGB and logits ``[B, C, H, W]``, so tests can pass a fake model.

The work is a pipeline on the model's device, with the host doing only what it must:

    decode thread         source rows -> pinned pieces            (or DataLoader workers: window files)
    main thread           pieces -> device band -> windows -> normalise -> model (channels_last, autocast)
                          -> softmax, TTA average -> blend into the device band of scores -> argmax
    writer threads        finished rows of uint8 labels (and probabilities) -> host -> encode -> file

Only ``uint8`` rows cross back to the host, copied asynchronously; nothing in the main loop waits for
the device. Memory is a band of rows on the device and a few pieces and strips on the host, whatever
the image size.

Several processes (``torchrun``): ``rank``/``world_size`` share one image by rows
(:func:`cropmap.predict.windows.share_groups`); the map is the same, byte for byte, as one process's.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.distributed as dist

from cropmap.predict.adapt import adapt_batchnorm, batchnorm_layers, restore_batchnorm, sample_groups, save_batchnorm
from cropmap.core.cli import progress as progress_bar
from cropmap.core.errors import InputError
from cropmap.data.normalize import normalize  # the one input normalisation
from cropmap.core.device import amp_dtype
from cropmap.core.classes import class_names
from cropmap.core.layout import prob_paths
from cropmap.predict.outputs import MapOutputs, spool_path
from cropmap.raster import RasterInfo, check_image, valid_mask, write_png
from cropmap.predict.stitch import BandStitcher
from cropmap.raster.preview import PreviewCanvas, preview_picture
from cropmap.data.tiling import grid_positions
from cropmap.predict.windows import (Batch, WindowDataset, group_rows, share_groups, source_batches,  # noqa: F401 (re-export)
                      window_file_batches)

#: TTA levels: "none"; "flip": identity, horizontal and vertical flip; "d4": the 8 flips/90-degree rotations.
TTA_MODES = ("none", "flip", "d4")


def _logits(model: Callable, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out["out"] if isinstance(out, dict) else out


def _transforms(tta: str) -> list[tuple[Callable, Callable]]:
    """(forward, inverse) pairs on ``[B, C, H, W]`` tensors for a TTA level."""
    ident = (lambda t: t, lambda t: t)
    hflip = (lambda t: t.flip(-1), lambda t: t.flip(-1))
    vflip = (lambda t: t.flip(-2), lambda t: t.flip(-2))
    if tta == "none":
        return [ident]
    if tta == "flip":
        return [ident, hflip, vflip]
    if tta == "d4":
        out = []
        for k in range(4):
            for flip in (False, True):
                def fwd(t, k=k, flip=flip):
                    t = t.flip(-1) if flip else t
                    return torch.rot90(t, k, (-2, -1))

                def inv(t, k=k, flip=flip):
                    t = torch.rot90(t, -k, (-2, -1))
                    return t.flip(-1) if flip else t

                out.append((fwd, inv))
        return out
    raise ValueError(f"unknown tta {tta!r}; valid: {', '.join(TTA_MODES)}")


@torch.no_grad()
def forward_probs(
    model: Callable, x: torch.Tensor, tta: str = "none", amp: bool = False, channels_last: bool = False, multiple: int = 32
) -> torch.Tensor:
    """Class probabilities of a batch, averaged over the TTA transforms.

    Args:
        model: callable, ``x -> logits`` or ``{"out": logits}``.
        x: float32 ``[B, 3, H, W]`` normalised images; H, W are padded (edge replicate) to ``multiple``
            for the model and the output is cropped back.
        tta: one of :data:`TTA_MODES`.
        amp: autocast in the dtype of :func:`cropmap.core.device.amp_dtype` (the rule of training and evaluation:
            bfloat16 where supported, else float16 on CUDA; bfloat16 on the CPU).

    Returns:
        float32 ``[B, C, H, W]`` softmax probabilities (each pixel sums to 1).
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = amp_dtype(x.device, amp)
    total = None
    transforms = _transforms(tta)
    for fwd, inv in transforms:
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = _logits(model, fwd(x))
        p = inv(torch.softmax(logits.float(), dim=1))
        total = p if total is None else total.add_(p)
    if len(transforms) > 1:
        total.div_(len(transforms))
    return total[..., :h, :w]


_HEAP_KEPT = False


def keep_freed_memory(limit: int = 64 << 20) -> None:
    """Let glibc serve allocations up to ``limit`` bytes from its heap and keep what is freed there.

    By default glibc maps blocks above 128 kB to 32 MB afresh (its threshold adapts) and hands them back
    when freed, so each batch's tensors (windows, normalised input, probabilities: up to 32 MB at 8
    windows) were faulted in page by page again; measured on the development machine, the pipeline with
    a zero-cost model ran 10-20% faster with them kept. Larger blocks (a big model's activations) are
    still mapped and returned, and the heap shrinks when the PNG reader trims it, so peak RSS stays
    that of the old setting (1536^2, DeepLabv3-ResNet-18, 4 windows a batch: 1.07-1.10 GB either way).
    No-op where glibc is not the allocator; once per process.
    """
    global _HEAP_KEPT
    if _HEAP_KEPT:
        return
    _HEAP_KEPT = True
    try:
        import ctypes

        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, int(limit))
    mallopt(m_trim_threshold, int(limit))


@torch.no_grad()
def num_classes_of(model: Callable, device: torch.device | str = "cpu", amp: bool = False) -> int:
    """The number of classes ``model`` predicts (one forward pass of a small zero image)."""
    return int(forward_probs(model, torch.zeros((1, 3, 64, 64), device=device), amp=amp).shape[1])


def image_geometry(rows: Sequence[dict], image: str) -> tuple[int, int, int]:
    """``(height, width, tile)`` of an image from its ``tiles.csv`` rows (InputError if inconsistent)."""
    if not rows:
        raise InputError(f"no test windows of {image} in tiles.csv (run generate_test_data.py)")
    keys = {(int(r["height"]), int(r["width"]), int(r["size"])) for r in rows}
    if len(keys) != 1:
        raise InputError(f"tiles.csv: windows of {image} disagree on height/width/size: {sorted(keys)}")
    height, width, tile = keys.pop()
    outside = next((r for r in rows if int(r["y"]) >= height or int(r["x"]) >= width), None)
    if outside is not None:
        raise InputError(f"tiles.csv: window {outside['name']} (y {outside['y']}, x {outside['x']}) starts outside "
                         f"its image {image} ({height}x{width})")
    return height, width, tile


def assign_images(sizes: Sequence[int], world_size: int) -> list[list[int]]:
    """Whole images per process: indices of ``sizes`` (pixels) dealt largest first to the least-loaded process."""
    load = [0] * world_size
    out: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        out[r].append(i)
        load[r] += sizes[i]
    return [sorted(o) for o in out]


def _all_gather(obj, world_size: int) -> list:
    if world_size == 1:
        return [obj]
    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


@dataclass
class PredictOptions:
    """How a model's maps are made: what predict.py's flags set, carried as one object down to the model loop.

    The defaults are predict.py's. Per image, the functions below take ``like`` (georeferencing),
    ``preview_path`` and ``transform`` (radiometry) besides.
    """

    device: torch.device | str = "cpu"
    batch_size: int = 8  # windows per forward pass
    workers: int = 0  # DataLoader processes decoding pre-cut window files
    tile_size: int = 512  # windows cut from a source: side ...
    stride: int | None = None  # ... and step (default: half a window)
    tta: str = "none"  # one of TTA_MODES
    amp: bool = False  # autocast (cropmap.core.device.amp_dtype)
    channels_last: bool = True  # feed the model channels_last batches (convert the model too)
    blend: str = "gaussian"  # one of cropmap.predict.stitch.BLEND_MODES
    keep: int | None = None  # blend "centre": side of each window's kept square (default: half the window)
    save_probs: bool = False  # also write uint8 probabilities, one file per class (layout.prob_paths)
    preview_size: int = 2048  # longest side of the colour preview (written when a preview_path is given)
    progress: bool = True
    num_classes: int | None = None  # what the model predicts (default: found by one forward pass)
    rank: int = 0  # this process's share of the image (see the module docstring)
    world_size: int = 1
    input_norm: str = "imagenet"  # the model's input normalisation (the checkpoint's args["input_norm"])
    adapt_windows: int = 0  # test-time BatchNorm adaptation on about this many windows (0: off) ...
    adapt_weight: float = 0.3  # ... the image's share of the statistics ...
    adapt_depth: float = 0.25  # ... in this first share of the BatchNorm layers (cropmap.predict.adapt)


def _options(opts: PredictOptions | None, overrides: dict) -> PredictOptions:
    return replace(opts or PredictOptions(), **overrides)


@contextmanager
def _adapted(model: Callable, batches: Callable, groups: list[list[int]], xs: Sequence[int], opts: PredictOptions,
             transform: Callable | None) -> Iterator[int]:
    """Adapt ``model``'s BatchNorm statistics to about ``opts.adapt_windows`` windows spread over the whole
    image (``xs``: its window columns; :mod:`cropmap.predict.adapt`) for the duration of the block, which
    gets the number of windows used (0: not adapted); the training statistics are restored afterwards."""
    if not (opts.adapt_windows > 0 and isinstance(model, torch.nn.Module) and batchnorm_layers(model)):
        yield 0
        return
    sample, step = sample_groups([y for g in groups for y in g], len(xs), opts.adapt_windows)
    chosen = set(list(xs)[step // 2 :: step])

    def sampled():
        for _, bxs, rgba in batches(sample, None):
            idx = [i for i, x in enumerate(bxs) if x in chosen]
            if idx:
                yield rgba[idx]

    bn_state = save_batchnorm(model)
    try:
        yield adapt_batchnorm(model, sampled(), opts.input_norm, transform=transform, amp=opts.amp,
                              channels_last=opts.channels_last, weight=opts.adapt_weight, depth=opts.adapt_depth)
    finally:
        restore_batchnorm(bn_state)


def _predict(model: Callable, batches: Callable[[list, PreviewCanvas | None], Iterator[Batch]],
             groups: list[list[int]], grid: tuple[int, int, int], map_path: str | os.PathLike, opts: PredictOptions, *,
             like: RasterInfo | None, preview_path: str | os.PathLike | None, transform: Callable | None,
             total: int | None, xs: Sequence[int]) -> dict:
    """Run ``model`` over this process's share of ``groups`` and write the map (see the module docstring).

    ``grid``: ``(height, width, tile)`` of the image and its windows; ``batches(groups, preview)`` yields
    the windows of those groups; ``total``: windows, for the progress bar."""
    keep_freed_memory()
    opts = replace(opts, device=torch.device(opts.device))
    if opts.num_classes is None:
        opts = replace(opts, num_classes=num_classes_of(model, opts.device, opts.amp))
    with _adapted(model, batches, groups, xs, opts, transform) as adapted:
        result = _predict_rows(model, batches, groups, grid, map_path, opts, like=like, preview_path=preview_path,
                               transform=transform, total=total)
    result["adapted"] = adapted
    return result


def _run_windows(model: Callable, batches: Iterator[Batch], stitcher: BandStitcher, opts: PredictOptions,
                 transform: Callable | None, bar) -> int:
    """Normalise, predict and blend every batch into ``stitcher``; returns the number of windows."""
    windows = 0
    for ys, xs, rgba in batches:
        valid = valid_mask(rgba[:, 3])
        x = normalize(rgba if transform is None else transform(rgba), opts.input_norm, valid)
        probs = forward_probs(model, x, tta=opts.tta, amp=opts.amp, channels_last=opts.channels_last)
        if probs.shape[1] != opts.num_classes:
            raise InputError(f"the model predicts {probs.shape[1]} classes, expected {opts.num_classes}")
        stitcher.add_batch(ys, xs, probs, valid)
        windows += len(ys)
        bar.update(len(ys))
    stitcher.finish()
    return windows


def _predict_rows(model: Callable, batches: Callable, groups: list[list[int]], grid: tuple[int, int, int],
                  map_path: str | os.PathLike, opts: PredictOptions, *, like: RasterInfo | None,
                  preview_path: str | os.PathLike | None, transform: Callable | None, total: int | None) -> dict:
    """The model loop of :func:`_predict` over this process's rows, then the merge of the processes' rows."""
    height, width, tile = grid
    rank, world_size = opts.rank, opts.world_size
    mine, rows = share_groups(groups, tile, height, rank, world_size)
    preview = PreviewCanvas(height, width, opts.preview_size) if preview_path else None
    outputs = MapOutputs(map_path, width, height, opts.num_classes, opts.save_probs, like, preview,
                         spool_rank=rank if rank > 0 else None)
    stitcher = BandStitcher(height, width, opts.num_classes, tile, outputs, blend=opts.blend,
                            keep_probs=opts.save_probs, device=opts.device, rows=rows,
                            blend_options={"keep": opts.keep})
    status, windows = "", 0
    bar = progress_bar(total=total, desc=Path(map_path).name, unit="win", disable=not opts.progress or rank > 0,
                       leave=False)
    try:
        windows = _run_windows(model, batches(mine, preview), stitcher, opts, transform, bar)
        if rank > 0:
            outputs.close()  # the spools, for the first process
        else:
            outputs.check()  # (the writer threads go on encoding while the others finish)
    except InputError as e:
        outputs.abort()
        if world_size == 1:
            raise
        status = str(e)
    except BaseException:
        outputs.abort()
        raise
    finally:
        bar.close()
    if world_size > 1:
        windows = _merge_shares(groups, grid, opts, outputs, preview, rows, status, windows)
    if rank == 0:
        outputs.close()
        if preview is not None:
            write_png(preview_path, preview_picture(preview, class_names(opts.num_classes)))
    if world_size > 1:
        dist.barrier()  # every process returns once the files are in place
    return {
        "map": Path(map_path),
        "windows": windows,
        "num_classes": opts.num_classes,
        "probs": prob_paths(map_path, opts.num_classes) if opts.save_probs else [],
        "preview": Path(preview_path) if preview_path else None,
        "rows": rows,
    }


def _merge_shares(groups: list[list[int]], grid: tuple[int, int, int], opts: PredictOptions, outputs: MapOutputs,
                  preview: PreviewCanvas | None, rows: tuple[int, int], status: str, windows: int) -> int:
    """Several processes: gather every process's status, window count and preview rows; the first process
    appends the others' spooled rows to the files. Returns the windows of all processes."""
    height, _, tile = grid
    world_size = opts.world_size
    shares = [share_groups(groups, tile, height, r, world_size)[1] for r in range(world_size)]
    rgb = None if preview is None else preview.rgb[preview.rows(*rows)]
    gathered = _all_gather((status, windows, rgb), world_size)
    failed = [s for s, _, _ in gathered if s]
    if failed:
        outputs.abort()
        raise InputError(failed[0])
    if opts.rank == 0:
        try:
            if preview is not None:
                for (start, stop), (_, _, part) in zip(shares[1:], gathered[1:]):
                    preview.rgb[preview.rows(start, stop)] = part
            outputs.append_spools([(r, shares[r][0]) for r in range(1, world_size)])
        except BaseException:
            outputs.abort()
            for r in range(1, world_size):
                for p in outputs.paths:
                    spool_path(p, r).unlink(missing_ok=True)
            raise
    return sum(n for _, n, _ in gathered)


def predict_image(model: Callable, rows: Sequence[dict], tile_dir: str | os.PathLike, map_path: str | os.PathLike,
                  opts: PredictOptions | None = None, *, like: RasterInfo | None = None,
                  preview_path: str | os.PathLike | None = None, transform: Callable | None = None,
                  **overrides) -> dict:
    """Predict one image from its pre-cut windows and stream the stitched map to ``map_path``.

    Args:
        model: callable (see the module docstring), already on ``opts.device`` and in eval mode.
        rows: the image's ``tiles.csv`` rows (``name, y, x, size, height, width``); any order.
        tile_dir: folder holding the windows (``data/test/image3``).
        map_path: output map, ``uint8 [H, W]`` single-channel, 0 where no window marks a pixel valid;
            its format follows its suffix (:func:`cropmap.raster.open_writer`, georeferenced ``like``).
        opts: :class:`PredictOptions`; ``overrides`` replace some of its fields (``tta="d4"``, ...).
        preview_path: write a downscaled colour preview (longest side ``opts.preview_size``) there.
        transform: optional ``uint8 [B, 4, T, T] -> uint8 [B, 4, T, T]`` applied to each batch of windows on
            the device before the model (e.g. :func:`cropmap.data.radiometry.apply_affine`); the preview shows the
            windows as read.

    With ``opts.adapt_windows`` the model's BatchNorm statistics are first re-estimated on about that many of
    the image's windows, spread over all of it (:mod:`cropmap.predict.adapt`), and restored afterwards.

    Returns:
        ``{"map": path, "windows": n, "num_classes": C, "probs": [paths], "preview": path or None,
        "rows": (start, stop) map rows this process computed, "adapted": windows the statistics came from}``.
    Every file is written under a temporary name and renamed when complete.
    """
    opts = _options(opts, overrides)
    height, width, tile = image_geometry(rows, Path(map_path).stem)
    rows = sorted(rows, key=lambda r: (int(r["y"]), int(r["x"])))
    missing = [r["name"] for r in rows if not os.path.isfile(os.path.join(tile_dir, r["name"]))]
    if missing:
        raise InputError(
            f"{Path(tile_dir) / missing[0]}: file not found ({len(missing)} of {len(rows)} windows in tiles.csv are "
            "missing; run generate_test_data.py)"
        )
    dataset = WindowDataset(tile_dir, rows)
    ys = sorted({int(r["y"]) for r in rows})
    columns = len({int(r["x"]) for r in rows})
    groups = group_rows(ys, columns, opts.batch_size)

    def batches(mine, preview):
        return window_file_batches(dataset, mine, opts.batch_size, opts.device, opts.workers, preview)

    return _predict(model, batches, groups, (height, width, tile), map_path, opts, like=like,
                    preview_path=preview_path, transform=transform,
                    total=len(rows) if opts.world_size == 1 else None, xs=sorted({int(r["x"]) for r in rows}))


def predict_from_source(model: Callable, source: str | os.PathLike, map_path: str | os.PathLike,
                        opts: PredictOptions | None = None, *, preview_path: str | os.PathLike | None = None,
                        transform: Callable | None = None, **overrides) -> dict:
    """Predict one image straight from its source and stream the stitched map to ``map_path``.

    The windows are the contract's grid (:func:`cropmap.data.tiling.grid_positions`: ``opts.tile_size``
    windows every ``opts.stride`` pixels, default half a window, the last row and column moved inward), the
    same as ``generate_test_data.py`` cuts; windows with no valid pixel are skipped. Each source pixel is
    decoded once (:func:`cropmap.predict.windows.source_batches`). The map is written like the source (its
    format and georeferencing, where the map's format keeps them). Other arguments and the result as
    :func:`predict_image`.
    """
    opts = _options(opts, overrides)
    info = check_image(source)
    tile_size = opts.tile_size
    stride = opts.stride or max(1, tile_size // 2)
    ys = grid_positions(info.height, tile_size, stride)
    xs = grid_positions(info.width, tile_size, stride)
    groups = group_rows(ys, len(xs), opts.batch_size)

    def batches(mine, preview):
        return source_batches(source, info, tile_size, xs, mine, opts.batch_size, opts.device, preview)

    return _predict(model, batches, groups, (info.height, info.width, tile_size), map_path, opts, like=info,
                    preview_path=preview_path, transform=transform, total=None, xs=xs)
