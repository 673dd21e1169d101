"""Writing files so that an interrupted run never leaves one that looks finished.

Every output of the project is written under a temporary name beside its final one (``.NAME.XXXX.part``)
and renamed into place when complete (:func:`atomic_path`, :func:`temporary_path`); a temporary left by a
killed run is removed by :func:`clean_partials`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


def temporary_path(path: str | os.PathLike) -> Path:
    """Create an empty temporary file beside ``path`` (``.NAME.XXXX.part``) with the usual permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; finished files get the usual permissions
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; rename it to ``path`` on success, delete it on error.

    The one way outputs are written in this project: an interrupted run never leaves a file that looks
    finished under its final name.
    """
    path = Path(path)
    tmp = temporary_path(path)
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


def clean_partials(*folders: str | os.PathLike) -> int:
    """Remove the temporaries (``.*.part``) that an interrupted run left in ``folders``; returns how many."""
    n = 0
    for folder in map(Path, folders):
        if folder.is_dir():
            for p in folder.glob(".*.part"):
                p.unlink(missing_ok=True)
                n += 1
    return n
