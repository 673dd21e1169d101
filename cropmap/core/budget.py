"""How much work a pipeline run does (``run_pipeline.py --budget``), and about how long it takes.

A budget is a set of defaults for the flags that decide the run's length: which models are trained, for how
many epochs and at most how many iterations, and how many views each window is predicted with. A flag typed
on the command line wins over its budget.

* ``quick``: one model (DeepLabv3-ResNet18, focal + Lovasz) for at most 480 iterations, flip TTA: a map of
  30 Mpx of training and 10 Mpx of test imagery in under half an hour on a 2-core CPU.
* ``standard``: three models (DeepLabv3 with cross-entropy and with focal + Lovasz, the U-Net), their votes,
  d4 TTA: about three times ``quick``'s time on a CPU.
* ``full``: what a GPU run should use: the three models on ResNet-50 / ResNet-34, 512-px tiles and crops, 30
  epochs, d4 TTA; days on a CPU.

:func:`estimate_minutes` gives the expected time from the images' sizes with the per-pixel rates measured on
the development machine (2 cores of an AMD EPYC, :data:`RATES`); it is printed before the run starts.
"""

from __future__ import annotations

import math

#: Budget -> flag defaults (``dest`` -> value). ``max_iters``: cap on each model's iterations (None: none).
BUDGETS: dict[str, dict] = {
    "quick": {"models": ["deeplabv3_focal"], "epochs": 12, "unet_epochs": 12, "max_iters": 480, "tta": "flip",
              "backbone": "resnet18", "tile_size": 256, "crop_size": 256, "unet_crop_size": 96, "val_every": 4},
    "standard": {"models": ["deeplabv3_ce", "deeplabv3_focal", "unet"], "epochs": 6, "unet_epochs": 5,
                 "max_iters": None, "tta": "d4", "backbone": "resnet18", "tile_size": 256, "crop_size": 256,
                 "unet_crop_size": 96, "val_every": 3},
    "full": {"models": ["deeplabv3_ce", "deeplabv3_focal", "unet"], "epochs": 30, "unet_epochs": 30,
             "max_iters": None, "tta": "d4", "backbone": "resnet50", "tile_size": 512, "crop_size": 512,
             "unet_crop_size": 256, "val_every": 2},
}
DEFAULT_BUDGET = "quick"

#: Seconds per megapixel on the development machine (2 cores of an AMD EPYC, PyTorch's threads), by model
#: and backbone: ``train`` per Mpx of training crops (one forward/backward/step), ``predict`` per Mpx of
#: image and per TTA view (windows overlapping by a quarter, blended). From make demo and the real-data runs
#: of experiments.realdata (epoch and prediction times in their logs).
RATES = {
    ("deeplabv3", "resnet18"): {"train": 3.4, "predict": 1.6},
    ("deeplabv3", "resnet34"): {"train": 5.5, "predict": 2.6},
    ("deeplabv3", "resnet50"): {"train": 9.0, "predict": 4.3},
    ("deeplabv3", "resnet101"): {"train": 14.0, "predict": 6.7},
    ("unet", "resnet34"): {"train": 18.0, "predict": 11.0},
    ("unet", "resnet50"): {"train": 26.0, "predict": 16.0},
}
#: Seconds of each step's start (a Python process importing PyTorch) and of cutting a Mpx of tiles.
STEP_SECONDS, CUT_SECONDS_PER_MPX = 4.0, 1.0
VIEWS = {"none": 1, "flip": 3, "d4": 8}


def apply_budget(args, typed: frozenset[str] | None) -> None:
    """Set the flags of ``args.budget`` that were not typed (``typed``: the typed flags' ``dest``; None:
    only those still None)."""
    for dest, value in BUDGETS[args.budget].items():
        if (dest not in typed) if typed is not None else getattr(args, dest, None) is None:
            setattr(args, dest, list(value) if isinstance(value, list) else value)


def iterations(tiles: int, batch_size: int, epochs: int, max_iters: int | None) -> tuple[int, int | None]:
    """``(iterations per model, --iters_per_epoch or None)`` for ``tiles`` training tiles: every tile once an
    epoch, unless ``epochs`` of them would pass ``max_iters``."""
    per_epoch = max(1, math.ceil(tiles / batch_size))
    if max_iters is None or per_epoch * epochs <= max_iters:
        return per_epoch * epochs, None
    cap = max(1, max_iters // epochs)
    return cap * epochs, cap


def estimate_minutes(args, model_kinds: list[tuple[str, str]], train_mpx: float, test_mpx: float,
                     val_share: float = 0.15) -> float:
    """Expected minutes of the whole run on the development machine: tiling, training every model (its
    iterations from the tiles the training images give), predicting the validation and test images with
    every model, the votes and clean-ups (a few steps each)."""
    tiles = train_mpx * (1 - val_share) * 1e6 / args.tile_size ** 2
    seconds = CUT_SECONDS_PER_MPX * (train_mpx + 2 * test_mpx)
    views = VIEWS[args.tta]
    for model, backbone in model_kinds:
        rate = RATES.get((model, backbone), RATES[("deeplabv3", "resnet50")])
        unet = model == "unet"
        epochs = args.unet_epochs if unet else args.epochs
        crop = args.unet_crop_size if unet else args.crop_size
        n, _ = iterations(int(tiles), args.batch_size, epochs, args.max_iters)
        seconds += rate["train"] * n * args.batch_size * crop ** 2 / 1e6
        seconds += rate["predict"] * views * (test_mpx + val_share * train_mpx) + 6 * STEP_SECONDS
    seconds += STEP_SECONDS * (6 + 3 * len(model_kinds) + 8)
    return seconds / 60
