"""The benchmark scripts run end to end at a tiny size on the CPU (their figures come from real runs)."""

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_runs_tiny_on_the_cpu(capsys):
    result = load("bench_gpu").main(["--tiny", "--device", "cpu", "--no-compile", "--repeats", "1",
                                     "--batches", "1,2"])
    rows = {(r["family"], r["variant"], r["batch"]) for r in result["rows"]}
    assert rows == {(f, v, b) for f in ("sd15", "sdxl") for v in ("eager", "diffusers") for b in (1, 2)}
    assert all(r["seconds"] > 0 and r["unet_steps"] == 3 and r["floor_share"] is None for r in result["rows"])
    assert set(result["ratios"]) == {f"{f}_b{b}_ours_over_diffusers" for f in ("sd15", "sdxl") for b in (1, 2)}
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith('{"benchmark": "gpu_edit"')


def test_crop_and_stitch_benchmark_runs_tiny_on_the_cpu(capsys):
    result = load("bench_crop_and_stitch").main(["--tiny", "--sizes", "1", "--steps", "2", "--whole-up-to", "0"])
    row = result["sizes"][1]
    assert row["s_ours"] > 0 and row["s_theirs"] > 0 and "s_ours_whole_image" not in row
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith('{"benchmark": "crop_and_stitch"')


@pytest.mark.slow
def test_batch_benchmark_runs_tiny_on_the_cpu(capsys):
    result = load("bench_batch").main(["--tiny", "--rows", "1", "--steps", "2", "--workers", "1"])
    assert set(result["seconds"]) == {"processes", "single", "batch_w1"}
    assert set(result["ratios"]) == {"single_over_processes", "batch_w1_over_processes", "batch_w1_over_single"}
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith('{"benchmark": "batch"')
