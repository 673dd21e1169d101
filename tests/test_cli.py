"""The shared CLI pieces: progress output, error lines, flag parsers, and the file layout."""

import argparse
import io
import sys

import pytest

from cropmap.core import cli, errors
from cropmap.core import layout


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


def test_layout_names():
    assert layout.label_path("d/image_1.png").as_posix() == "d/image_1_label.png"
    assert layout.label_path("d/scene.tif").as_posix() == "d/scene_label.tif"
    assert layout.source_path("root", "src", "image_1").as_posix() == "root/src/image_1.png"
    assert layout.source_path("root", "src", "x/a.png").as_posix() == "x/a.png"
    m = layout.map_path("out", "image_3", "unet")
    assert m.as_posix() == "out/image_3_predict_unet.png"
    assert [p.name for p in layout.prob_paths(m, 2)] == ["image_3_predict_unet_prob0.png", "image_3_predict_unet_prob1.png"]
    assert layout.preview_path(m).name == "image_3_predict_unet_preview.png"
    assert layout.is_derived(layout.preview_path(m)) and layout.is_derived(layout.prob_paths(m, 1)[0])
    assert not layout.is_derived(m) and not layout.is_derived("out/image_3_predict_problem.png")
    assert layout.checkpoint_path("m", {"model": "unet", "backbone": "resnet34", "exp": "e"}, "best").as_posix() \
        == "m/unet_resnet34_e_best.pth"
