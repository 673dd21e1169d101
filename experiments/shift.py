"""Which part of a new acquisition costs what: a model's test mIoU on image_3/image_4 rendered with one part
of the shifted acquisition at a time.

Run by hand from the repository root (about 1 minute per rendering and checkpoint on 2 CPU cores)::

    python -m experiments.shift --checkpoints data/model/deeplabv3_resnet18_demo_focal_best.pth
    python -m experiments.shift --checkpoints A.pth B.pth --radiometry none histogram
    python -m experiments.shift --checkpoints A.pth --radiometry none --adapt_bn 0 64   # BatchNorm adaptation

The test images of the demo's synthetic set (same seeds, so the same fields) are rendered into
``--work_dir`` five times (:mod:`cropmap.data.synthetic`): with the shifted acquisition's class mix only
(``classmix``, otherwise the training rendering), plus its ground resolution (``scale``), plus its
illumination, colour balance, tone curve and haze (``photo``), plus its blur and noise (``sensor``), and
the whole shifted acquisition (``all``, what ``make_synthetic_data.py`` writes). Each checkpoint predicts
every rendering from the source (``predict.py --source``, the demo's windows: 256 px every 192, Gaussian
blending, no TTA) with each ``--radiometry`` mode and each ``--adapt_bn`` count, and each map is scored
with the one metric. Prints a Markdown table of mIoU and the
per-class IoU.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from cropmap.core.cli import positive_int, run_cli
from cropmap.core.layout import TEST_SOURCE_DIR, label_path, map_path
from cropmap.core.metrics import class_names, iou_from_confusion
from cropmap.data import synthetic
from experiments.common import run, score


def renderings() -> dict[str, synthetic.Acquisition]:
    """The shifted acquisition taken apart: name -> how image_3/image_4 are rendered."""
    s = synthetic.SHIFTED
    mix = dataclasses.replace(synthetic.TRAIN_ACQUISITION, class_prob=s.class_prob)
    return {
        "classmix": mix,
        "scale": dataclasses.replace(mix, scale=s.scale),
        "photo": dataclasses.replace(mix, brightness=s.brightness, gain=s.gain, gamma=s.gamma, haze=s.haze),
        "sensor": dataclasses.replace(mix, noise=s.noise, blur=s.blur),
        "all": s,
    }


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Score checkpoints on the test images rendered with one part of the "
                                            "new acquisition at a time.", add_help=add_help)
    p.add_argument("--checkpoints", nargs="+", required=True, help="checkpoints (.pth) to score")
    p.add_argument("--radiometry", nargs="+", default=["none", "histogram"], choices=["none", "match", "histogram"],
                   help="predict.py --radiometry modes (default: none histogram)")
    p.add_argument("--adapt_bn", nargs="+", type=int, default=[0],
                   help="predict.py --adapt_bn counts (0: the training BatchNorm statistics) (default: 0)")
    p.add_argument("--adapt_weight", nargs="+", type=float, default=[1.0],
                   help="predict.py --adapt_weight values, with each --adapt_bn count above 0 (default: 1)")
    p.add_argument("--tile_size", type=positive_int, default=256, help="prediction window, as the demo (default: 256)")
    p.add_argument("--stride", type=positive_int, default=192, help="prediction stride, as the demo (default: 192)")
    p.add_argument("--renderings", nargs="+", default=list(renderings()), choices=list(renderings()),
                   help="which renderings (default: all five)")
    p.add_argument("--size", type=positive_int, default=3000, help="longest image side, as the demo (default: 3000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic set, as make_synthetic_data.py (default: 0)")
    p.add_argument("--work_dir", default="data/bench_shift", help="where renderings and maps go (default: data/bench_shift)")
    return p


def main(args: argparse.Namespace) -> list[dict]:
    t0 = time.perf_counter()
    sizes = synthetic.image_sizes(args.size)
    rows = []
    for name in args.renderings:
        acq = renderings()[name]
        folder = Path(args.work_dir) / name / TEST_SOURCE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        sources = {}
        for image in synthetic.TEST_IMAGES:
            path = folder / f"{image}.png"
            if not path.exists():  # the seed rule of make_synthetic_data.py: the same fields as the demo's
                h, w = sizes[image]
                synthetic.write_image(path, label_path(path), h, w, seed=args.seed * 1000 + int(image.split("_")[-1]),
                                      progress=False, acq=acq)
            sources[image] = path
        for ckpt in args.checkpoints:
            for mode in args.radiometry:
                for adapt, weight in [(a, w) for a in args.adapt_bn for w in (args.adapt_weight if a else [1.0])]:
                    tag = f"{Path(ckpt).stem}_{mode}_bn{adapt}_w{weight:g}"
                    out = Path(args.work_dir) / name / "maps"
                    for path in sources.values():
                        run(["predict.py", "--source", str(path), "--checkpoint", ckpt, "--output_dir", str(out),
                             "--name", tag, "--preview_size", "0", "--radiometry", mode, "--adapt_bn", str(adapt),
                             "--adapt_weight", str(weight), "--tile_size", str(args.tile_size), "--stride", str(args.stride)])
                    iou, miou, _ = iou_from_confusion(score({im: map_path(out, im, tag) for im in sources}, sources))
                    rows.append({"rendering": name, "checkpoint": Path(ckpt).stem, "radiometry": mode,
                                 "adapt_bn": adapt, "adapt_weight": weight, "mIoU": miou, "iou": iou})
                    print(f"  {name}, {Path(ckpt).stem}, radiometry {mode}, adapt_bn {adapt} x {weight:g}: mIoU {miou:.3f}",
                          flush=True)
    names = class_names(4)
    lines = ["| rendering | checkpoint | radiometry | adapt_bn | weight | mIoU | " + " | ".join(names) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(names)]
    for r in rows:
        lines.append(f"| {r['rendering']} | {r['checkpoint']} | {r['radiometry']} | {r['adapt_bn']} | {r['adapt_weight']:g} | {r['mIoU']:.3f} | "
                     + " | ".join(f"{v:.3f}" for v in r["iou"]) + " |")
    print("\n" + "\n".join(lines) + f"\n\n{(time.perf_counter() - t0) / 60:.1f} min")
    return rows


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args()))
