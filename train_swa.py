"""Train DeepLabv3 with focal + Lovasz losses and stochastic weight averaging (the original ``train_swa.py``).

    python train_swa.py --train --exp bn_lr7e-3 --epochs 30 --base_lr 0.007

Poly decay until ``--swa_start``, then SWALR anneals (cosine) to ``--swa_lr`` and each epoch's weights
join the average; the averaged model (BatchNorm statistics recomputed) is validated and saved.
"""

import argparse
import sys

from cropmap import engine
from cropmap.cli import InputError, run_cli


def get_args_parser(add_help: bool = True):
    parser = argparse.ArgumentParser(
        description="DeepLabv3 + focal and Lovasz losses + SWA. " + engine.get_args_parser(False).description,
        parents=[engine.get_args_parser(add_help=False)], add_help=add_help)
    g = parser.add_argument_group("SWA")
    g.add_argument("--swa_start", type=int, default=None,
                   help="first epoch (1-based) whose weights are averaged (default: 3/4 of --epochs, rounded up)")
    g.add_argument("--swa_lr", type=float, default=None, help="learning rate of the SWA phase (default: --base_lr / 10)")
    g.add_argument("--swa_anneal_epochs", type=int, default=2,
                   help="epochs of cosine annealing to --swa_lr (default: 2)")
    parser.set_defaults(loss="focal+lovasz", epochs=30)
    return parser


def main(args, hooks=()):
    """Train with SWA; ``hooks`` (optional :class:`cropmap.engine.Hook` objects) run before the SWA hook."""
    if args.swa_start is None:
        args.swa_start = -(-3 * args.epochs // 4)
    if args.swa_lr is None:
        args.swa_lr = args.base_lr / 10
    if not 1 <= args.swa_start <= args.epochs:
        raise InputError(f"--swa_start {args.swa_start} must be between 1 and --epochs {args.epochs}")
    hook = engine.SWAHook(args.swa_start - 1, args.swa_lr, args.swa_anneal_epochs)
    return engine.main(args, hooks=[*hooks, hook])


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
