"""The files of one predicted map, fed with finished rows from the model's device.

:class:`MapOutputs` is a stitcher's sink (:class:`cropmap.predict.stitch.BandStitcher`): it takes rows of ``uint8``
labels (and probabilities) on the device, copies them to the host (pinned memory, asynchronously on
CUDA) and hands them to one writer thread per file (the map, and each probability plane), which encode
them (``zlib`` releases the GIL) while the model runs on. Writers come from :func:`cropmap.raster.open_writer`
(the format of the map's suffix, georeferenced ``like`` its source where the format can), so every file
is written under a temporary name and renamed into place when complete.

Several processes sharing one image (``predict.py`` under ``torchrun``): the first process streams its
rows into the real files; every other one spools its rows, raw, into ``.NAME.rankR.part`` beside each
file, and the first process appends the spools in rank order before it closes the files
(:meth:`MapOutputs.append_spools`).

Memory: a few strips per file in flight (the queues are bounded), whatever the image size.
"""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path

import numpy as np
import torch

from cropmap.core.layout import prob_paths
from cropmap.raster import RasterInfo, open_writer
from cropmap.raster.preview import PreviewCanvas

#: Strips queued per writer thread before the producer waits.
QUEUE_STRIPS = 4


def spool_path(path: str | os.PathLike, rank: int) -> Path:
    """Where process ``rank`` spools its rows of the file ``path``: ``.NAME.rankR.part`` beside it."""
    p = Path(path)
    return p.with_name(f".{p.name}.rank{rank}.part")


class SpoolWriter:
    """Raw strips in a hidden file, each a little-endian ``int32`` row count and ``uint8 [h, W]`` rows; the
    writer interface of :func:`open_writer`. The strips are replayed as they came (:func:`read_spool`), so that
    the final file gets the very writes one process would have made (its encoding is then the same, byte
    for byte)."""

    def __init__(self, path: str | os.PathLike, width: int):
        self.path, self.width = Path(path), int(width)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "wb")

    def write(self, strip: np.ndarray) -> None:
        strip = np.ascontiguousarray(strip, dtype=np.uint8)
        self._f.write(np.int32(strip.shape[0]).astype("<i4").tobytes())
        self._f.write(memoryview(strip).cast("B"))

    def close(self) -> Path:
        self._f.close()
        return self.path

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        self.path.unlink(missing_ok=True)


def read_spool(path: str | os.PathLike, width: int):
    """Yield the ``uint8 [h, W]`` strips of a spool file, as they were written."""
    with open(path, "rb") as f:
        while head := f.read(4):
            h = int(np.frombuffer(head, "<i4")[0])
            yield np.frombuffer(f.read(h * width), np.uint8).reshape(h, width)


class _FileThread(threading.Thread):
    """Writes plane ``plane`` of each strip to ``writer``, in order (and the labels to the preview)."""

    def __init__(self, writer, plane: int, width: int, preview: PreviewCanvas | None):
        super().__init__(daemon=True, name=f"cropmap-write{plane}")
        self.writer, self.plane, self.width, self.preview = writer, plane, width, preview
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUE_STRIPS)
        self.error: BaseException | None = None

    def run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain, so that the producer never blocks
            try:
                if item[0] == "rows":
                    _, y, host, event = item
                    if event is not None:
                        event.synchronize()
                    strip = host[self.plane].numpy()
                    self.writer.write(strip)
                    if self.preview is not None:
                        self.preview.add_labels(y, strip)
                else:  # ("spool", path, first row)
                    _, path, y = item
                    for strip in read_spool(path, self.width):
                        self.writer.write(strip)
                        if self.preview is not None:
                            self.preview.add_labels(y, strip)
                        y += len(strip)
            except BaseException as e:  # noqa: BLE001 - raised by the producer
                self.error = e


