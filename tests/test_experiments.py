"""Tests of the accuracy studies' code (experiments/): what their tables compute."""

import numpy as np


def test_tricks_bench_table_means_and_changes():
    """experiments.tricks' table: per trick the mIoU of each seed, their mean and spread, the change against
    the baseline of the same seed, and the lowest crop IoU on test."""
    from experiments import tricks

    def cm(tp):  # diagonal confusion with one error row: IoU of class c = tp[c] / (tp[c] + 1)
        m = np.diag(tp).astype(np.int64)
        m[1, 0] += 1
        m[2, 0] += 1
        m[3, 0] += 1
        return m.tolist()

    base = {0: {"test": cm([9, 1, 3, 4]), "val": cm([9, 1, 1, 1])}, 1: {"test": cm([9, 3, 3, 4]), "val": cm([9, 1, 1, 1])}}
    jit = {0: {"test": cm([9, 3, 3, 4]), "val": cm([9, 1, 1, 1])}, 1: {"test": cm([9, 3, 3, 4]), "val": cm([9, 3, 1, 1])}}
    lines = tricks.summarize({"baseline": base, "jitter": jit}, [0, 1]).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| baseline |") and lines[3].startswith("| jitter |")
    m0 = (1 / 2 + 3 / 4 + 4 / 5) / 3  # crops tobacco, corn, coix of baseline seed 0
    m1 = (3 / 4 + 3 / 4 + 4 / 5) / 3
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert cells[1] == f"{m0:.3f}, {m1:.3f}" and cells[2] == f"{(m0 + m1) / 2:.3f} ({m1 - m0:.3f})" and cells[3] == "+0.000"
    assert cells[6] == f"{0.5:.3f}"  # tobacco of seed 0
    jcells = [c.strip() for c in lines[3].split("|")[1:-1]]
    assert jcells[3] == f"{(m1 - m0) / 2:+.3f}"  # seed 0 gains m1 - m0, seed 1 nothing
    v0, v1 = 0.5, (3 / 4 + 1 / 2 + 1 / 2) / 3
    assert jcells[5] == f"{(v1 - v0) / 2:+.3f}"
