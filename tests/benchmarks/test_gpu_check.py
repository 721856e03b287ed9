"""The CPU-side parts of ``benchmarks/gpu_check.sh`` (no GPU here): the helper's training loop on the CPU,
the peak table, the merge into one JSON line, and the script's dry run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

HELPER = REPO_ROOT / "benchmarks" / "gpu_check.py"
SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.sh"


def _run(*args: str, timeout: int = 600) -> dict:
    r = subprocess.run(
        [sys.executable, str(HELPER), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_peak_table() -> None:
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from gpu_check import bf16_peak_tflops

    assert bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bf16_peak_tflops("NVIDIA H200") == 989.4
    assert bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bf16_peak_tflops("Some Other Card") is None


def test_train_loop_on_cpu(tmp_path: Path) -> None:
    from pipelines.testing import write_synthetic_cubes

    cubes = tmp_path / "cubes"
    write_synthetic_cubes(cubes, seed=1, n_tiles=1, tile_m=960, n_times=3, cloud_cover=(0.0, 0.0))
    out = _run(
        "train", "--device", "cpu", "--config", "tiny", "--steps", "3", "--batch-size", "2", "--workers", "0",
        "--cubes", str(cubes), "--peak-tflops", "1.0",
    )  # fmt: skip
    assert out["part"] == "train" and out["steps"] == 3 and out["device"] == "cpu"
    assert out["step_s_median"] > 0 and out["samples_per_s"] > 0
    assert out["flops_per_sample_fwd_bwd"] > 1e6 and 0 < out["mfu"] < 1
    assert out["peak_memory_gib"] is None


def test_merge_and_dry_run(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('noise\n{"part": "a", "x": 1}\n')
    merged = _run("merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert merged == {"check": "gpu_check", "a": {"part": "a", "x": 1}, "b": {"missing": True}}
    if shutil.which("bash") is None:
        pytest.skip("no bash on this machine")
    r = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env={"PY": sys.executable, "WORK": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert sum(line.startswith("step ") for line in lines) == 4
    limits = [int(line.split("(<= ")[1].split("s)")[0]) for line in lines if line.startswith("step ")]
    assert sum(limits) <= 8 * 60 - 10  # the whole check fits in 8 minutes
    last = json.loads(lines[-1])
    assert set(last) == {"check", "gpu_tests", "train", "torchrun", "embed"}
