"""Train DeepLabv3 with focal + Lovasz losses on alternating crop sizes (the original ``train_multiscale.py``).

    python train_multiscale.py --train --exp bn_lr7e-3 --epochs 30 --base_lr 0.007

Successive batches cycle through ``--scales`` (default 512,448), each with its own batch size
(``--batch_sizes``; default: ``--batch_size`` scaled to the same pixels per batch, 8 and 10).
"""

import sys

from cropmap.train import engine
from cropmap.core.cli import run_cli


def get_args_parser(add_help: bool = True):
    parser = engine.get_args_parser(add_help=add_help)
    parser.description = "DeepLabv3 + focal and Lovasz losses, multi-scale crops. " + parser.description
    parser.set_defaults(loss="focal+lovasz", epochs=30, scales=[512, 448])
    return parser


def main(args):
    return engine.main(args)


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
