"""What every entry script shares: the user-error type, the runner, flag parsers and progress output.

* :func:`run_cli` - runs a script's ``main``: an :class:`~cropmap.core.errors.InputError` becomes one line, exit 2.
* :func:`int_list` - the parser of comma-separated integers (``--scales 512,448``, ``--priority 1,3,2,0``).
* flag types that check ranges at parse time (:func:`ranged` and its instances :data:`positive_int`,
  :data:`nonneg_int`, :data:`seed_int`, :data:`num_classes_int`, :data:`positive_float`, :data:`nonneg_float`,
  :data:`finite_float`, :data:`fraction`, :data:`positive_int_list`): argparse prints the usage and one
  ``error:`` line naming the flag, exit status 2, before any work starts.
* :func:`device_name` - the flag type of ``--device`` (its spelling; :mod:`cropmap.core.device` selects it).
* :func:`warn` - a one-line warning on stderr; :class:`ArgumentParser` - a parser that remembers which
  flags were typed (:func:`typed_flags`), so a resumed run can tell a retyped flag from a default.
* :func:`add_map_args` - the flags that predict.py, vote.py, fill_hole.py and score.py share.
* :func:`progress` - a tqdm bar on a terminal; one line per finished step when output goes to a file or pipe.
"""

from __future__ import annotations

import argparse
import copy
import math
import re
import signal
import sys
import threading
import time
from typing import Callable, Iterable

from cropmap.core.errors import InputError, short


