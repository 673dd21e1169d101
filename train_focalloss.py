"""Train DeepLabv3 with focal + Lovasz-softmax losses on the main and auxiliary outputs (the original ``train_focalloss.py``).

    python train_focalloss.py --train --exp bn_lr7e-3 --epochs 20 --base_lr 0.007

Same flags as ``train.py``; only the default ``--loss`` differs.
"""

import sys

from cropmap.train import engine
from cropmap.core.cli import run_cli


def get_args_parser(add_help: bool = True):
    parser = engine.get_args_parser(add_help=add_help)
    parser.description = "DeepLabv3 + focal and Lovasz losses. " + parser.description
    parser.set_defaults(loss="focal+lovasz")
    return parser


def main(args):
    return engine.main(args)


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
