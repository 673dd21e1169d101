"""Train the ResNet-34 scSE/hypercolumn U-Net with focal + Lovasz losses (the original ``Unet_resnet34/`` model).

    python Unet_resnet34/train.py --train --exp bn_lr7e-3 --epochs 20 --base_lr 0.007

Same loop and flags as ``train.py`` (run it from the repository root; data paths are relative to the
current folder); the defaults are ``--model unet --backbone resnet34 --loss focal+lovasz``.
"""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cropmap.train import engine  # noqa: E402
from cropmap.core.cli import run_cli  # noqa: E402


def get_args_parser(add_help: bool = True):
    parser = engine.get_args_parser(add_help=add_help)
    parser.description = "U-Net (ResNet-34, scSE, hypercolumn) + focal and Lovasz losses. " + parser.description
    parser.set_defaults(model="unet", backbone="resnet34", loss="focal+lovasz")
    return parser


def main(args):
    return engine.main(args)


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
