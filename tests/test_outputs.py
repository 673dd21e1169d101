"""Tests of cropmap.predict.outputs: the strips that other processes spool, replayed by the first process with
the writes one process makes."""

from pathlib import Path

import numpy as np
import torch


def test_spooled_rows_reach_the_writer_as_one_process_writes_them(tmp_path, monkeypatch):
    """Processes 1..N-1 spool their strips; the first replays them with the same writes, in the same order
    (so that the encoded file is byte for byte one process's, whatever the format's chunking)."""
    import cropmap.predict.outputs as outputs

    calls = []

    class Recorder:
        def __init__(self, path, width, height, channels=1, like=None, role="map"):
            self.path = Path(path)

        def write(self, strip):
            calls.append((self.path.name, strip.shape, int(strip.sum())))

        def close(self):
            return self.path

        def abort(self):
            pass

    monkeypatch.setattr(outputs, "open_writer", Recorder)
    rng = np.random.default_rng(0)
    strips = [(y, torch.from_numpy(rng.integers(0, 4, (h, 9), dtype=np.uint8)),
               torch.from_numpy(rng.integers(0, 256, (2, h, 9), dtype=np.uint8)))
              for y, h in [(0, 5), (5, 3), (8, 7), (15, 1), (16, 4)]]
    one = outputs.MapOutputs(tmp_path / "m.png", 9, 20, num_classes=2, save_probs=True)
    for s in strips:
        one(*s)
    one.close()
    def per_file(records):
        return {name: [c for c in records if c[0] == name] for name in sorted({c[0] for c in records})}

    expected, calls[:] = per_file(calls), []
    first = outputs.MapOutputs(tmp_path / "m.png", 9, 20, num_classes=2, save_probs=True)
    second = outputs.MapOutputs(tmp_path / "m.png", 9, 20, num_classes=2, save_probs=True, spool_rank=1)
    for s in strips[:2]:
        first(*s)
    for s in strips[2:]:
        second(*s)
    second.close()
    assert outputs.spool_path(tmp_path / "m_prob1.png", 1).exists()
    first.append_spools([(1, 8)])
    first.close()
    assert per_file(calls) == expected and len(expected) == 3  # per file, the same strips in the same order
    assert not list(tmp_path.glob(".*"))  # the spools are gone
