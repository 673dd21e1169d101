"""What every entry script shares: the user-error type, the runner, flag parsers and progress output.

* :class:`InputError` - a problem with the user's input; :func:`run_cli` prints it as one line and exits 2.
* :func:`short` - the one way an exception's text is shortened into such a line.
* :func:`int_list` - the parser of comma-separated integers (``--scales 512,448``, ``--priority 1,3,2,0``).
* :func:`add_map_args` - the flags that predict.py, vote.py, fill_hole.py and score.py share.
* :func:`progress` - a tqdm bar on a terminal; one line per finished step when output goes to a file or pipe.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Iterable

#: Longest error line printed for a message taken from a library's exception.
MAX_LINE = 200


class InputError(Exception):
    """A problem with the user's input: printed as one line, exit status non-zero, no traceback."""


def short(err: BaseException | str, limit: int = MAX_LINE) -> str:
    """The first non-empty lines (up to 3) of an exception's text, joined and cut to ``limit`` characters."""
    text = [t.strip() for t in str(err).strip().splitlines() if t.strip()]
    line = " ".join(text[:3])[:limit]
    return line or (type(err).__name__ if isinstance(err, BaseException) else "")


def int_list(text: str) -> list[int]:
    """``"512,448"`` -> ``[512, 448]`` (spaces ignored); an ``argparse`` type."""
    try:
        return [int(t) for t in str(text).replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_map_args(p: argparse.ArgumentParser, what: str, num_classes: bool = True) -> None:
    """The flags of the scripts that read or write maps: data root, images, map folder, classes, progress.

    ``what`` completes the help of ``--images`` (e.g. ``"to predict"``).
    """
    from .layout import DEFAULT_TEST_IMAGES, MAP_FORMATS

    p.add_argument("--data_root", default="data", help="data folder of the contract's layout (default: data)")
    p.add_argument("--images", nargs="+", default=list(DEFAULT_TEST_IMAGES),
                   help=f"images {what} (default: {' '.join(DEFAULT_TEST_IMAGES)})")
    p.add_argument("--output_dir", default=None, help="folder of the maps (default: DATA_ROOT/submit)")
    if num_classes:
        p.add_argument("--num_classes", type=int, default=4, help="number of classes of the maps (default: 4)")
    p.add_argument("--format", default=None, choices=list(MAP_FORMATS),
                   help="file format of the maps found or written by image name: png, or tif (GeoTIFF with the "
                        "source's CRS and transform) (default: the source image's format)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_cli(main, args) -> int:
    """Run an entry script's ``main(args)``, turning :class:`InputError` into one line on stderr, exit 2."""
    try:
        main(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


class _Lines:
    """The tqdm calls this project uses, for output that is not a terminal: nothing while the work runs,
    then one line when it ends (``leave=True`` bars only; transient bars print nothing)."""

    def __init__(self, iterable=None, total=None, desc: str = "", unit: str = "it", leave: bool = True, **_):
        self.iterable, self.total, self.desc, self.unit, self.leave = iterable, total, desc, unit, leave
        self.n = 0
        self.postfix = ""
        self._start = time.perf_counter()
        self._closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.n += 1
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **kwargs) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.leave:
            secs = time.perf_counter() - self._start
            total = f"/{self.total}" if self.total is not None else ""
            extra = f", {self.postfix}" if self.postfix else ""
            print(f"{self.desc}: {self.n}{total} {self.unit} in {secs:.1f} s{extra}", file=sys.stderr, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Silent(_Lines):
    def close(self) -> None:
        self._closed = True


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             disable: bool = False, leave: bool = True, **kwargs):
    """A progress bar: tqdm when stderr is a terminal, else one summary line per finished bar.

    ``disable`` (``--quiet``) prints nothing at all. Supports what the project uses of tqdm: iteration,
    ``update``, ``set_postfix``, ``close`` and ``with``.
    """
    if disable:
        return _Silent(iterable, total=total, desc=desc, unit=unit)
    if not sys.stderr.isatty():
        return _Lines(iterable, total=total, desc=desc, unit=unit, leave=leave)
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True, **kwargs)
