"""Batched model inference over test windows, with test-time augmentation, stitched into full-size maps.

:func:`predict_image` reads the windows of one source image (the rows of ``tiles.csv`` written by
``generate_test_data.py``), runs any model callable in batches and streams the stitched map (and
optionally per-class probabilities and a preview) to disk; see :mod:`cropmap.stitch` for the blending.

The model is any callable ``model(x) -> logits`` or ``-> {"out": logits, ...}`` with ``x`` float32
``[B, 3, H, W]`` ImageNet-normalised RGB and logits ``[B, C, H, W]``, so tests can pass a fake model.

GPU path: windows are decoded by DataLoader workers into pinned memory, copied with ``non_blocking``,
the model runs in channels_last under autocast (``amp``), and the copy of batch k's probabilities back
to the host overlaps the forward of batch k+1 (a two-deep pipeline), so the device is not left idle
while the CPU stitches.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .data import IMAGENET_MEAN, IMAGENET_STD  # the one definition of the normalisation
from .imageio import InputError, PngStripWriter, read_png, valid_mask, write_png
from .postprocess import prob_paths
from .stitch import BandStitcher, PreviewCanvas

#: TTA levels: "none"; "flip": identity, horizontal and vertical flip; "d4": the 8 flips/90-degree rotations.
TTA_MODES = ("none", "flip", "d4")


class WindowDataset(Dataset):
    """The test windows of one image, in the order of ``rows``.

    Item ``i`` is ``(i, rgba, error)``: ``rgba`` ``uint8 [4, T, T]`` (RGB sources get alpha 255), and
    ``error`` an empty string, or the one-line message of a missing/corrupt window (then ``rgba`` is
    zeros), so that worker processes never raise user errors with their tracebacks.
    """

    def __init__(self, folder: str | os.PathLike, rows: Sequence[dict]):
        self.folder = Path(folder)
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = self.rows[i]
        size = int(row["size"])
        path = self.folder / row["name"]
        try:
            arr = read_png(path)
            if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[:2] != (size, size):
                raise InputError(f"{path}: expected an RGB(A) window of {size}x{size}, got shape {arr.shape}")
        except InputError as e:
            return i, torch.zeros((4, size, size), dtype=torch.uint8), str(e)
        if arr.shape[2] == 3:
            arr = np.concatenate([arr, np.full(arr.shape[:2] + (1,), 255, np.uint8)], axis=2)
        return i, torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))), ""


def normalize(rgba: torch.Tensor) -> torch.Tensor:
    """``uint8 [B, 4 or 3, H, W]`` -> ImageNet-normalised float32 ``[B, 3, H, W]`` (on ``rgba``'s device)."""
    x = rgba[:, :3].float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


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
        amp: autocast (float16 on CUDA, bfloat16 on CPU).

    Returns:
        float32 ``[B, C, H, W]`` softmax probabilities (each pixel sums to 1).
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = torch.float16 if x.device.type == "cuda" else torch.bfloat16
    total = None
    transforms = _transforms(tta)
    for fwd, inv in transforms:
        with torch.autocast(x.device.type, dtype=dtype, enabled=amp):
            logits = _logits(model, fwd(x))
        p = inv(torch.softmax(logits.float(), dim=1))
        total = p if total is None else total.add_(p)
    if len(transforms) > 1:
        total.div_(len(transforms))
    return total[..., :h, :w]


def iter_window_probs(
    model: Callable,
    dataset: WindowDataset,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    workers: int = 0,
    tta: str = "none",
    amp: bool = False,
    channels_last: bool | None = None,
    transform: Callable | None = None,
) -> Iterator[tuple[dict, np.ndarray, np.ndarray]]:
    """Run ``model`` over every window of ``dataset``, in order.

    Yields ``(row, probs, rgba)`` per window: the ``tiles.csv`` row, ``float32 [C, T, T]`` probabilities
    and the window ``uint8 [4, T, T]``. Raises :class:`InputError` for a missing or corrupt window.
    ``transform``: optional ``uint8 [B, 4, T, T] -> uint8 [B, 4, T, T]`` applied to each batch of windows
    before the model (e.g. :func:`cropmap.radiometry.apply_affine`).
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    channels_last = cuda if channels_last is None else channels_last
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=cuda,
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
    )
    pending: deque = deque()  # (indices, rgba, host probs, event) of batches in flight

    def drain(keep: int):
        while len(pending) > keep:
            idx, rgba, probs, event = pending.popleft()
            if event is not None:
                event.synchronize()
            probs = probs.numpy()
            rgba = rgba.numpy()
            for k, i in enumerate(idx.tolist()):
                yield dataset.rows[i], probs[k], rgba[k]

    for idx, rgba, errors in loader:
        for err in errors:
            if err:
                raise InputError(err)
        if transform is not None:
            rgba = transform(rgba)
        x = normalize(rgba.to(device, non_blocking=cuda))
        probs = forward_probs(model, x, tta=tta, amp=amp, channels_last=channels_last)
        if cuda:
            host = torch.empty(probs.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(probs, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host, event = probs, None
        pending.append((idx, rgba, host, event))
        yield from drain(keep=1 if cuda else 0)
    yield from drain(keep=0)


def output_paths(output_dir: str | os.PathLike, image: str, name: str | None = None) -> dict:
    """Where :func:`predict_image` writes for ``image``: ``map``, ``preview`` and ``prob`` (a format string).

    ``{output_dir}/{image}_predict.png`` (or ``{image}_predict_{name}.png`` with a model name),
    the preview ``..._preview.png`` and probabilities ``..._prob{c}.png`` beside it.
    """
    stem = f"{image}_predict" + (f"_{name}" if name else "")
    d = Path(output_dir)
    return {"map": d / f"{stem}.png", "preview": d / f"{stem}_preview.png", "prob": str(d / f"{stem}_prob{{}}.png")}


def image_geometry(rows: Sequence[dict], image: str) -> tuple[int, int, int]:
    """``(height, width, tile)`` of an image from its ``tiles.csv`` rows (InputError if inconsistent)."""
    if not rows:
        raise InputError(f"no test windows of {image} in tiles.csv (run generate_test_data.py)")
    keys = {(int(r["height"]), int(r["width"]), int(r["size"])) for r in rows}
    if len(keys) != 1:
        raise InputError(f"tiles.csv: windows of {image} disagree on height/width/size: {sorted(keys)}")
    return keys.pop()


def predict_image(
    model: Callable,
    rows: Sequence[dict],
    tile_dir: str | os.PathLike,
    map_path: str | os.PathLike,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    workers: int = 0,
    tta: str = "none",
    amp: bool = False,
    blend: str = "gaussian",
    save_probs: bool = False,
    preview_path: str | os.PathLike | None = None,
    preview_size: int = 2048,
    progress: bool = True,
    keep: int | None = None,
    transform: Callable | None = None,
) -> dict:
    """Predict one image's windows and stream the stitched map to ``map_path``.

    Args:
        model: callable (see the module docstring), already on ``device`` and in eval mode.
        rows: the image's ``tiles.csv`` rows (``name, y, x, size, height, width``); any order.
        tile_dir: folder holding the windows (``data/test/image3``).
        map_path: output map, ``uint8 [H, W]`` single-channel PNG, 0 where no window marks a pixel valid.
        blend: ``"gaussian"`` (centre-weighted blending), ``"centre"`` (keep each window's central
            ``keep`` x ``keep`` pixels, default half the window) or ``"none"`` (paste).
        save_probs: also write ``uint8`` probabilities (``round(255 p)``), one single-channel PNG per
            class beside the map (:func:`prob_paths`).
        preview_path: write a downscaled colour preview (longest side ``preview_size``) there.
        transform: optional function applied to each batch of windows before the model (see
            :func:`iter_window_probs`).

    Returns:
        ``{"map": path, "windows": n, "num_classes": C, "probs": [paths], "preview": path or None}``.
    Every file is written under a temporary name and renamed when complete.
    """
    from tqdm import tqdm

    height, width, tile = image_geometry(rows, Path(map_path).stem)
    rows = sorted(rows, key=lambda r: (int(r["y"]), int(r["x"])))
    missing = [r["name"] for r in rows if not os.path.isfile(os.path.join(tile_dir, r["name"]))]
    if missing:
        raise InputError(
            f"{Path(tile_dir) / missing[0]}: file not found ({len(missing)} of {len(rows)} windows in tiles.csv are "
            "missing; run generate_test_data.py)"
        )
    dataset = WindowDataset(tile_dir, rows)
    preview = PreviewCanvas(height, width, preview_size) if preview_path else None
    writers: list[PngStripWriter] = []
    state: dict = {}

    def sink(y: int, labels: np.ndarray, probs: np.ndarray | None) -> None:
        writers[0].write(labels)
        if probs is not None:
            for c, wr in enumerate(writers[1:]):
                wr.write(probs[c])
        if preview is not None:
            preview.add_labels(y, labels)

    stitcher = None
    bar = tqdm(total=len(rows), desc=Path(map_path).name, unit="win", disable=not progress, leave=False)
    try:
        for row, probs, rgba in iter_window_probs(model, dataset, device, batch_size, workers, tta, amp,
                                                  transform=transform):
            if stitcher is None:
                c = probs.shape[0]
                state["num_classes"] = c
                writers.append(PngStripWriter(map_path, width, height))
                if save_probs:
                    writers.extend(PngStripWriter(p, width, height) for p in prob_paths(map_path, c))
                stitcher = BandStitcher(height, width, c, tile, sink, blend=blend, keep_probs=save_probs, keep=keep)
            y, x = int(row["y"]), int(row["x"])
            stitcher.add(y, x, probs, valid_mask(rgba[3]))
            if preview is not None:
                preview.add_image(y, x, rgba[:3].transpose(1, 2, 0))
            bar.update(1)
        stitcher.finish()
        for wr in writers:
            wr.close()
    except BaseException:
        for wr in writers:
            wr.abort()
        raise
    finally:
        bar.close()
    if preview is not None:
        write_png(preview_path, preview.render())
    return {
        "map": Path(map_path),
        "windows": len(rows),
        "num_classes": state["num_classes"],
        "probs": prob_paths(map_path, state["num_classes"]) if save_probs else [],
        "preview": Path(preview_path) if preview_path else None,
    }