class MapOutputs:
    """Writer threads of a map (and, with ``num_classes``, its probability planes); a stitcher's sink.

    Args:
        map_path: the map's final path; probability planes go to :func:`~cropmap.core.layout.prob_paths`.
        width, height: the map's size.
        num_classes: with ``save_probs``, the number of probability planes.
        like: the source's :class:`RasterInfo` (its format and georeferencing, where the format keeps it).
        preview: a canvas that gets the labels as they are written (map writer thread).
        spool_rank: write raw spools for the first process instead of the files (processes 1..N-1).

    Call it as ``outputs(y, labels, probs)`` (tensors on any device), then :meth:`finish`, then
    :meth:`close` (or :meth:`abort` on failure).
    """

    def __init__(self, map_path: str | os.PathLike, width: int, height: int, num_classes: int = 0,
                 save_probs: bool = False, like: RasterInfo | None = None, preview: PreviewCanvas | None = None,
                 spool_rank: int | None = None):
        self.map_path = Path(map_path)
        self.paths = [self.map_path] + (prob_paths(self.map_path, num_classes) if save_probs else [])
        self.width, self.height, self.spool_rank = int(width), int(height), spool_rank
        self.writers: list = []
        self.threads: list[_FileThread] = []
        self._finished = False
        try:
            for i, p in enumerate(self.paths):
                if spool_rank is None:  # the map, then the probabilities (no class colours, no nodata)
                    self.writers.append(open_writer(p, width, height, like=like, role="map" if i == 0 else "data"))
                else:
                    self.writers.append(SpoolWriter(spool_path(p, spool_rank), width))
        except BaseException:
            self.abort()
            raise
        self.threads = [_FileThread(w, i, self.width, preview if i == 0 else None) for i, w in enumerate(self.writers)]
        for t in self.threads:
            t.start()

    def check(self) -> None:
        """Raise the error of a writer thread that failed, if any."""
        for t in self.threads:
            if t.error is not None:
                raise t.error

    def _put(self, item) -> None:
        for t in self.threads:
            while True:  # wait for room, but notice a writer that failed meanwhile
                try:
                    t.queue.put(item, timeout=0.5)
                    break
                except queue.Full:
                    self.check()

    def __call__(self, y: int, labels: torch.Tensor, probs: torch.Tensor | None = None) -> None:
        """Queue map rows ``y..y+h``: ``labels`` ``uint8 [h, W]``, ``probs`` ``uint8 [C, h, W]`` (or None)."""
        self.check()
        planes = labels[None] if probs is None or len(self.threads) == 1 else torch.cat([labels[None], probs])
        event = None
        if planes.device.type == "cuda":
            host = torch.empty(planes.shape, dtype=torch.uint8, pin_memory=True)
            host.copy_(planes, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host = planes
        self._put(("rows", int(y), host, event))

    def append_spools(self, first_rows: list[tuple[int, int]]) -> None:
        """Append the spools of processes ``1..N-1`` (``first_rows[r]``: ``(rank, first map row)``), in order,
        after the rows queued so far; wait until written; delete the spools."""
        for rank, y in first_rows:
            for t, p in zip(self.threads, self.paths):
                if spool_path(p, rank).exists():
                    t.queue.put(("spool", spool_path(p, rank), y))
        self.finish()
        for rank, _ in first_rows:
            for p in self.paths:
                spool_path(p, rank).unlink(missing_ok=True)

    def finish(self) -> None:
        """Wait until every queued strip is written (the threads stop); raise a writer's error."""
        if not self._finished:
            self._finished = True
            for t in self.threads:
                t.queue.put(None)
            for t in self.threads:
                t.join()
        self.check()

    def close(self) -> list[Path]:
        """Finish and close every file (renamed into place; spools stay for the first process)."""
        self.finish()
        return [w.close() for w in self.writers]

    def abort(self) -> None:
        """Stop the threads and discard every partial file."""
        for t in self.threads:
            t.error = t.error or RuntimeError("aborted")
        if not self._finished and self.threads:
            self._finished = True
            for t in self.threads:
                t.queue.put(None)
            for t in self.threads:
                t.join()
        for w in self.writers:
            w.abort()
