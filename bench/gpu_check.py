"""The GPU check: every entry script of the pipeline, for a few iterations, on one CUDA GPU.

Run by hand, from the repository root, on a machine with one CUDA GPU (README, "GPU check")::

    python -m bench.gpu_check                       # --device cuda, the GPU sizes; at most 6 minutes on one H100
    python -m bench.gpu_check --speed               # the speed figures instead (bench.train, bench.predict)
    python -m bench.gpu_check --device cpu          # dry run of the same steps on the CPU: smaller, no --amp

Steps, each the documented script in its own process (its command is the first line of its log; a script
runs under ``python -m bench.gpu_check --as_step SCRIPT``, which records its peak memory):
environment (versions, GPU, pyvips), a synthetic data set (``make_synthetic_data.py``), training tiles and
test windows, the five training entries (``train.py``, ``train_focalloss.py``, ``train_swa.py``,
``train_multiscale.py``, ``Unet_resnet34/train.py``) with ``--device D --amp``, a resume of the first run,
(on CUDA) a resume of its GPU checkpoint on the CPU, evaluation without ``--train``, ``torchrun
--nproc_per_node 1`` (DDP over NCCL with ``--sync_bn``; gloo on the CPU), ``predict.py --amp --tta flip``
with three of the models, ``vote.py``, ``fill_hole.py`` and ``score.py``.

With ``--speed`` the steps are the speed figures instead: a synthetic training set, ``python -m bench.train`` (the
loader alone, the full and the bare step, a 200-iteration epoch; DeepLabv3-ResNet-50, batch 16, AMP) and
``python -m bench.predict`` (pure forward vs predict from the source, a zero-cost model, peak RSS at two sizes, an
image of image_3's size with and without ``--tta flip``); their tables are in ``logs.txt``.

Prints a table (step, status, seconds, peak GPU memory as PyTorch's allocator saw it, peak RSS of the
step's main process) and writes it under ``--out`` (default ``$OUT`` when set, else
``bench/out/gpu_check``) with every step's log: ``table.md``, ``table.json``, ``logs.txt`` (few files, so
that a remote runner returns them all). A step fails on a
non-zero exit, a timeout, or a log without the line that proves it did its job (e.g. ``(DDP, nccl)``,
``amp bfloat16``, ``resumed from``);
steps that need a failed one are skipped. Exits 1 if any step failed or was skipped.
The data, tiles and checkpoints go to a temporary folder (``--work``), removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import resource
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import OUT, ROOT, markdown_table

STEP_FLAG = "--as_step"  # internal: run a script in this process and record its peak memory at exit
STEP = ["-m", "bench.gpu_check", STEP_FLAG]  # after the interpreter (or torchrun): run the next script as a step
REPORT_ENV = "GPU_CHECK_REPORT"

# Sizes and limits per device. The CPU dry run is smaller, predicts from non-overlapping windows and leaves
# bf16 autocast off (without native bf16, AVX512-BF16 or AMX, a CPU runs it 7-25x slower than fp32; README).
DEFAULTS = {
    "cuda": dict(size=2000, tile_size=256, stride=128, batch_size=8, iters=5, predict_batch=16, workers=4, amp=True,
                 budget=360, step_timeout=180),
    "cpu": dict(size=1000, tile_size=128, stride=128, batch_size=2, iters=2, predict_batch=4, workers=1, amp=False,
                budget=1800, step_timeout=600),
}

ENV_CODE = r"""
import sys, platform
import torch, torchvision, numpy, cv2, PIL, tqdm, matplotlib
print("python", platform.python_version(), "torch", torch.__version__, "torchvision", torchvision.__version__,
      "numpy", numpy.__version__, "opencv", cv2.__version__, "pillow", PIL.__version__)
