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
left out) when --models is not given; the output is ``OUTPUT_DIR/IMAGE_predict.png`` (``IMAGE_predict_NAME.png``
with --name; ``.tif`` for a GeoTIFF source or with --format tif). GeoTIFF maps are written with the CRS and
transform of the first input.

--weights auto weighs each input's vote per class by the validation IoU of the checkpoint that made it
(read from the sidecar X.json that predict.py writes beside each map X.png; see cropmap/maps/ensemble.py),
normalised so that each class's weights sum to 1. The voted map gets a sidecar naming its inputs and
weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cropmap.core.cli import add_map_args, experimental_group, int_list, nonneg_float, run_cli, warn

from cropmap.core.errors import InputError
from cropmap.maps.ensemble import auto_weights, is_vote, parse_weights, write_sidecar
from cropmap.core.files import check_output_file
from cropmap.core.layout import is_derived, map_path, map_suffix, predict_source, prob_paths, submit_dir
from cropmap.maps.postprocess import vote_maps


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Vote per-model maps into one map", add_help=add_help)
    p.add_argument("--inputs", nargs="+", default=None, help="maps to vote, most trusted first (default: the per-model maps in OUTPUT_DIR)")
    p.add_argument("--output", default=None,
                   help="voted map (with --inputs; default: OUTPUT_DIR/vote.png, or vote.tif for GeoTIFF inputs)")
    add_map_args(p, "to vote when --inputs is not given (per-model maps in OUTPUT_DIR)")
    p.add_argument("--models", nargs="+", default=None, help="model names (predict.py --name) to vote, most trusted first (default: all found)")
    p.add_argument("--priority", type=int_list, default=None,
                   help="class order for ties, e.g. 1,3,2,0 (default: the earliest input's class wins)")
    p.add_argument("--soft", action="store_true", help="sum the inputs' saved probabilities (X_prob{c}.png) instead of counting votes")
    p.add_argument("--weights", default="equal",
                   help="equal: one vote per input; auto: per class, the validation IoU of each input's checkpoint "
                        "(from the sidecar X.json beside each map), normalised over the inputs; or one number per "
                        "input, e.g. 0.5,0.3,0.2 (default: %(default)s)")
    experimental_group(p).add_argument("--weight_power", type=nonneg_float, default=1.0,
                   help="with --weights auto: weights are IoU ** POWER before normalising; larger trusts the best "
                        "model of each class more (default: %(default)s)")
    p.add_argument("--name", default=None,
                   help="without --inputs: write IMAGE_predict_NAME instead of IMAGE_predict (default: none)")
    return p


def per_model_maps(folder: Path, image: str, models: list[str] | None, suffix: str = ".png") -> list[Path]:
    """The per-model maps of ``image`` in ``folder``: ``{image}_predict_{name}{suffix}``, in ``models`` order."""
    if models:
        return [map_path(folder, image, m, suffix) for m in models]
    found = sorted(p for p in folder.glob(map_path("", image, "*", suffix).name) if not is_derived(p) and not is_vote(p))
    if not found:
        raise InputError(f"{folder}: no per-model maps {image}_predict_NAME{suffix} to vote (predict.py --name NAME)")
    return found


def main(args: argparse.Namespace) -> list[Path]:
    priority = args.priority
    out_dir = submit_dir(args.data_root, args.output_dir)
    if args.inputs:
        inputs = [Path(p) for p in args.inputs]
        default = out_dir / f"vote{map_suffix(inputs[0], args.format)}"
        jobs = [(inputs, Path(args.output) if args.output else default)]
    else:
        jobs = []
        for im in args.images:
            suffix = map_suffix(predict_source(args.data_root, im), args.format)
            jobs.append((per_model_maps(out_dir, im, args.models, suffix), map_path(out_dir, im, args.name, suffix)))
    job_weights = []
    for inputs, output in jobs:  # every job checked before the first one runs
        if output in inputs:
            raise InputError(f"{output}: the output is also an input")
        check_output_file(output)
        job_weights.append(vote_weights(args.weights, inputs, args.num_classes, args.weight_power))
    done = []
    for (inputs, output), weights in zip(jobs, job_weights):
        if len(inputs) == 1:
            warn(f"only one map to vote ({inputs[0]}): {output} is a copy of it")
        probs = [prob_paths(p, args.num_classes) for p in inputs] if args.soft else None
        vote_maps(inputs, output, args.num_classes, priority, probs, progress=not args.quiet, weights=weights)
        write_sidecar(output, {"map": output.name, "vote": "soft" if args.soft else "hard", "weights_mode": args.weights,
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
