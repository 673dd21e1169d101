"""Vote several models' maps into one, streaming in strips.

    python vote.py --inputs A.png B.png C.png --output OUT.png      # most trusted model first
    python vote.py --inputs A.png B.png C.png --output OUT.png --priority 1,3,2,0
    python vote.py                                                   # per-model maps in data/submit/
    python vote.py --models deeplabv3 unet --soft                    # sum saved probabilities instead
    python vote.py --inputs A.png B.png C.png --output OUT.png --weights auto   # weigh by validation IoU

Per pixel the class with the most votes wins; a tie goes to the tied class that the earliest input
predicted, or with --priority to the tied class listed first. --soft sums the probabilities that
``predict.py --save_probs`` wrote beside each input (``X_prob0.png`` ... for ``X.png``).
By default, for each of --images, the inputs are ``OUTPUT_DIR/IMAGE_predict_NAME.png`` for each NAME of
--models (in that order), or every such per-model map there (sorted by name; maps vote.py wrote are
left out) when --models is not given; the output is ``OUTPUT_DIR/IMAGE_predict.png`` (``IMAGE_predict_NAME.png`` with --name).

--weights auto weighs each input's vote per class by the validation IoU of the checkpoint that made it
(read from the sidecar X.json that predict.py writes beside each map X.png; see cropmap/ensemble.py),
normalised so that each class's weights sum to 1. The voted map gets a sidecar naming its inputs and
weights.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from cropmap.ensemble import auto_weights, parse_weights, sidecar_path, write_sidecar
from cropmap.imageio import InputError, run_cli
from cropmap.postprocess import prob_paths
from cropmap.postprocess import vote_maps


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Vote per-model maps into one map", add_help=add_help)
    p.add_argument("--inputs", nargs="+", default=None, help="maps to vote, most trusted first (default: the per-model maps in OUTPUT_DIR)")
    p.add_argument("--output", default=None, help="voted map (with --inputs; default: OUTPUT_DIR/vote.png)")
    p.add_argument("--data_root", default="data", help="data folder of the contract's layout (default: data)")
    p.add_argument("--output_dir", default=None, help="folder of the per-model maps and the voted ones (default: DATA_ROOT/submit)")
    p.add_argument("--images", nargs="+", default=["image_3", "image_4"], help="images to vote when --inputs is not given (default: image_3 image_4)")
    p.add_argument("--models", nargs="+", default=None, help="model names (predict.py --name) to vote, most trusted first (default: all found)")
    p.add_argument("--priority", default=None, help="class order for ties, e.g. 1,3,2,0 (default: the earliest input's class wins)")
    p.add_argument("--soft", action="store_true", help="sum the inputs' saved probabilities (X_prob{c}.png) instead of counting votes")
    p.add_argument("--weights", default="equal",
                   help="equal: one vote per input; auto: per class, the validation IoU of each input's checkpoint "
                        "(from the sidecar X.json beside each map), normalised over the inputs; or one number per "
                        "input, e.g. 0.5,0.3,0.2 (default: equal)")
    p.add_argument("--weight_power", type=float, default=1.0,
                   help="with --weights auto: weights are IoU ** POWER before normalising; larger trusts the best "
                        "model of each class more (default: 1)")
    p.add_argument("--name", default=None,
                   help="without --inputs: write IMAGE_predict_NAME.png instead of IMAGE_predict.png (default: none)")
    p.add_argument("--num_classes", type=int, default=4, help="number of classes (default: 4)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


_DERIVED = re.compile(r"_(preview|prob\d+)$")


def per_model_maps(folder: Path, image: str, models: list[str] | None) -> list[Path]:
    """The per-model maps of ``image`` in ``folder``: ``{image}_predict_{name}.png``, in ``models`` order."""
    if models:
        return [folder / f"{image}_predict_{m}.png" for m in models]
    found = sorted(p for p in folder.glob(f"{image}_predict_*.png") if not _DERIVED.search(p.stem) and not _is_vote(p))
    if not found:
        raise InputError(f"{folder}: no per-model maps {image}_predict_NAME.png to vote (predict.py --name NAME)")
    return found


def _is_vote(path: Path) -> bool:
    """True for a map that vote.py wrote (its sidecar says so): not a model's map to vote again."""
    side = sidecar_path(path)
    try:
        return side.is_file() and "vote" in json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return False


def parse_priority(text: str | None, num_classes: int) -> list[int] | None:
    if text is None:
        return None
    try:
        order = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise InputError(f"--priority {text!r}: expected class numbers separated by commas, e.g. 1,3,2,0") from None
    if sorted(order) != list(range(num_classes)):
        raise InputError(f"--priority {text!r}: must list each class 0..{num_classes - 1} exactly once")
    return order


def main(args: argparse.Namespace) -> list[Path]:
    priority = parse_priority(args.priority, args.num_classes)
    out_dir = Path(args.output_dir) if args.output_dir else Path(args.data_root) / "submit"
    if args.inputs:
        jobs = [([Path(p) for p in args.inputs], Path(args.output) if args.output else out_dir / "vote.png")]
    else:
        suffix = f"_{args.name}" if args.name else ""
        jobs = [(per_model_maps(out_dir, im, args.models), out_dir / f"{im}_predict{suffix}.png") for im in args.images]
    done = []
    for inputs, output in jobs:
        if output in inputs:
            raise InputError(f"{output}: the output is also an input")
        weights = vote_weights(args.weights, inputs, args.num_classes, args.weight_power)
        probs = [prob_paths(p, args.num_classes) for p in inputs] if args.soft else None
        vote_maps(inputs, output, args.num_classes, priority, probs, progress=not args.quiet, weights=weights)
        write_sidecar(output, {"map": str(output), "vote": "soft" if args.soft else "hard", "weights_mode": args.weights,
                               "inputs": [str(p) for p in inputs],
                               "weights": None if weights is None else weights.round(4).tolist()})
        shown = "" if weights is None else " weights " + "; ".join(
            f"{p.stem}: " + ",".join(f"{w:.2f}" for w in row) for p, row in zip(inputs, weights))
        print(f"{' + '.join(p.name for p in inputs)} -> {output}" + (" (soft)" if args.soft else "") + shown)
        done.append(output)
    return done


def vote_weights(mode: str, inputs: list[Path], num_classes: int, power: float = 1.0):
    """``None`` (equal votes) or ``float32 [N, C]`` per-class weights for ``--weights MODE``."""
    if mode == "equal":
        return None
    if mode == "auto":
        return auto_weights(inputs, num_classes, power)
    return parse_weights(mode, len(inputs), num_classes)


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