def int_list(text: str) -> list[int]:
    """``"512,448"`` -> ``[512, 448]`` (spaces ignored); an ``argparse`` type."""
    try:
        return [int(t) for t in str(text).replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


# ---- flag types that check ranges at parse time -------------------------------------------------


def _bound_text(kind: type, low, high, low_open: bool, high_open: bool) -> str:
    what = "an integer" if kind is int else "a number"
    if low is not None and high is not None:
        if kind is int and not low_open and not high_open:
            return f"{what} from {low} to {high}"
        return f"{what} in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{what} {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{what} {'<' if high_open else '<='} {high}"
    return what if kind is int else "a finite number"


def ranged(kind: type = int, low=None, high=None, *, low_open: bool = False, high_open: bool = False) -> Callable:
    """An ``argparse`` type: ``kind(text)`` (``int`` or ``float``) within ``[low, high]``.

    ``None`` leaves an end open; ``low_open`` / ``high_open`` exclude the bound itself. Floats must be
    finite (``nan``, ``inf`` are refused). Out of range, argparse prints the usage and
    ``error: argument --FLAG: expected an integer >= 1, got '0'`` and exits with status 2.
    """
    if kind not in (int, float):
        raise TypeError("kind must be int or float")
    expected = _bound_text(kind, low, high, low_open, high_open)

    def parse(text: str):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        if low is not None and (value < low or (low_open and value == low)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        if high is not None and (value > high or (high_open and value == high)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = f"{kind.__name__} ({expected})"
    return parse


#: 1, 2, 3 ... (sizes, counts, epochs, threads)
positive_int = ranged(int, 1)
#: 0, 1, 2 ... (worker processes, "every N" where 0 is off, areas)
nonneg_int = ranged(int, 0)
#: 0 .. 2**32-1: what every random generator of the project accepts
seed_int = ranged(int, 0, 2**32 - 1)
#: 2 .. 255: labels are 8-bit and 255 means "ignore", so at most 255 classes
num_classes_int = ranged(int, 2, 255)
#: a finite number > 0 (learning rates, scales)
positive_float = ranged(float, 0, low_open=True)
#: a finite number >= 0 (weights, decay, powers)
nonneg_float = ranged(float, 0)
#: any finite number
finite_float = ranged(float)
#: a finite number in [0, 1]
fraction = ranged(float, 0, 1)
#: a percentage in (0, 100] (a share of pixels of which at least some is taken)
percent = ranged(float, 0, 100, low_open=True)
#: a finite number in (0, 1] (a share of which at least some is taken)
positive_fraction = ranged(float, 0, 1, low_open=True)
#: a finite number in [0, 1) (a decay, a momentum, a share short of all)
unit_float = ranged(float, 0, 1, high_open=True)


def positive_int_list(text: str) -> list[int]:
    """``"512,448"`` -> ``[512, 448]``, every entry >= 1 and at least one; an ``argparse`` type."""
    values = int_list(text)
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return values


# ---- devices ------------------------------------------------------------------------------------

_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def device_name(text: str) -> str:
    """An ``argparse`` type for ``--device``: ``cpu``, ``cuda`` or ``cuda:N`` (returned as given).

    Only the spelling is checked here (at parse time, no CUDA call); :func:`cropmap.core.device.select_device`
    checks that the machine has it.
    """
    if not _DEVICE.fullmatch(str(text)):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return str(text)


# ---- messages -----------------------------------------------------------------------------------


def warn(message: str) -> None:
    """Print ``warning: message`` as one line on stderr (the run goes on)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


# ---- a parser that knows which flags were typed -------------------------------------------------

_TYPED = "_typed_flags"


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that also records which flags the command line gave.

    :func:`typed_flags` of the parsed namespace returns their names (``dest``), whatever their
    value: ``--epochs 20`` counts as typed even where 20 is the default. (A second parse with every
    default suppressed, so that only typed flags land in the namespace.)
    """

    def parse_known_args(self, args=None, namespace=None):
        parsed, extras = super().parse_known_args(args, namespace)
        if namespace is None:
            saved = [(a, a.default) for a in self._actions]
            saved_defaults, self._defaults = self._defaults, {}
            try:
                for a in self._actions:
                    a.default = argparse.SUPPRESS
                probe, _ = super().parse_known_args(args, argparse.Namespace())
            finally:
                for a, default in saved:
                    a.default = default
                self._defaults = saved_defaults
            setattr(parsed, _TYPED, frozenset(vars(probe)))
        return parsed, extras


def typed_flags(args: argparse.Namespace) -> frozenset[str] | None:
    """Names (``dest``) of the flags typed on the command line, or None when unknown (a namespace not
    parsed by :class:`ArgumentParser`)."""
    return getattr(args, _TYPED, None)


def plain_flags(args: argparse.Namespace | dict) -> dict:
    """The flags of a run without the bookkeeping entries (names starting with ``_``)."""
    items = args.items() if isinstance(args, dict) else vars(args).items()
    return {k: v for k, v in items if not k.startswith("_")}


def add_hardware_args(p, threads_help: str, amp_help: str) -> None:
    """``--device``, ``--threads`` and ``--amp``, the hardware flags of training and prediction (one device
    rule: :mod:`cropmap.core.device`)."""
    p.add_argument("--device", type=device_name, default=None,
                   help="cuda, cuda:N or cpu (default: cuda when available, else cpu; cuda is the current GPU, "
                        "under torchrun cuda:LOCAL_RANK); on CUDA channels_last and cudnn.benchmark are on")
    p.add_argument("--threads", type=positive_int, default=None, help=threads_help)
    p.add_argument("--amp", action="store_true", help=amp_help)


def add_map_args(p: argparse.ArgumentParser, what: str, num_classes: bool = True) -> None:
    """The flags of the scripts that read or write maps: data root, images, map folder, classes, progress.

    ``what`` completes the help of ``--images`` (e.g. ``"to predict"``).
    """
    from cropmap.core.layout import DEFAULT_TEST_IMAGES, MAP_FORMATS

    p.add_argument("--data_root", default="data", help="data folder of the contract's layout (default: data)")
    p.add_argument("--images", nargs="+", default=list(DEFAULT_TEST_IMAGES),
                   help=f"images {what} (default: {' '.join(DEFAULT_TEST_IMAGES)})")
    p.add_argument("--output_dir", default=None, help="folder of the maps (default: DATA_ROOT/submit)")
    if num_classes:
        p.add_argument("--num_classes", type=num_classes_int, default=4, help="number of classes of the maps (default: 4)")
    p.add_argument("--format", default=None, choices=list(MAP_FORMATS),
                   help="file format of the maps found or written by image name: png, or tif (GeoTIFF with the "
                        "source's CRS and transform) (default: the source image's format)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


#: Title and description of the argument group of flags whose measured effect was nil or negative.
EXPERIMENTAL = ("experimental", "measured neutral or worse so far (see experiments/); kept to measure on other imagery")


def experimental_group(p: argparse.ArgumentParser):
    """The parser's argument group of experimental flags (created once, the same title in every script)."""
    for g in p._action_groups:
        if g.title == EXPERIMENTAL[0]:
            return g
    return p.add_argument_group(*EXPERIMENTAL)


def borrow_flags(dst, parser: argparse.ArgumentParser, flags: dict[str, str] | list[str], experimental=None,
                 **defaults) -> list[str]:
    """Add to ``dst`` (a parser or argument group) flags declared in another script's ``parser``, as declared
    there (type, choices, metavar, help), so that each flag is declared once.

    ``flags``: the ``dest`` names to take, or ``{dest in parser: dest here}`` to take a flag under another
    name (``--format`` as ``--synthetic_format``). ``defaults``: new defaults by (new) ``dest``; help strings
    written with ``%(default)s`` show them. A flag that the source parser files under "experimental" lands in
    the group ``experimental`` (:func:`experimental_group` of the new parser) when given. Returns the new
    ``dest`` names.
    """
    names = flags if isinstance(flags, dict) else {f: f for f in flags}
    actions = {a.dest: a for a in parser._actions}
    owner = {a.dest: g.title for g in parser._action_groups for a in g._group_actions}
    out = []
    for dest, new in names.items():
        action = copy.copy(actions[dest])
        if new != dest:
            action.dest = new
            action.option_strings = ["--" + new]
        if new in defaults:
            action.default = defaults[new]
        target = experimental if experimental is not None and owner.get(dest) == EXPERIMENTAL[0] else dst
        target._add_action(action)
        out.append(new)
    return out


def forward_flags(args: argparse.Namespace, dests: Iterable[str], rename: dict[str, str] | None = None) -> list[str]:
    """Command-line words that pass ``args``' values of ``dests`` on to another script: ``["--tta", "d4", ...]``;
    a flag whose value is None is left out, a true ``store_true`` flag is the flag alone, a false one nothing.
    ``rename``: ``{dest here: flag name there}``."""
    words: list[str] = []
    for dest in dests:
        value = getattr(args, dest)
        flag = "--" + (rename or {}).get(dest, dest)
        if value is None or value is False:
            continue
        if value is True:
            words.append(flag)
        elif isinstance(value, (list, tuple)):
            words += [flag, *map(str, value)]
        else:
            words += [flag, str(value)]
    return words


def _terminated(signum, frame):
    raise KeyboardInterrupt  # unwind as on Ctrl-C, so that every temporary file is removed on the way out


def run_cli(main, args) -> int:
    """Run an entry script's ``main(args)``; returns the exit status.

    :class:`InputError` -> its one line on stderr, status 2. An ``OSError`` the system raised (disk
    full, permission denied, ...) -> one line naming the file, status 1. Ctrl-C or SIGTERM -> the
    temporaries are removed on the way out (every writer cleans up on an exception), status 130.
    """
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        main(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or short(e)}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
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
