"""Tests of cropmap.core.cli: progress output, error lines and flag parsers."""

import argparse
import io
import sys

import pytest

from cropmap.core import cli, errors


class _Pipe(io.StringIO):
    def isatty(self):
        return False


def test_progress_prints_one_line_per_step_when_not_a_terminal(monkeypatch):
    err = _Pipe()
    monkeypatch.setattr(sys, "stderr", err)
    bar = cli.progress(total=3, desc="image_3 tiles", unit="tile")
    for _ in range(3):
        bar.update(1)
    bar.close()
    bar.close()  # closing twice prints once
    with cli.progress(total=5, desc="transient", leave=False) as inner:  # a bar inside a step: nothing
        inner.update(5)
    assert list(cli.progress(range(4), desc="loop", unit="it")) == [0, 1, 2, 3]
    lines = err.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in err.getvalue()
    assert lines[0].startswith("image_3 tiles: 3/3 tile in ") and lines[1].startswith("loop: 4 it in ")
    # --quiet prints nothing at all
    err.truncate(0)
    cli.progress(total=2, desc="quiet", disable=True).close()
    assert err.getvalue() == ""


def test_short_and_int_list():
    assert errors.short(ValueError("first\n\n second \nthird\nfourth")) == "first second third"
    assert errors.short(ValueError("x" * 500)) == "x" * errors.MAX_LINE
    assert errors.short(KeyError()) == "KeyError"
    assert cli.int_list("512, 448") == [512, 448]
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated integers"):
        cli.int_list("1,a")


def test_run_cli_turns_input_errors_into_one_line(capsys):
    def main(args):
        raise errors.InputError("a.png: file not found")

    assert cli.run_cli(main, None) == 2
    assert capsys.readouterr().err == "error: a.png: file not found\n"
