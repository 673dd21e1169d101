"""Benchmark: predict.py against the model's pure forward pass, its memory at two sizes, an image_3-size time.

    python -m bench.predict                                    # CPU defaults: 1536^2 and 3072^2, ResNet-18, 1 thread
    python -m bench.predict --device cuda --amp --backbone resnet50 --batch_size 16 --sizes 4096 8192 --full

Run by hand, never by tests. Side by side in one process, alternating, the best of ``--repeats`` each:

  pure     the model's forward alone: ``model(x)`` on one batch of ``--batch_size`` windows already on the
           device, normalised, channels_last, under the same autocast (as bench.models does)
  source   cropmap.predict.inference.predict_from_source over the large image: decode, forward, blend, argmax,
           map + preview written (what ``predict.py --source`` runs)
  windows  cropmap.predict.inference.predict_image over the same image's pre-cut windows (``--precut``; cut by
           generate_test_data.py, the original's way)
  zero     predict_from_source with a model that costs nothing (it returns zeros): the pipeline's own rate,
           per second and per CPU-second of the process (every thread counted)

Then in fresh processes: the peak RSS of ``predict.py --source`` at both sizes and on an image as wide as
the small one and four times as high (an intermediate process reads getrusage(RUSAGE_CHILDREN).ru_maxrss:
memory follows the width, the band's, not the height); with ``--full``, ``predict.py`` on an image of image_3's size
(19903 x 37241; a synthetic block repeated, which decodes like the synthetic set), else that time is
extrapolated from the large image's Mpixel/s; with ``--shared N``, ``predict.py`` under torchrun with N
processes sharing the large image by rows, against one process (and whether the maps are identical).
Prints one table; writes OUT/results.json. Sources and checkpoint are cached under ``--out``; the model is
randomly initialised (the speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.common import OUT, ROOT, best_of, cuda_sync, markdown_table, run_worker, write_tiled

IMAGE3 = (19903, 37241)  # image_3's real size, H x W


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Benchmark predict.py against the model's pure forward pass", add_help=add_help)
    p.add_argument("--sizes", type=int, nargs=2, default=[1536, 3072],
                   help="side of the small and the large square image (default: 1536 3072, 4x the area)")
    p.add_argument("--model", default="deeplabv3", help="model name (default: deeplabv3)")
    p.add_argument("--backbone", default="resnet18", help="backbone (default: resnet18)")
    p.add_argument("--tile_size", type=int, default=512, help="window side (default: 512)")
    p.add_argument("--stride", type=int, default=256, help="window stride (default: 256, predict.py's default)")
    p.add_argument("--batch_size", type=int, default=4, help="windows per forward pass (default: 4)")
    p.add_argument("--tta", default="none", choices=["none", "flip", "d4"], help="predict's TTA; the pure forward "
                   "counts one pass per view (default: none)")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers of the pre-cut path (default: 1)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--amp", action="store_true", help="autocast in every measurement")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads of every measured process (default: 1, so that per-core figures mean something)")
    p.add_argument("--repeats", type=int, default=3, help="alternating passes of each measurement; the best counts (default: 3)")
    p.add_argument("--precut", action="store_true", help="also measure the pre-cut window path (cuts the large image)")
    p.add_argument("--full", action="store_true", help="synthesise an image of image_3's size and time predict.py on it")
    p.add_argument("--full_tta", nargs="*", default=[], choices=["flip", "d4"],
                   help="with --full, also time predict.py on it with these TTA levels (default: none)")
    p.add_argument("--full_size", type=int, nargs=2, default=list(IMAGE3), metavar=("H", "W"),
                   help="size of the --full image (default: image_3's, 19903 37241; smaller for a dry run)")
    p.add_argument("--block", type=int, default=4096,
                   help="sources larger than this repeat a synthetic block of this side (synthesis is slow) (default: 4096)")
    p.add_argument("--shared", type=int, default=0, metavar="N",
                   help="also time torchrun with N processes sharing the large image (CPU: gloo) (default: off)")
    p.add_argument("--out", default=str(OUT / "predict"), help="work folder (default: bench/out/predict)")
    p.add_argument("--worker", choices=["throughput", "measure"], help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("cmd", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


# ---- data --------------------------------------------------------------------------------------------


def source_of(root: Path) -> Path:
    from cropmap.core.layout import predict_source

    return predict_source(root, "image_3")


def checkpoint(args) -> Path:
    """A randomly initialised checkpoint of the model (cached)."""
    import torch

    from cropmap.train.checkpoint import save_checkpoint
    from models import build_model

    path = Path(args.out) / "model" / f"bench_{args.model}_{args.backbone}_best.pth"
    if not path.exists():
        torch.manual_seed(0)
        model = build_model(args.model, args.backbone, num_classes=4, aux=False)
        flags = {"model": args.model, "backbone": args.backbone, "num_classes": 4, "output_stride": 16,
                 "crop_size": args.tile_size}
        save_checkpoint({"model": model.state_dict(), "args": flags, "epoch": 0, "optimizer": {}, "metrics": {}}, path)
    return path


def block(args) -> Path:
    """The synthetic ``--block`` x ``--block`` image that larger sources repeat (cached)."""
    from cropmap.data.synthetic import write_image

    path = Path(args.out) / f"block{args.block}.png"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image(path, path.with_name(f"block{args.block}_label.png"), args.block, args.block, seed=args.block,
                    progress=False)
    return path


def synthetic_source(args, root: Path, height: int, width: int, seed: int | None = None) -> Path:
    """The layout's image_3 under ``root``, ``height`` x ``width`` (cached): synthesised with ``seed``, or the
    ``--block`` block repeated where there is no seed or the image is wider than the block (synthesis is slow)."""
    from cropmap.data.synthetic import write_image
    from cropmap.raster import read_png

    src = source_of(root)
    if not src.exists():
        src.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if seed is None or width > args.block:
            write_tiled(src, read_png(block(args)), height, width)
        else:
            write_image(src, src.with_name("image_3_label.png"), height, width, seed=seed, progress=False)
        print(f"wrote {src} ({height}x{width}) in {time.perf_counter() - t0:.0f} s", flush=True)
    return src


def prepare_tall(args) -> Path:
    """A synthetic source as wide as the small one and four times as high, under OUT/tall (cached)."""
    width = args.sizes[0]
    root = Path(args.out) / f"tall_{4 * width}x{width}"
    synthetic_source(args, root, 4 * width, width, seed=width + 1)
    return root


def prepare(args, size: int) -> Path:
    """A synthetic ``size`` x ``size`` source (and with ``--precut`` its windows) under OUT/SIZE (cached)."""
    root = Path(args.out) / str(size)
    synthetic_source(args, root, size, size, seed=size)
    stamp = root / "test" / f".cut_{args.tile_size}_{args.stride}"
    if args.precut and not stamp.exists():
        subprocess.run([sys.executable, str(ROOT / "generate_test_data.py"), "--data_root", str(root), "--images",
                        "image_3", "--tile_size", str(args.tile_size), "--stride", str(args.stride), "--quiet"], check=True)
        stamp.touch()
    return root


def prepare_full(args) -> Path:
    """An image of image_3's size under OUT/full (cached): the synthetic block, repeated."""
    height, width = args.full_size
    root = Path(args.out) / f"full_{height}x{width}"
    synthetic_source(args, root, height, width)
    return root


