"""Which soft vote to make from a pipeline run's models: every subset of them, several weight powers.

Run by hand from the repository root, after ``run_pipeline.py`` (or ``make demo``) has made its maps
(about 15 s for the demo's three models on 2 CPU cores)::

    python -m experiments.ensembles --data_root data
    python -m experiments.ensembles --data_root /tmp/set2 --powers 1 2 4 8

For each subset of at least two of the models (default: the pipeline's three) and each ``--weight_power``,
``vote.py --soft --weights auto`` votes the saved probabilities of the validation images (the training
images' validation blocks, in ``DATA_ROOT/val``) and of the test images, and the one metric scores both.
Prints one Markdown table (val and test mIoU per vote), then the vote validation would choose and what it
scores on test: whether choosing the members on validation carries over to the test images. The votes'
maps are written as ``IMAGE_predict_bench_ens`` and deleted at the end.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

from cropmap.core.cli import nonneg_float, num_classes_int, run_cli
from cropmap.core.errors import InputError
from cropmap.core.layout import DEFAULT_TEST_IMAGES, DEFAULT_TRAIN_IMAGES, TEST_SOURCE_DIR, source_path
from cropmap.core.metrics import iou_from_confusion
from cropmap.core.budget import BUDGETS

DEFAULT_MODELS = BUDGETS["standard"]["models"]  # the models of a standard run_pipeline.py run

STAGE = "bench_ens"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Score soft votes of every subset of a pipeline run's models.",
                                add_help=add_help)
    p.add_argument("--data_root", default="data", help="data root of a finished run_pipeline.py (default: data)")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                   help=f"model names (predict.py --name) of the run (default: {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--powers", type=nonneg_float, nargs="+", default=[1.0, 2.0, 4.0],
                   help="vote.py --weight_power values to try (default: 1 2 4)")
    p.add_argument("--num_classes", type=num_classes_int, default=4, help="number of classes (default: 4)")
    return p


def main(args: argparse.Namespace) -> list[dict]:
    from run_pipeline import Split, run, score_stage

    root = Path(args.data_root).resolve()
    val_root = root / "val"
    splits = [Split("val", val_root, [source_path(val_root, TEST_SOURCE_DIR, n) for n in DEFAULT_TRAIN_IMAGES]),
              Split("test", root, [source_path(root, TEST_SOURCE_DIR, n) for n in DEFAULT_TEST_IMAGES])]
    for split in splits:
        for image in split.images:
            for m in args.models:
                if not split.map(image, m).exists():
                    raise InputError(f"{split.map(image, m)}: no such map (run run_pipeline.py on {root} first)")
    rows = []
    try:
        for k in range(len(args.models), 1, -1):
            for members in itertools.combinations(args.models, k):
                for power in args.powers:
                    row = {"members": members, "power": power}
                    for split in splits:
                        for image in split.images:
                            run(["vote.py", "--inputs", *(str(split.map(image, m)) for m in members),
                                 "--output", str(split.map(image, STAGE)), "--num_classes", str(args.num_classes),
                                 "--soft", "--weights", "auto", "--weight_power", str(power), "--quiet"])
                        cm = score_stage(split, STAGE, args.num_classes)
                        row[split.name] = None if cm is None else iou_from_confusion(cm)[1]
                    rows.append(row)
    finally:
        for split in splits:
            for image in split.images:
                p = split.map(image, STAGE)
                for f in p.parent.glob(f"{p.stem}*"):
                    f.unlink()
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    print("\n| soft vote of | weight power | val mIoU | test mIoU |\n|---|---|---|---|")
    for r in rows:
        print(f"| {' + '.join(r['members'])} | {r['power']:g} | {fmt(r['val'])} | {fmt(r['test'])} |")
    scored = [r for r in rows if r["val"] is not None]
    if scored:
        best = max(scored, key=lambda r: r["val"])
        print(f"\nchosen on validation: {' + '.join(best['members'])}, power {best['power']:g}: "
              f"val {fmt(best['val'])}, test {fmt(best['test'])}")
    return rows


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
