"""The user-error type and its one line; no other import of the project, so every layer can raise it.

* :class:`InputError` - a problem with the user's input; :func:`cropmap.core.cli.run_cli` prints it as one
  line and exits 2.
* :func:`short` - the one way an exception's text is shortened into such a line.
"""

from __future__ import annotations

#: Longest error line printed for a message taken from a library's exception.
MAX_LINE = 200


class InputError(Exception):
    """A problem with the user's input: printed as one line, exit status non-zero, no traceback."""


def short(err: BaseException | str, limit: int = MAX_LINE) -> str:
    """The first non-empty lines (up to 3) of an exception's text, joined and cut to ``limit`` characters."""
    text = [t.strip() for t in str(err).strip().splitlines() if t.strip()]
    line = " ".join(text[:3])[:limit]
    return line or (type(err).__name__ if isinstance(err, BaseException) else "")
