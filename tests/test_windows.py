"""Tests of cropmap.predict.windows: window rows grouped into batches, and the shares of processes that
predict one image together."""

import numpy as np

from cropmap.data.tiling import grid_positions
from cropmap.predict.inference import assign_images
from cropmap.predict.windows import batch_bounds, group_rows, share_groups


def test_groups_batches_and_shares():
    assert group_rows([0, 10, 20, 30, 40], columns=3, batch_size=8) == [[0, 10, 20], [30, 40]]
    assert group_rows([0, 10, 20], columns=20, batch_size=8) == [[0], [10], [20]]
    assert batch_bounds(10, 4) == [(0, 4), (4, 7), (7, 10)]  # near-equal, never a batch of 2
    assert batch_bounds(0, 4) == [] and batch_bounds(3, 8) == [(0, 3)]
    assert assign_images([100, 300, 200, 50], 2) == [[1, 3], [0, 2]]
    rng = np.random.default_rng(0)
    for _ in range(50):
        height = int(rng.integers(10, 400))
        tile = int(rng.integers(4, 64))
        stride = int(rng.integers(1, tile + 1))
        ys = grid_positions(height, tile, stride)
        groups = group_rows(ys, int(rng.integers(1, 5)), int(rng.integers(1, 9)))
        world = int(rng.integers(1, 6))
        covered = np.zeros(height, int)
        for r in range(world):
            mine, (start, stop) = share_groups(groups, tile, height, r, world)
            covered[start:stop] += 1
            rows_run = [y for g in mine for y in g]
            # every window row that covers one of this share's rows is run, in whole groups, in order
            need = [y for y in ys if y < stop and y + tile > start] if start < stop else []
            assert set(need) <= set(rows_run) and rows_run == sorted(rows_run)
            assert all(list(g) in [list(x) for x in groups] for g in mine)
        assert (covered == 1).all()