# ---- in-process measurements ---------------------------------------------------------------------------


class ZeroModel:
    """A model that costs nothing: zero logits ``[B, C, H, W]`` for any input (one cached tensor per shape)."""

    def __init__(self, num_classes: int = 4):
        self.num_classes, self.cache = num_classes, {}

    def __call__(self, x):
        import torch

        key = (x.shape[0], x.shape[2], x.shape[3], x.device)
        if key not in self.cache:
            self.cache[key] = torch.zeros((x.shape[0], self.num_classes, x.shape[2], x.shape[3]), device=x.device)
        return self.cache[key]


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def throughput(args) -> dict:
    """In this process: pure forward, predict from the source, (pre-cut windows,) zero model; best of repeats."""
    import torch

    from cropmap.train.checkpoint import load_model
    from cropmap.data.normalize import normalize
    from cropmap.core.device import amp_dtype as amp_rule, select_device
    from cropmap.predict.inference import keep_freed_memory, predict_from_source, predict_image
    from cropmap.core.layout import tiles_csv, window_folder, windows_dir
    from cropmap.raster import raster_info
    from cropmap.data.tiling import read_tiles_csv

    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as predict does, for the pure forward too
    root = Path(args.root)
    src = source_of(root)
    info = raster_info(src)
    device = select_device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    model, _ = load_model(checkpoint(args), device=device)
    model = model.to(memory_format=torch.channels_last)
    views = {"none": 1, "flip": 3, "d4": 8}[args.tta]
    amp_dtype = amp_rule(device) or torch.bfloat16  # the rule predict.py follows
    out = Path(args.out)

    g = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (args.batch_size, 4, args.tile_size, args.tile_size), dtype=torch.uint8, generator=g)
    x = normalize(raw.to(device)).contiguous(memory_format=torch.channels_last)
    iters = max(2, min(20, 64 // args.batch_size)) if not cuda else 50

    def pure() -> dict:
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            model(x)
            cuda_sync(device)
            t0 = time.perf_counter()
            for _ in range(iters):
                model(x)
            cuda_sync(device)
        secs = time.perf_counter() - t0
        return {"win_per_s": iters * args.batch_size / secs / views}

    def timed(fn) -> dict:
        cuda_sync(device)
        t0, c0 = time.perf_counter(), cpu_seconds()
        res = fn()
        cuda_sync(device)
        secs, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        n = res["windows"]
        return {"windows": n, "seconds": secs, "win_per_s": n / secs, "win_per_cpu_s": n / max(cpu, 1e-9),
                "mpix_per_s": info.width * info.height / 1e6 / secs, "cpu_s": cpu}

    common = dict(device=device, batch_size=args.batch_size, tta=args.tta, amp=args.amp, progress=False)

    def source(m) -> dict:
        return timed(lambda: predict_from_source(m, src, out / "throughput_map.png", tile_size=args.tile_size,
                                                 stride=args.stride, preview_path=out / "throughput_preview.png",
                                                 num_classes=4, **common))

    def windows() -> dict:
        rows = [r for r in read_tiles_csv(tiles_csv(windows_dir(root))) if r["image"] == "image_3"]
        folder = windows_dir(root) / window_folder("image_3")
        return timed(lambda: predict_image(model, rows, folder, out / "throughput_map_w.png", workers=args.workers,
                                           preview_path=out / "throughput_preview_w.png", num_classes=4, **common))

    zero = ZeroModel()
    runs = {"pure": pure, "source": lambda: source(model), "zero": lambda: source(zero)}
    if args.precut:
        runs["windows"] = windows
    best: dict = best_of(runs, args.repeats, "win_per_s", larger=True)
    best["threads"] = torch.get_num_threads()
    best["device_name"] = torch.cuda.get_device_name(device) if cuda else f"cpu ({os.cpu_count()} cores)"
    return best


# ---- separate processes -------------------------------------------------------------------------------


def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd`` as a child of a fresh process: its peak RSS (MiB, the largest process) and wall time."""
    return run_worker("bench.predict", ["--worker", "measure", "--", *cmd], env)


def predict_cmd(args, src: Path, out: Path) -> list[str]:
    return ["predict.py", "--source", str(src), "--checkpoint", str(checkpoint(args)), "--output_dir", str(out),
            "--tile_size", str(args.tile_size), "--stride", str(args.stride), "--batch_size", str(args.batch_size),
            "--device", args.device, "--threads", str(args.threads), "--tta", args.tta, "--quiet"] + (["--amp"] if args.amp else [])


def main(args: argparse.Namespace) -> dict:
    if args.worker == "measure":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if r.returncode:
            sys.stderr.write(r.stdout[-2000:] + r.stderr[-4000:])
            raise SystemExit(r.returncode)
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
        print(json.dumps({"peak_rss_mib": rss, "wall_s": time.perf_counter() - t0}))
        return {}
    if args.worker == "throughput":
        print(json.dumps(throughput(args)))
        return {}

    small, large = args.sizes
    roots = {s: prepare(args, s) for s in (small, large)}
    checkpoint(args)
    results: dict = {"args": {k: v for k, v in vars(args).items() if k not in ("worker", "root", "cmd")}}

    worker = ["--worker", "throughput", "--root", str(roots[large])]
    for k in ("model", "backbone", "tile_size", "stride", "batch_size", "tta", "workers", "device", "threads", "out",
              "repeats", "block"):
        worker += [f"--{k}", str(getattr(args, k))]
    worker += (["--amp"] if args.amp else []) + (["--precut"] if args.precut else [])
    results["throughput"] = run_worker("bench.predict", worker)

    for s, root in [*roots.items(), ("tall", prepare_tall(args))]:
        m = measure([sys.executable, *predict_cmd(args, source_of(root), root / "submit")])
        results[f"rss_{s}"] = m
    if args.full:
        root = prepare_full(args)
        for tta in [args.tta, *args.full_tta]:
            cmd = predict_cmd(argparse.Namespace(**{**vars(args), "tta": tta}), source_of(root), root / "submit")
            results[f"full_{tta}"] = measure([sys.executable, *cmd])
    if args.shared > 1:
        src, root = source_of(roots[large]), roots[large]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        one = measure([sys.executable, *predict_cmd(args, src, root / "one")], env)
        many = measure([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                        str(args.shared), *predict_cmd(args, src, root / "shared")], env)
        same = filecmp.cmp(root / "one" / "image_3_predict.png", root / "shared" / "image_3_predict.png", shallow=False)
        results["shared"] = {"one": one, "many": many, "processes": args.shared, "identical": same}

    report(args, results)
    path = Path(args.out) / "results.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"-> {path}")
    return results


def report(args, results: dict) -> None:
    """The compact table."""
    t = results["throughput"]
    small, large = args.sizes
    pure, src, zero = t["pure"], t["source"], t["zero"]
    h3 = IMAGE3[0] * IMAGE3[1] / 1e6
    amp = "AMP" if args.amp else "fp32"
    print(f"\n{args.model}-{args.backbone}, {t['device_name']}, {amp}, batch {args.batch_size}, windows "
          f"{args.tile_size} px every {args.stride}, TTA {args.tta}, {t['threads']} torch thread(s); "
          f"{large}x{large} image, {src['windows']} windows\n")
    views = {"none": 1, "flip": 3, "d4": 8}[args.tta]

    def rate(name: str, r: dict, notes: str) -> list:  # a row of a measurement in windows/s
        return [name, f"{r['win_per_s']:.2f}", f"{r['win_per_s'] / pure['win_per_s']:.3f}", f"{r['mpix_per_s']:.2f}",
                notes]

    rows = [["pure forward (pre-loaded batch, channels_last)", f"{pure['win_per_s']:.2f}", "1", "",
             f"{views} forward pass(es) per window"],
            rate("predict from the source", src, f"{src['seconds']:.1f} s")]
    if "windows" in t:
        rows.append(rate("predict from pre-cut windows", t["windows"], f"{args.workers} loader worker(s)"))
    rows.append(["predict, zero-cost model", f"{zero['win_per_s']:.1f}", "", f"{zero['mpix_per_s']:.1f}",
                 f"**{zero['win_per_cpu_s']:.1f} windows per CPU-second** (all threads)"])
    a, b = results[f"rss_{small}"]["peak_rss_mib"], results[f"rss_{large}"]["peak_rss_mib"]
    c = results["rss_tall"]["peak_rss_mib"]
    rows += [[f"peak RSS of predict.py, {small}^2 vs {4 * small}x{small} (4x the height)", "", "", "",
              f"{a:.0f} vs {c:.0f} MiB ({c / a:.3f})"],
             [f"peak RSS of predict.py, {small}^2 vs {large}^2 ({large // small}x the width: a wider band)", "", "", "",
              f"{a:.0f} vs {b:.0f} MiB ({b / a:.3f})"]]
    fh, fw = args.full_size
    for k in [k for k in results if k.startswith("full_")]:
        f = results[k]
        rows.append([f"predict.py, {fh}x{fw} (image_3: {IMAGE3[0]}x{IMAGE3[1]}), TTA {k[5:]}", "", "",
                     f"{fh * fw / 1e6 / f['wall_s']:.1f}",
                     f"**{f['wall_s']:.1f} s** (whole process, measured), peak RSS {f['peak_rss_mib']:.0f} MiB"])
    rows.append([f"predict, image_3 size {IMAGE3[0]}x{IMAGE3[1]}", "", "", "",
                 f"**{h3 / src['mpix_per_s']:.0f} s** (extrapolated from {large}^2's Mpixel/s; zero-cost model: "
                 f"{h3 / zero['mpix_per_s']:.0f} s)"])
    if "shared" in results:
        s = results["shared"]
        rows.append([f"predict.py, {s['processes']} processes sharing the image (torchrun)", "", "", "",
                     f"{s['many']['wall_s']:.1f} s vs {s['one']['wall_s']:.1f} s for one process; maps "
                     f"{'identical' if s['identical'] else 'DIFFER'}"])
    print(markdown_table(["measurement", "windows/s", "vs pure forward", "Mpixel/s of source", "notes"], rows))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