import pyvips
print("pyvips", pyvips.__version__, "libvips", pyvips.version(0), pyvips.version(1), pyvips.version(2))
device = sys.argv[1]
if device.startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit("CUDA is not available (torch " + torch.__version__ + ")")
    p = torch.cuda.get_device_properties(0)
    try:
        nccl = torch.cuda.nccl.version()
        nccl = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
    except Exception as e:
        nccl = f"n/a ({type(e).__name__})"
    print("cuda", torch.version.cuda, "gpus", torch.cuda.device_count(), "gpu0", p.name,
          f"{p.total_memory / 2**30:.0f} GiB", "capability", torch.cuda.get_device_capability(0),
          "bf16", torch.cuda.is_bf16_supported(), "cudnn", torch.backends.cudnn.version(), "nccl", nccl)
    x = torch.randn(256, 256, device="cuda")
    print("matmul ok", float((x @ x).sum().isfinite()))
print("environment ok")
"""


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Run every step of the pipeline briefly on one CUDA GPU (or --device cpu "
                                "as a dry run) and print a table of status, time and peak memory.", add_help=add_help)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (dry run with smaller sizes)")
    p.add_argument("--out", default=os.environ.get("OUT") or str(OUT / "gpu_check"),
                   help="folder of the table and the logs (default: $OUT if set, else bench/out/gpu_check)")
    p.add_argument("--work", default=None, help="folder for data, tiles and checkpoints (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the --work folder (default: removed at the end)")
    p.add_argument("--size", type=int, default=None, help="longest side of the synthetic images (default: cuda 2000, cpu 1000)")
    p.add_argument("--tile_size", type=int, default=None, help="tile, crop and window side (default: cuda 256, cpu 128)")
    p.add_argument("--batch_size", type=int, default=None, help="training batch size (default: cuda 8, cpu 2)")
    p.add_argument("--iters", type=int, default=None, help="iterations per training epoch (default: cuda 5, cpu 2)")
    p.add_argument("--predict_batch", type=int, default=None, help="predict.py --batch_size (default: cuda 16, cpu 4)")
    p.add_argument("--workers", type=int, default=None, help="data loader workers (default: cuda 4, cpu 1)")
    p.add_argument("--threads", type=int, default=None, help="--threads of the training steps (default: PyTorch's choice)")
    p.add_argument("--stride", type=int, default=None, help="test window stride (default: cuda 128, cpu 128)")
    p.add_argument("--step_timeout", type=int, default=None,
                   help="seconds before a step is killed and failed (default: cuda 180, cpu 600)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="--amp in training, evaluation and prediction (default: on for cuda, off for cpu)")
    p.add_argument("--budget", type=int, default=None,
                   help="seconds after which the remaining steps are skipped (default: cuda 360, cpu 1800)")
    p.add_argument("--speed", action="store_true",
                   help="run the speed figures (bench.train, bench.predict) instead of the check of every "
                        "script; about 6 minutes on one GPU")
    return p


# ---- one step, run inside its own process ------------------------------------------------------


def run_as_step(argv: list[str]) -> None:
    """Run the script ``argv[0]`` with ``argv[1:]`` as ``python SCRIPT ARGS`` would from the repository root (the
    root, not the script's folder, first on the import path: every entry script imports from there), and at exit
    write its peak GPU memory (PyTorch's allocator) and peak RSS to ``$GPU_CHECK_REPORT.<pid>`` (JSON)."""
    script = os.path.abspath(argv[0])
    report = os.environ.get(REPORT_ENV)

    def write_report() -> None:
        info = {"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            info["gpu_mib"] = max(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())) / 2**20
        if report:
            Path(f"{report}.{os.getpid()}").write_text(json.dumps(info))

    atexit.register(write_report)
    sys.argv = [script, *argv[1:]]
    runpy.run_path(script, run_name="__main__")


# ---- the plan -----------------------------------------------------------------------------------


def plan(args: argparse.Namespace, work: Path) -> list[dict]:
    """The steps: ``name``, ``cmd`` (argv), ``expect`` (a regular expression the log must match), ``needs``
    (names of the steps it depends on)."""
    py = [sys.executable]
    step = [sys.executable, *STEP]
    cuda = args.device.startswith("cuda")
    t = args.tile_size
    model = work / "model"
    amp = ["--amp"] if args.amp else []
    common = ["--train", "--data_root", str(work), "--device", args.device, *amp, "--backbone", "resnet18",
              "--crop_size", str(t), "--batch_size", str(args.batch_size), "--epochs", "1",
              "--iters_per_epoch", str(args.iters), "--workers", str(args.workers), "--base_lr", "0.01",
              "--scale_min", "1", "--scale_max", "1", "--save_every", "1", "--quiet"]
    if args.threads:
        common += ["--threads", str(args.threads)]
    # the training banner names the device and the autocast dtype the rule picked
    dtype = ("(bfloat16|float16)" if cuda else "bfloat16") if args.amp else "off"
    trained = (r"process\(es\) on cuda:\d+" if cuda else r"process\(es\) on cpu") + f", amp {dtype}"
    steps = [
        dict(name="environment", cmd=[*py, "-c", ENV_CODE, args.device], expect="environment ok"),
        dict(name="synthetic data", cmd=[*step, "make_synthetic_data.py", "--data_root", str(work),
                                         "--size", str(args.size), "--quiet"], needs=["environment"]),
        dict(name="training tiles", cmd=[*step, "generate_train_data.py", "--data_root", str(work), "--tile_size", str(t),
                                         "--keep", "valid", "--val_fraction", "0.15", "--quiet"], needs=["synthetic data"]),
        dict(name="test windows", cmd=[*step, "generate_test_data.py", "--data_root", str(work), "--tile_size", str(t),
                                       "--stride", str(args.stride), "--quiet"], needs=["synthetic data"]),
    ]
    runs = [("train.py", "ce", []), ("train_focalloss.py", "focal", []),
            ("train_swa.py", "swa", ["--swa_start", "1"]),
            ("train_multiscale.py", "multiscale", ["--scales", f"{t},{t - 32}"]),
            ("Unet_resnet34/train.py", "unet", ["--backbone", "resnet34"])]
    for script, exp, extra in runs:
        steps.append(dict(name=script, cmd=[*step, script, *common, "--exp", f"gpu_{exp}", *extra],
                          expect=trained, needs=["training tiles"]))
    last = model / "deeplabv3_resnet18_gpu_ce_last.pth"
    steps.append(dict(name="resume train.py", needs=["train.py"], expect=r"resumed from \S+ at epoch 1\n[\s\S]*epoch 2/2:",
                      cmd=[*step, "train.py", *common, "--exp", "gpu_ce", "--epochs", "2", "--resume", str(last)]))
    if cuda:  # the GPU-written checkpoint goes on on the CPU
        on_cpu = [a for a in common if a != "--amp"]
        on_cpu[on_cpu.index("--device") + 1] = "cpu"
        steps.append(dict(name="resume on the CPU", needs=["resume train.py"],
                          expect=r"resumed from \S+ at epoch 2\n.*process\(es\) on cpu[\s\S]*epoch 3/3:",
                          cmd=[*step, "train.py", *on_cpu, "--exp", "gpu_ce", "--epochs", "3", "--resume", str(last)]))
    steps.append(dict(name="evaluate (no --train)", needs=["train.py"], expect=r"mIoU \(1\.\.3\)",
                      cmd=[*step, "train.py", "--data_root", str(work), "--device", args.device, *amp,
                           "--backbone", "resnet18", "--exp", "gpu_ce", "--workers", str(args.workers), "--quiet"]))
    ddp = [*common, "--exp", "gpu_ddp"] + (["--sync_bn"] if cuda else [])
    steps.append(dict(name="torchrun 1 process", needs=["training tiles"],
                      expect=r"\(DDP, nccl\)" if cuda else r"\(DDP, gloo\)",
                      cmd=[*py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                           *STEP, "train.py", *ddp]))
    predicted = []
    for name, script, checkpoint in [("ce", "train.py", "deeplabv3_resnet18_gpu_ce_best.pth"),
                                     ("focal", "train_focalloss.py", "deeplabv3_resnet18_gpu_focal_best.pth"),
                                     ("unet", "Unet_resnet34/train.py", "unet_resnet34_gpu_unet_best.pth")]:
        steps.append(dict(name=f"predict {name}", needs=[script, "test windows"],
                          expect=r"histogram matching to the training tiles(.|\n)*windows \(.*\) in",
                          cmd=[*step, "predict.py", "--data_root", str(work), "--checkpoint", str(model / checkpoint),
                               "--name", name, "--device", args.device, *amp, "--tta", "flip", "--radiometry", "histogram",
                               "--batch_size", str(args.predict_batch), "--workers", str(args.workers), "--quiet"]))
        predicted.append(f"predict {name}")
    steps += [
        dict(name="vote", needs=predicted, cmd=[*step, "vote.py", "--data_root", str(work), "--models", "ce", "focal", "unet",
                                                "--quiet"]),
        dict(name="fill_hole", needs=["vote"], cmd=[*step, "fill_hole.py", "--data_root", str(work), "--quiet"]),
        dict(name="score", needs=["fill_hole"], expect="mIoU",
             cmd=[*step, "score.py", "--data_root", str(work), "--json", str(Path(args.out) / "scores.json")]),
    ]
    return steps


def plan_speed(args: argparse.Namespace, work: Path) -> list[dict]:
    """The speed steps (``--speed``): the figures of the GPU-speed issue, as in the README's tables."""
    py = [sys.executable]
    cuda = args.device.startswith("cuda")
    amp = ["--amp"] if args.amp else []
    data = work / "speed"
    if cuda:
        size, tile, train = "4000", "512", ["--backbone", "resnet50", "--batch_size", "16", "--crop_size", "512",
                                            "--workers", "12", "--iters", "30", "--warmup", "5", "--epoch_iters", "200",
                                            "--repeat_tiles", "80"]
        predict = ["--backbone", "resnet50", "--batch_size", "16", "--threads", "16", "--repeats", "2",
                   "--sizes", "4096", "8192", "--full", "--full_tta", "flip"]
    else:  # a dry run of the same commands
        size, tile, train = "1000", "128", ["--backbone", "resnet18", "--batch_size", "2", "--crop_size", "128",
                                            "--workers", "1", "--iters", "2", "--warmup", "1", "--epoch_iters", "4"]
        predict = ["--backbone", "resnet18", "--batch_size", "2", "--repeats", "1", "--sizes", "256", "512",
                   "--tile_size", "128", "--stride", "64"]
    return [
        dict(name="environment", cmd=[*py, "-c", ENV_CODE, args.device], expect="environment ok"),
        dict(name="synthetic training set", needs=["environment"],
             cmd=[*py, "make_synthetic_data.py", "--data_root", str(data), "--size", size, "--images", "image_1",
                  "image_2", "--quiet"]),
        dict(name="training tiles", needs=["synthetic training set"],
             cmd=[*py, "generate_train_data.py", "--data_root", str(data), "--tile_size", tile, "--keep", "valid",
                  "--workers", str(max(2, args.workers)), "--quiet"]),
        dict(name="speed: training", needs=["training tiles"], expect="bare",
             cmd=[*py, "-m", "bench.train", "--data_root", str(data), "--device", args.device, *amp, *train,
                  "--repeats", "1"]),
        dict(name="speed: prediction", needs=["environment"], expect="pure",
             cmd=[*py, "-m", "bench.predict", "--device", args.device, *amp, *predict, "--out", str(work / "predict")]),
    ]


# ---- running and reporting ----------------------------------------------------------------------


def run_steps(steps: list[dict], out: Path, step_timeout: int, budget: int) -> list[dict]:
    """Run ``steps`` in order from the repository root; returns one result row per step."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    reports = Path(tempfile.mkdtemp(prefix="gpu_check_reports_"))
    status: dict[str, str] = {}
    rows = []
    start_all = time.perf_counter()
    for i, s in enumerate(steps, 1):
        name = s["name"]
        row = {"step": name, "status": "", "seconds": None, "gpu_mib": None, "rss_mib": None}
        rows.append(row)
        missing = [n for n in s.get("needs", []) if status.get(n) != "ok"]
        if missing:
            row["status"] = status[name] = f"skipped (needs {missing[0]})"
            continue
        if time.perf_counter() - start_all > budget:
            row["status"] = status[name] = "skipped (over --budget)"
            continue
        log = logs / f"{i:02d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('_')}.log"
        prefix = reports / f"{i:02d}"
        env = dict(os.environ, **{REPORT_ENV: str(prefix)})
        shown = " ".join(shlex.quote(c) for c in s["cmd"])
        t0 = time.perf_counter()
        with open(log, "w") as f:
            f.write(f"$ {shown}\n")
            f.flush()
            proc = subprocess.Popen(s["cmd"], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                code = proc.wait(timeout=step_timeout)
            except subprocess.TimeoutExpired:  # kill the step's whole process group (torchrun's workers too)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                code = None
        row["seconds"] = time.perf_counter() - t0
        for r in reports.glob(f"{i:02d}.*"):
            info = json.loads(r.read_text())
            for key in ("gpu_mib", "rss_mib"):
                if key in info:
                    row[key] = max(row[key] or 0.0, info[key])
        text = log.read_text(errors="replace")
        if code is None:
            row["status"] = f"FAILED (timeout {step_timeout} s)"
        elif code != 0:
            row["status"] = f"FAILED (exit {code})"
        elif s.get("expect") and not re.search(s["expect"], text):
            row["status"] = f"FAILED (no '{s['expect']}' in log)"
        else:
            row["status"] = "ok"
        status[name] = row["status"]
        print(f"{name}: {row['status']} in {row['seconds']:.1f} s", flush=True)
    shutil.rmtree(reports, ignore_errors=True)
    return rows


def format_table(rows: list[dict], title: str) -> str:
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    return f"{title}\n\n" + markdown_table(
        ["step", "status", "seconds", "peak GPU MiB", "peak RSS MiB"],
        [[r["step"], r["status"], num(r["seconds"], ".1f"), num(r["gpu_mib"], ".0f"), num(r["rss_mib"], ".0f")]
         for r in rows])


def apply_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the flags left unset with the :data:`DEFAULTS` of the device."""
    cuda = args.device.startswith("cuda")
    if not (cuda or args.device == "cpu"):
        raise SystemExit(f"--device {args.device!r}: expected cuda, cuda:N or cpu")
    defaults = dict(DEFAULTS["cuda" if cuda else "cpu"])
    if args.speed and cuda:  # two long benchmarks: each may take minutes, the whole about 6
        defaults.update(budget=540, step_timeout=420)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(args: argparse.Namespace) -> int:
    apply_defaults(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"GPU check on {args.device}: data in {work}, table and logs in {out}", flush=True)
    t0 = time.perf_counter()
    try:
        steps = plan_speed(args, work) if args.speed else plan(args, work)
        rows = run_steps(steps, work, args.step_timeout, args.budget)  # per-step logs in work/logs
        logs = sorted((work / "logs").glob("*.log"))
        (out / "logs.txt").write_text("".join(f"===== {p.name}\n{p.read_text(errors='replace')}\n" for p in logs))
        env_lines = [ln for ln in (logs[0].read_text(errors="replace").splitlines() if logs else [])
                     if ln.startswith(("python ", "pyvips ", "cuda "))]
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - t0
    failed = [r for r in rows if r["status"] != "ok"]
    title = (f"python -m bench.gpu_check --device {args.device}{' --speed' if args.speed else ''}: "
             f"{len(rows) - len(failed)}/{len(rows)} steps ok in "
             f"{total:.0f} s (synthetic --size {args.size}, tiles {args.tile_size}, batch {args.batch_size}, "
             f"1 epoch of {args.iters} iterations, amp {'on' if args.amp else 'off'})\n" + "\n".join(f"    {ln}" for ln in env_lines))
    table = format_table(rows, title)
    print("\n" + table, flush=True)
    (out / "table.md").write_text(table + "\n")
    (out / "table.json").write_text(json.dumps({"device": args.device, "seconds": total, "steps": rows,
                                                "environment": env_lines}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == STEP_FLAG:
        run_as_step(sys.argv[2:])
    else:
        sys.exit(main(get_args_parser().parse_args()))
