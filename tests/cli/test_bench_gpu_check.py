"""``bench/gpu_check.py --smoke``: the GPU check runs end to end at tiny size on the CPU and reports every figure."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: every figure the GPU run must give (``null`` on the CPU where the figure is CUDA-only)
KEYS = {
    "meta": ["device", "torch", "smoke", "dtype", "size", "steps", "batches", "wall_s"],
    "restore.b": ["eager_s_per_image", "plain_passes_eager_s_per_image", "vs_plain_eager"],
    "restore.b.compiled": ["compile_warmup_s", "compiled_s_per_image", "vs_plain_compiled"],
    "train": ["resolution", "checkpointing_ratio"],
    "train.run": ["peak_extra_bytes", "step_s"],
    "train.grad": ["fp16_rel_l2", "fp16_scaled_rel_l2", "median_abs_grad_fp32"],
    "offload": ["method", "steps", "peak_bytes", "s_per_image"],
}


def run_smoke(tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--smoke", "--json", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=str(tmp_path),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    for key in ("restore.b1.eager_s_per_image", "train.grad.fp16_rel_l2", "offload.s_per_image"):
        assert key in run.stdout  # the readable table names every figure
    return results


def check(results: dict, compiled: bool) -> None:
    for k in KEYS["meta"]:
        assert k in results["meta"], k
    for section, keys in (("train", "train"), ("train.grad", "train.grad"), ("offload", "offload")):
        d = results
        for part in section.split("."):
            d = d[part]
        assert all(k in d for k in KEYS[keys]), (section, sorted(d))
    for name in ("checkpointing", "no_checkpointing"):
        assert all(k in results["train"][name] for k in KEYS["train.run"])
    assert results["meta"]["smoke"] is True and results["meta"]["batches"] == [1, 2]
    for b in results["meta"]["batches"]:
        r = results["restore"][f"b{b}"]
        for k in KEYS["restore.b"] + (KEYS["restore.b.compiled"] if compiled else []):
            assert isinstance(r[k], float) and r[k] > 0 and math.isfinite(r[k]), (b, k, r.get(k))
    assert results["restore"]["peak_extra_bytes"] is None  # CUDA only: never a CPU stand-in
    for name in ("checkpointing", "no_checkpointing"):
        assert results["train"][name]["peak_extra_bytes"] is None and results["train"][name]["step_s"] > 0
    assert results["train"]["checkpointing_ratio"] is None
    grad = results["train"]["grad"]
    # the fp16 step really differs from the fp32 one (so the figure is measured), but is the same step (small error)
    assert 0 < grad["fp16_rel_l2"] < 0.5 and 0 < grad["fp16_scaled_rel_l2"] < 0.5, grad
    assert grad["median_abs_grad_fp32"] > 0
    off = results["offload"]
    assert "cpu_offload" in off["method"] and off["peak_bytes"] is None and off["s_per_image"] > 0


def test_gpu_check_smoke_reports_every_figure(tmp_path):
    check(run_smoke(tmp_path, "--no-compile"), compiled=False)


@pytest.mark.slow
def test_gpu_check_smoke_with_the_compiled_restore(tmp_path):
    check(run_smoke(tmp_path), compiled=True)
