"""Shared by every test: the repository root importable (the entry scripts and packages live there), and the
fixtures that more than one test file uses."""

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _train_fixtures import make_tiles  # noqa: E402 (it imports the project's packages)


@pytest.fixture(autouse=True)
def keep_thread_count():
    """Runs use ``--threads 1`` (much faster on a shared, busy CPU); give the next test the thread count back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiles(request, tmp_path_factory) -> Path:
    """Training tiles shared by the tests of one module, written once: :func:`_train_fixtures.make_tiles` with
    the module's ``TILES`` (its keyword arguments, e.g. ``TILES = dict(n_train=8, n_val=2, size=32)``)."""
    return make_tiles(tmp_path_factory.mktemp("tiles"), **getattr(request.module, "TILES", {}))


@pytest.fixture
def data_root(tmp_path, tiles):
    """A factory of fresh data roots: ``data_root(name="run")`` makes ``tmp_path/name`` whose train/ links the
    module's shared :func:`tiles` (so that model/ and logs are the test's own)."""

    def make(name: str = "run") -> Path:
        root = tmp_path / name
        root.mkdir()
        os.symlink(tiles / "train", root / "train", target_is_directory=True)
        return root

    return make
