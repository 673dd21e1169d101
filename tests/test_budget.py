"""cropmap.core.budget and run_pipeline.py --budget: what each budget sets, what a typed flag keeps, the iteration
cap, the expected time, and the plan printed before any work."""

import argparse

import numpy as np
import pytest

import run_pipeline
from cropmap.core import budget
from cropmap.raster import write_png


def parse(*flags):
    return run_pipeline.get_args_parser().parse_args(list(flags))


def test_a_budget_sets_what_was_not_typed():
    args = parse("--budget", "standard", "--epochs", "2")
    budget.apply_budget(args, None)
    assert args.epochs == 2  # typed: kept
    assert args.models == ["deeplabv3_ce", "deeplabv3_focal", "unet"] and args.tta == "d4" and args.max_iters is None
    quick = parse()
    budget.apply_budget(quick, None)
    assert quick.budget == "quick" and quick.models == ["deeplabv3_focal"] and quick.tta == "flip"
    assert quick.max_iters == 480 and quick.epochs == 12
    quick.models.append("unet")  # the budget's own list is not shared with the run
    assert budget.BUDGETS["quick"]["models"] == ["deeplabv3_focal"]


def test_every_budget_names_valid_flags():
    dests = {a.dest for a in run_pipeline.get_args_parser()._actions}
    for name, values in budget.BUDGETS.items():
        assert set(values) <= dests, name
        assert set(values) == set(budget.BUDGETS[budget.DEFAULT_BUDGET]), name  # every budget sets the same flags
        assert all(m in run_pipeline.ZOO for m in values["models"])


@pytest.mark.parametrize("tiles, epochs, cap, expected", [
    (312, 12, 480, (468, None)),  # 39 iterations an epoch: under the cap, every tile once an epoch
    (1000, 12, 480, (480, 40)),  # 125 an epoch would be 1500: 40 an epoch
    (1000, 6, None, (750, None)),  # no cap
    (3, 12, 480, (12, None)),  # fewer tiles than a batch: one iteration an epoch
])
def test_iterations(tiles, epochs, cap, expected):
    assert budget.iterations(tiles, 8, epochs, cap) == expected


def test_expected_time_grows_with_the_imagery_and_the_budget():
    def minutes(name, train, test):
        args = parse("--budget", name)
        budget.apply_budget(args, None)
        return budget.estimate_minutes(args, run_pipeline.model_kinds(args), train, test)

    quick = minutes("quick", 30, 10)
    assert 10 < quick < 30  # the budget's promise on the development machine
    assert minutes("quick", 30, 20) > quick and minutes("quick", 3, 1) < quick
    assert minutes("standard", 30, 10) > 2 * quick and minutes("full", 30, 10) > 5 * minutes("standard", 30, 10)


def test_the_plan_is_printed_first(tmp_path, capsys):
    rgb = np.zeros((100, 200, 3), np.uint8)
    write_png(tmp_path / "a.png", rgb)
    args = parse("--train_images", str(tmp_path / "a.png"), "--test_images", str(tmp_path / "a.png"))
    budget.apply_budget(args, None)
    run_pipeline.print_plan(args, [str(tmp_path / "a.png")], [tmp_path / "a.png"])
    out = capsys.readouterr().out
    assert out.startswith("budget quick: deeplabv3_focal; 12 epochs (at most 480 iterations each)")
    assert "0.0 Mpx of training" in out and "expected about" in out
    run_pipeline.print_plan(args, [str(tmp_path / "missing.png")], [tmp_path / "a.png"])  # the tiling step says why
    assert "expected" not in capsys.readouterr().out


def test_the_cap_reaches_the_training_command(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(run_pipeline, "run", commands.append)
    monkeypatch.setattr(run_pipeline, "training_tiles", lambda root: 1000)
    args = parse("--data_root", str(tmp_path))
    budget.apply_budget(args, None)
    run_pipeline.train_models(args, tmp_path)
    (train,) = commands
    assert train[0] == "train_focalloss.py" and train[train.index("--iters_per_epoch") + 1] == "40"
    assert train[train.index("--epochs") + 1] == "12"
