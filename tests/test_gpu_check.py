"""bench.gpu_check without a GPU: the plan it runs on CUDA, and how it runs and reports steps.

The whole check on the CPU (``python -m bench.gpu_check --device cpu``, about 5 CPU-minutes) is run by hand.
"""

import importlib
import json
import sys


def load_gpu_check():
    from bench import gpu_check

    return gpu_check


def test_cuda_plan_runs_every_entry_on_the_gpu(tmp_path):
    gc = load_gpu_check()
    args = gc.apply_defaults(gc.get_args_parser().parse_args(["--device", "cuda", "--out", str(tmp_path)]))
    steps = {s["name"]: s for s in gc.plan(args, tmp_path / "work")}
    entries = ["train.py", "train_focalloss.py", "train_swa.py", "train_multiscale.py", "Unet_resnet34/train.py"]
    for script in entries:
        cmd = steps[script]["cmd"]
        assert cmd[cmd.index(gc.STEP_FLAG) + 1] == script
        assert cmd[cmd.index("--device") + 1] == "cuda" and "--amp" in cmd and "--train" in cmd
    ddp = steps["torchrun 1 process"]
    assert ddp["cmd"][1:4] == ["-m", "torch.distributed.run", "--standalone"] and "--sync_bn" in ddp["cmd"]
    assert "nccl" in ddp["expect"]
    assert "--resume" in steps["resume train.py"]["cmd"]
    on_cpu = steps["resume on the CPU"]["cmd"]
    assert on_cpu[on_cpu.index("--device") + 1] == "cpu" and "--resume" in on_cpu
    predicts = [s for name, s in steps.items() if name.startswith("predict")]
    assert len(predicts) == 3
    for s in predicts:
        cmd = s["cmd"]
        assert "--amp" in cmd and cmd[cmd.index("--tta") + 1] == "flip" and cmd[cmd.index("--device") + 1] == "cuda"
    assert {"vote", "fill_hole", "score", "evaluate (no --train)", "environment"} <= set(steps)
    assert args.budget <= 360  # the check must end within 6 minutes


def test_steps_table_failures_and_skips(tmp_path):
    """A failing step, a step whose proof is missing and the steps that need them are reported; the step
    runner records the peak RSS of the script it runs."""
    gc = load_gpu_check()
    script = tmp_path / "hello.py"
    script.write_text("import sys\nprint('hello from', sys.argv[1])\n")
    py = sys.executable
    steps = [
        dict(name="ok", cmd=[py, "-m", "bench.gpu_check", gc.STEP_FLAG, str(script), "x"],
             expect=r"hello from x"),
        dict(name="exit 3", cmd=[py, "-c", "import sys; sys.exit(3)"]),
        dict(name="needs exit 3", cmd=[py, "-c", "pass"], needs=["exit 3"]),
        dict(name="no proof", cmd=[py, "-c", "print('nothing')"], expect=r"\(DDP, nccl\)"),
        dict(name="slow", cmd=[py, "-c", "import time; time.sleep(60)"]),
    ]
    rows = gc.run_steps(steps, tmp_path / "out", step_timeout=10, budget=100)
    status = {r["step"]: r["status"] for r in rows}
    assert status == {"ok": "ok", "exit 3": "FAILED (exit 3)", "needs exit 3": "skipped (needs exit 3)",
                      "no proof": r"FAILED (no '\(DDP, nccl\)' in log)", "slow": "FAILED (timeout 10 s)"}
    assert rows[0]["rss_mib"] > 1 and rows[0]["gpu_mib"] is None and rows[2]["seconds"] is None
    log = (tmp_path / "out" / "logs" / "01_ok.log").read_text()
    assert log.startswith("$ ") and "hello from x" in log
    table = gc.format_table(rows, "title")
    assert "| exit 3 | FAILED (exit 3) |" in table and "| needs exit 3 | skipped (needs exit 3) | - | - | - |" in table
    json.dumps(rows)  # the table is also written as JSON


def _load_bench(name):
    return importlib.import_module(f"bench.{name}")


def test_cuda_speed_plan_parses_with_the_benchmarks_flags(tmp_path):
    """--speed on CUDA: the two benchmarks get flags they accept (a typo would fail only on the GPU machine)."""
    gc = load_gpu_check()
    args = gc.apply_defaults(gc.get_args_parser().parse_args(["--device", "cuda", "--speed", "--out", str(tmp_path)]))
    assert args.step_timeout >= 400 and args.budget <= 560
    steps = {s["name"]: s for s in gc.plan_speed(args, tmp_path / "work")}
    for name, bench in [("speed training", "train"), ("speed prediction", "predict")]:
        step = next(s for n, s in steps.items() if n.replace(":", "") == name)
        cmd = step["cmd"]
        assert cmd[1:3] == ["-m", f"bench.{bench}"] and "--amp" in cmd and cmd[cmd.index("--device") + 1] == "cuda"
        parsed = _load_bench(bench).get_args_parser().parse_args(cmd[3:])
        assert parsed.device == "cuda" and parsed.amp and parsed.backbone == "resnet50"
    assert {"environment", "synthetic training set", "training tiles"} <= set(steps)
