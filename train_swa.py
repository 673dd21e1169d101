"""Train DeepLabv3 with focal + Lovasz losses and stochastic weight averaging (the original ``train_swa.py``).

    python train_swa.py --train --exp bn_lr7e-3 --epochs 30 --base_lr 0.007

Poly decay until ``--swa_start``, then SWALR anneals (cosine) to ``--swa_lr`` and each epoch's weights
join the average; the averaged model (BatchNorm statistics recomputed) is validated and saved. The same
as ``train.py --swa --loss focal+lovasz --epochs 30``.
"""

import sys

from cropmap.train import engine
from cropmap.core.cli import run_cli


def get_args_parser(add_help: bool = True):
    parser = engine.get_args_parser(add_help=add_help)
    parser.description = "DeepLabv3 + focal and Lovasz losses + SWA. " + parser.description
    parser.set_defaults(loss="focal+lovasz", epochs=30, swa=True)
    return parser


def main(args, hooks=()):
    """Train with SWA; ``hooks`` (optional :class:`cropmap.train.engine.Hook` objects) run before the SWA hook."""
    return engine.main(args, hooks=hooks)


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
