"""What the accuracy studies share: running a documented script as one step of a study, and scoring maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cropmap.core.layout import label_path


def run(cmd: list[str]) -> None:
    """One step, as run_pipeline.py runs them (printed, stopped on failure), without progress bars."""
    from run_pipeline import run as run_step

    run_step([*cmd, "--quiet"])


def score(maps: dict[str, Path], sources: dict[str, Path]) -> np.ndarray:
    """Confusion matrix ``int64 [4, 4]`` of the maps (image -> path) over their labelled sources."""
    from cropmap.maps.scoring import score_map

    total = np.zeros((4, 4), np.int64)
    for image, path in maps.items():
        src = sources[image]
        total += np.asarray(score_map(path, label_path(src), src, 4, progress=False).matrix.numpy())
    return total
