"""Small seeded inputs for the bad-input tests, and a way to run an entry script in-process.

* :func:`make_layout` - the contract's layout with tiny sources: image_1/image_2 (+ labels) for training,
  image_3/image_4 for testing, RGBA with a no-data corner;
* :func:`run_script` - parse and run ``module.main`` through :func:`cropmap.core.cli.run_cli`, as ``python
  module.py ...`` would, and return the exit status and what it printed;
* :func:`constant_model` / :func:`fake_checkpoints` - predict.py without a trained model.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch

from cropmap.train import checkpoint
from cropmap.core.cli import run_cli
from cropmap.raster import write_png

TRAIN_SRC = "jingwei_round1_train_20190619"
TEST_SRC = "jingwei_round1_test_a_20190619"


def make_source(path: Path, h: int, w: int, seed: int, label: bool = True, nodata: bool = True) -> np.ndarray:
    """A random RGBA source (a no-data corner) at ``path`` and, with ``label``, a random label beside it."""
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    if nodata:
        rgba[: h // 3, : w // 3] = 0
    write_png(path, rgba)
    if label:
        lab = rng.integers(0, 4, (h, w), dtype=np.uint8)
        write_png(path.with_name(f"{path.stem}_label.png"), lab)
    return rgba


def make_layout(root: Path, h: int = 40, w: int = 56, seed: int = 0) -> Path:
    """Sources of the contract's layout under ``root``: training images with labels, test images."""
    for i, name in enumerate(["image_1", "image_2"]):
        make_source(root / TRAIN_SRC / f"{name}.png", h + 4 * i, w - 4 * i, seed + i)
    for i, name in enumerate(["image_3", "image_4"]):
        make_source(root / TEST_SRC / f"{name}.png", h - 2 * i, w + 2 * i, seed + 10 + i)
    return root


def run_script(module: str, argv: list[str], capfd, **main_kwargs) -> tuple[int, str, str]:
    """``python module.py argv`` in this process: ``(exit status, stdout, stderr)``.

    Parse errors exit through argparse (status 2, usage and one ``error:`` line); ``main`` runs through
    ``run_cli``. ``capfd`` (pytest's fixture) also catches what C libraries print on the file descriptors.
    """
    mod = importlib.import_module(module)
    capfd.readouterr()
    try:
        args = mod.get_args_parser().parse_args(argv)
    except SystemExit as e:
        out, err = capfd.readouterr()
        return int(e.code or 0), out, err
    main = mod.main if not main_kwargs else (lambda a: mod.main(a, **main_kwargs))
    rc = run_cli(main, args)
    out, err = capfd.readouterr()
    return rc, out, err


def error_lines(err: str) -> list[str]:
    """The lines of stderr that are not warnings."""
    return [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith("warning:")]


def assert_one_error(rc: int, err: str, *words: str) -> str:
    """Exit status 2 and exactly one ``error:`` line (warnings aside) holding ``words``; no traceback."""
    lines = error_lines(err)
    assert rc == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def assert_parse_error(rc: int, err: str, *words: str) -> str:
    """argparse's refusal: exit status 2, the usage, then one ``error: argument --FLAG: ...`` line."""
    assert rc == 2, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert "error: argument" in last, err
    for w in words:
        assert w in last, last
    return last


def constant_model(num_classes: int = 4, favourite: int = 2):
    """A fake model: every pixel's logits favour class ``favourite``."""

    def model(x: torch.Tensor) -> dict:
        logits = torch.zeros(x.shape[0], num_classes, *x.shape[2:])
        logits[:, favourite] = 5.0
        return {"out": logits}

    return model


def fake_checkpoints(monkeypatch, model=None, state: dict | None = None, path: str = "fake_best.pth") -> None:
    """Make predict.py load ``model`` (default: :func:`constant_model`) instead of a checkpoint.

    ``find_best`` names ``path``; ``load_checkpoint`` returns ``state`` (default: no metrics) with the
    model's flags as ``args``.
    """
    model = model or constant_model()
    monkeypatch.setattr(checkpoint, "find_best", lambda folder: Path(path))
    args = {"model": "fake", "backbone": "none", "num_classes": 4}
    full = {"metrics": {}, **(state or {}), "args": args}
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda path, map_location="cpu": full)
    # like a checkpoint that does not name its input normalisation: the oracles read ImageNet-normalised values
    monkeypatch.setattr(checkpoint, "load_model",
                        lambda path, device="cpu", state=None: (model, {**checkpoint.LEGACY_FLAGS, **args}))
