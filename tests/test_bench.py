"""Tests of the speed benchmarks (bench/) on tiny inputs; bench.gpu_check's are in test_gpu_check.py."""

import pytest

TILES = dict(n_train=12, n_val=3, size=64)  # the module's shared training tiles (conftest.py: tiles)


def test_bench_train_reports_both_throughputs(tiles, capsys):
    from bench import train as bench_train

    args = bench_train.get_args_parser().parse_args(
        ["--data_root", str(tiles), "--backbone", "resnet18", "--device", "cpu", "--crop_size", "32",
         "--batch_size", "2", "--workers", "1", "--threads", "1", "--iters", "2", "--warmup", "1", "--repeats", "1",
         "--epoch_iters", "3", "--repeat_tiles", "2"])
    result = bench_train.main(args)
    assert result["full"] > 0 and result["bare"] > 0
    assert result["loader_1"] > 0 and result["loader_n"] > 0 and result["epoch"] > 0
    assert result["overhead_pct"] == pytest.approx(100 * (1 - result["full"] / result["bare"]))
    assert "data pipeline overhead" in capsys.readouterr().out
    assert not (tiles / "model").exists()  # the benchmark writes nothing
