"""Writing files so that an interrupted run never leaves one that looks finished.

Every output of the project is written under a temporary name beside its final one (``.NAME.XXXXXXXX.part``)
and renamed into place when complete (:func:`atomic_path`, :func:`temporary_path`; folders of tiles:
:func:`temporary_dir`, :func:`replace_dir`). On an error the temporary is deleted; one left by a killed
run is deleted by the next run that writes the same output (:func:`remove_stale`, :func:`clean_partials`).
Output folders are checked before any work starts (:func:`check_output_dir`, :func:`check_output_file`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from cropmap.core.errors import InputError

_UMASK = os.umask(0)
os.umask(_UMASK)

_SUFFIX = ".part"


def _stale_pattern(name: str) -> re.Pattern:
    # mkstemp / mkdtemp insert 8 characters from [a-z0-9_] between prefix and suffix
    return re.compile(re.escape(f".{name}.") + r"[a-z0-9_]{8}" + re.escape(_SUFFIX))


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def remove_stale(path: str | os.PathLike) -> int:
    """Delete the temporaries (files or folders) that an interrupted run left for the output ``path``.

    Only ``.NAME.XXXXXXXX.part`` beside ``path`` are touched, NAME being ``path``'s own name (other
    outputs' temporaries in the folder may belong to a run still going). Returns how many.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return 0
    pattern = _stale_pattern(path.name)
    n = 0
    with os.scandir(path.parent) as entries:
        stale = [Path(e.path) for e in entries if pattern.fullmatch(e.name)]
    for p in stale:
        _remove(p)
        n += 1
    return n


def temporary_path(path: str | os.PathLike, clean: bool = True) -> Path:
    """Create an empty temporary file beside ``path`` (``.NAME.XXXXXXXX.part``) with the usual permissions.

    ``clean``: first delete the temporaries an interrupted run left for ``path`` (:func:`remove_stale`;
    one folder listing: pass False when writing many files into one folder, e.g. tiles, and clean the
    folder once instead).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if clean:
        remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_SUFFIX, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; finished files get the usual permissions
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, clean: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; rename it to ``path`` on success, delete it on error.

    The one way outputs are written in this project: an interrupted run never leaves a file that looks
    finished under its final name. ``clean``: see :func:`temporary_path`.
    """
    path = Path(path)
    tmp = temporary_path(path, clean)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def copy_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy ``src`` to ``dst`` through a temporary name."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def temporary_dir(path: str | os.PathLike) -> Path:
    """Create an empty temporary folder beside the folder ``path`` (``.NAME.XXXXXXXX.part``), after
    deleting the ones an interrupted run left for it; fill it, then :func:`replace_dir`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=_SUFFIX, dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    return tmp


def replace_dir(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Put the folder ``tmp`` in the place of the folder ``path``, deleting the old one.

    Two renames: the old folder first gets a temporary name (so a kill in between leaves nothing that
    looks finished, and the next run deletes it), then ``tmp`` takes its name.
    """
    tmp, path = Path(tmp), Path(path)
    old = None
    if path.exists() or path.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=_SUFFIX, dir=path.parent))
        os.replace(path, old)  # a folder may replace an empty folder
    os.replace(tmp, path)
    if old is not None:
        _remove(old)


def clean_partials(*folders: str | os.PathLike) -> int:
    """Remove every temporary (``.*.part``, files and folders) left in ``folders``; returns how many.

    For folders that only this run writes (e.g. a folder of tiles); elsewhere use :func:`remove_stale`.
    """
    n = 0
    for folder in map(Path, folders):
        if folder.is_dir():
            for p in folder.glob(".*" + _SUFFIX):
                _remove(p)
                n += 1
    return n


# ---- checks before any work ---------------------------------------------------------------------


def check_output_dir(*folders: str | os.PathLike) -> None:
    """:class:`InputError` unless each folder exists and is writable, or can be created.

    Checked before any work starts, so that a run does not fail at its first save.
    """
    for folder in map(Path, folders):
        probe = folder
        while not probe.exists() and not probe.is_symlink():
            if probe.parent == probe:
                break
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            what = "is a file" if probe == folder else f"cannot be created: {probe} is a file"
            raise InputError(f"{folder}: {what}, expected a folder")
        if not os.access(probe, os.W_OK | os.X_OK):
            where = "" if probe == folder else f" (cannot create it in {probe})"
            raise InputError(f"{folder}: not writable{where}: permission denied or read-only file system")


def check_output_file(*paths: str | os.PathLike) -> None:
    """:class:`InputError` unless each file can be written: its folder as in :func:`check_output_dir`,
    and the name is not an existing folder."""
    for path in map(Path, paths):
        if path.is_dir():
            raise InputError(f"{path}: is a folder, expected the name of a file to write")
        check_output_dir(path.parent if str(path.parent) else Path("."))
