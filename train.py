"""Train DeepLabv3 with cross-entropy and SGD (the original ``train.py``).

    python train.py --train --exp bn_lr7e-3 --epochs 20 --base_lr 0.007
    python train.py --exp bn_lr7e-3            # evaluate data/model/deeplabv3_resnet50_bn_lr7e-3_best.pth

Every flag is described by ``python train.py -h``; the loop is :mod:`cropmap.train.engine`.
"""

import sys

from cropmap.train import engine
from cropmap.core.cli import run_cli


def get_args_parser(add_help: bool = True):
    parser = engine.get_args_parser(add_help=add_help)
    parser.description = "DeepLabv3 + cross-entropy, SGD with poly decay. " + parser.description
    return parser


def main(args):
    return engine.main(args)


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
