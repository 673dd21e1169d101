"""What the benchmarks share: peak memory of a process, workers in fresh processes, best-of-N timing,
Markdown tables and large synthetic sources made of one repeated block.

The benchmarks run from the repository root as modules (``python -m bench.NAME``), so that the project's
packages import as they are; a worker process is started the same way.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"  # the benchmarks' work folders (git ignores it)


def peak_rss_mb() -> float:
    """Peak RSS of this process in MB (VmHWM: unlike ru_maxrss it does not inherit the parent's peak at exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(module: str, argv: Sequence[str], env: dict | None = None) -> dict:
    """Run ``python -m module argv`` in a fresh process (so that its peak RSS is its own) and return the JSON
    object it prints on its last line; a failing worker shows the end of its stderr and stops the benchmark."""
    proc = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        raise SystemExit(f"{module} {' '.join(argv)}: failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def best_of(runs: dict[str, Callable[[], dict]], repeats: int, key: str, larger: bool = False) -> dict[str, dict]:
    """Call every function of ``runs`` (name -> measurement returning a dict) ``repeats`` times, alternating
    between them, and keep for each name the result with the smallest ``key`` (the largest with ``larger``)."""
    best: dict[str, dict] = {}
    for _ in range(repeats):
        for name, run in runs.items():
            r = run()
            if name not in best or (r[key] > best[name][key] if larger else r[key] < best[name][key]):
                best[name] = r
    return best


def markdown_row(cells: Sequence) -> str:
    """One row of a Markdown table (cells printed with ``str``)."""
    return "| " + " | ".join(map(str, cells)) + " |"


def markdown_table(header: Sequence, rows: Sequence[Sequence] = ()) -> str:
    """A Markdown table: the header row, its rule, then ``rows`` (none: the head of a table printed row by row)."""
    return "\n".join([markdown_row(header), "|" + "---|" * len(header), *map(markdown_row, rows)])


def rate_table(title: str, results: dict[str, dict], mpix: float) -> str:
    """The table of workers that each read or write ``mpix`` Mpixel: seconds, Mpixel/s, peak RSS (MB)."""
    return markdown_table([title, "seconds", "Mpixel/s", "peak RSS (MB)"],
                          [[k, f"{r['seconds']:.1f}", f"{mpix / r['seconds']:.1f}", f"{r['maxrss_mb']:.0f}"]
                           for k, r in results.items()])


def cuda_sync(device) -> None:
    """Wait for the GPU's queued work (so that a timer sees it); nothing on other devices."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def write_tiled(path: Path, pattern, height: int, width: int, desc: str | None = None) -> None:
    """Write a ``height`` x ``width`` image whose pixels repeat the array ``pattern`` (``[h, w]`` or
    ``[h, w, C]``) in both directions, 256 rows at a time (bounded memory); ``desc``: a progress bar."""
    import numpy as np
    from tqdm import tqdm

    from cropmap.raster import open_writer

    bh, bw = pattern.shape[:2]
    cols = np.arange(width) % bw
    channels = pattern.shape[2] if pattern.ndim == 3 else 1
    with open_writer(path, width, height, channels) as w:
        for y in tqdm(range(0, height, 256), desc=desc, leave=False, disable=desc is None):
            rows = np.arange(y, min(y + 256, height)) % bh
            w.write(pattern[rows][:, cols])


def write_repeated(src: Path, label: Path, height: int, width: int, block: int = 2048) -> None:
    """A big source and its label made of one synthetic ``block`` x ``block`` block repeated (minutes instead
    of most of an hour at image_2's size; fine for memory, less so for speed, which follows the content)."""
    from cropmap.data import synthetic

    rgba, lab = synthetic.synthesize_rows(1, block, block, 0, block)
    write_tiled(src, rgba, height, width, desc="repeated source")
    write_tiled(label, lab, height, width, desc="repeated label")
