"""Benchmark: predict.py's throughput against the bare forward pass, and its peak memory at two sizes.

    python bench/predict.py                                  # CPU-sized defaults: 1536^2 and 3072^2
    python bench/predict.py --sizes 4096 8192 --device cuda --amp --workers 8 --batch_size 16

Run by hand, never by tests. Side by side in one run:
  bare      the model's forward over the larger image's windows, already decoded and in memory
            (normalisation and softmax included, no decoding, stitching or writing): the floor
  predict   cropmap.inference.predict_image over the same windows: decode, forward, blend, stream the
            map and preview to PNG
  rss       peak RSS of ``predict.py`` (the real entry script, in a fresh process) at each size,
            measured by an intermediate process with getrusage(RUSAGE_CHILDREN).ru_maxrss
Sources are synthetic (cropmap.synthetic), cut by generate_test_data.py, cached under --out.
The model is randomly initialised (throughput does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Benchmark predict.py against the bare forward pass", add_help=add_help)
    p.add_argument("--sizes", type=int, nargs=2, default=[1536, 3072], help="side of the small and the large square image (default: 1536 3072, 4x the area)")
    p.add_argument("--model", default="deeplabv3", help="model name (default: deeplabv3)")
    p.add_argument("--backbone", default="resnet18", help="backbone (default: resnet18)")
    p.add_argument("--tile_size", type=int, default=512, help="window side (default: 512)")
    p.add_argument("--stride", type=int, default=384, help="window stride (default: 384)")
    p.add_argument("--batch_size", type=int, default=4, help="windows per forward (default: 4)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of predict (default: 0; on a 2-core CPU they compete with the forward)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--amp", action="store_true", help="autocast in both measurements")
    p.add_argument("--repeats", type=int, default=2, help="alternating bare/predict passes; the best of each counts (default: 2)")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "predict"), help="work folder (default: bench/out/predict)")
    p.add_argument("--worker", choices=["throughput", "measure"], help=argparse.SUPPRESS)
    p.add_argument("--data_root", help=argparse.SUPPRESS)
    p.add_argument("cmd", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def prepare(args, size: int) -> Path:
    """Synthetic source, its test windows and a checkpoint under OUT/SIZE (cached)."""
    import torch

    from cropmap.checkpoint import save_checkpoint
    from cropmap.synthetic import write_image
    from cropmap.layout import TEST_SOURCE_DIR
    from models import build_model

    root = Path(args.out) / str(size)
    src = root / TEST_SOURCE_DIR / "image_3.png"
    if not src.exists():
        src.parent.mkdir(parents=True, exist_ok=True)
        write_image(src, src.with_name("image_3_label.png"), size, size, seed=size, progress=False)
    stamp = root / "test" / f".cut_{args.tile_size}_{args.stride}"
    if not stamp.exists():
        subprocess.run(
            [sys.executable, str(ROOT / "generate_test_data.py"), "--data_root", str(root), "--images", "image_3",
             "--tile_size", str(args.tile_size), "--stride", str(args.stride), "--quiet"],
            check=True,
        )
        stamp.touch()
    ckpt = root / "model" / f"bench_{args.model}_{args.backbone}_best.pth"
    if not ckpt.exists():
        torch.manual_seed(0)
        model = build_model(args.model, args.backbone, num_classes=4, aux=False)
        flags = {"model": args.model, "backbone": args.backbone, "num_classes": 4, "output_stride": 16, "crop_size": args.tile_size}
        save_checkpoint({"model": model.state_dict(), "args": flags, "epoch": 0, "optimizer": {}, "metrics": {}}, ckpt)
    return root


def throughput(args) -> dict:
    """In this process: bare forward over the decoded windows, then predict_image over the same windows."""
    import torch

    from cropmap.checkpoint import find_best, load_model
    from cropmap.data import normalize
    from cropmap.device import select_device
    from cropmap.inference import WindowDataset, forward_probs, predict_image
    from cropmap.layout import TEST_DIR, window_folder
    from cropmap.tiling import read_tiles_csv

    root = Path(args.data_root)
    device = select_device(args.device)
    model, _ = load_model(find_best(root / "model"), device=device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    rows = sorted(read_tiles_csv(root / TEST_DIR / "tiles.csv"), key=lambda r: (r["y"], r["x"]))
    folder = root / TEST_DIR / window_folder("image_3")
    ds = WindowDataset(folder, rows)
    windows = torch.stack([ds[i][1] for i in range(len(ds))])
    batches = list(torch.split(windows, args.batch_size))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def bare_pass() -> float:
        t0 = time.perf_counter()
        for b in batches:
            p = forward_probs(model, normalize(b.to(device)), amp=args.amp, channels_last=device.type == "cuda")
            p.cpu()
        sync()
        return time.perf_counter() - t0

    def predict_pass() -> float:
        t0 = time.perf_counter()
        predict_image(model, rows, folder, Path(args.out) / "throughput_map.png", device=device, batch_size=args.batch_size,
                      workers=args.workers, amp=args.amp, preview_path=Path(args.out) / "throughput_preview.png",
                      progress=False)
        sync()
        return time.perf_counter() - t0

    forward_probs(model, normalize(batches[0].to(device)), amp=args.amp, channels_last=device.type == "cuda")  # warm-up
    sync()
    # alternate the two and keep each one's best time: the machine may be shared
    times = {"bare": [], "predict": []}
    for _ in range(args.repeats):
        times["bare"].append(bare_pass())
        times["predict"].append(predict_pass())
    bare, pred = min(times["bare"]), min(times["predict"])
    return {"windows": len(rows), "bare_s": bare, "predict_s": pred, "bare_win_per_s": len(rows) / bare,
            "predict_win_per_s": len(rows) / pred, "overhead": pred / bare - 1, "times": times}


def measure(cmd: list[str]) -> dict:
    """Run ``cmd`` as a child of a fresh process and return its peak RSS (MiB) and wall time."""
    wrapper = [sys.executable, str(Path(__file__).resolve()), "--worker", "measure", "--", *cmd]
    out = subprocess.run(wrapper, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(args: argparse.Namespace) -> dict:
    if args.worker == "measure":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            sys.stderr.write(r.stderr)
            raise SystemExit(r.returncode)
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
        print(json.dumps({"peak_rss_mib": rss, "wall_s": time.perf_counter() - t0}))
        return {}
    if args.worker == "throughput":
        print(json.dumps(throughput(args)))
        return {}

    from cropmap.raster import raster_info

    small, large = args.sizes
    roots = {s: prepare(args, s) for s in (small, large)}
    results: dict = {"args": {k: v for k, v in vars(args).items() if k not in ("worker", "data_root", "cmd")}}
    for s, root in roots.items():
        cmd = [sys.executable, str(ROOT / "predict.py"), "--data_root", str(root), "--images", "image_3",
               "--output_dir", str(root / "submit"), "--batch_size", str(args.batch_size), "--workers", str(args.workers),
               "--device", args.device, "--quiet"] + (["--amp"] if args.amp else [])
        m = measure(cmd)
        info = raster_info(root / "submit" / "image_3_predict.png")
        m.update(height=info.height, width=info.width)
        results[f"rss_{s}"] = m
        print(f"predict.py {s}x{s}: peak RSS {m['peak_rss_mib']:.0f} MiB, wall {m['wall_s']:.1f} s", flush=True)
    a, b = results[f"rss_{small}"]["peak_rss_mib"], results[f"rss_{large}"]["peak_rss_mib"]
    results["rss_ratio"] = b / a
    print(f"peak RSS large / small ({(large / small) ** 2:.0f}x the area): {b / a:.3f}")
    worker = [sys.executable, str(Path(__file__).resolve()), "--worker", "throughput", "--data_root", str(roots[large])]
    for k in ("model", "backbone", "batch_size", "workers", "device", "out", "repeats"):
        worker += [f"--{k}", str(getattr(args, k))]
    worker += ["--amp"] if args.amp else []
    out = subprocess.run(worker, check=True, capture_output=True, text=True)
    t = json.loads(out.stdout.strip().splitlines()[-1])
    results["throughput"] = t
    print(f"{large}x{large}, {t['windows']} windows: bare forward {t['bare_win_per_s']:.2f} win/s, "
          f"predict {t['predict_win_per_s']:.2f} win/s, overhead {100 * t['overhead']:.1f}%")
    path = Path(args.out) / "results.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"-> {path}")
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
