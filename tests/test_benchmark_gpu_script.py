"""run_scripts/benchmark_gpu.sh: its parts run (TINY=1: on the tiny config, on the CPU) and write their tables; on
a machine without CUDA it refuses to pretend to measure GPU figures; a wrong part is named."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import torch

from tests.conftest import REPO

SCRIPT = str(REPO / "run_scripts" / "benchmark_gpu.sh")


def run_script(tmp_path, *parts: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHON": str(REPO / ".venv" / "bin" / "python")
                if (REPO / ".venv" / "bin" / "python").exists() else "python",
                "OUT_DIR": str(tmp_path / "bench"), "OMP_NUM_THREADS": "2", **env}
    return subprocess.run(["bash", SCRIPT, *parts], env=full_env, capture_output=True, text=True, timeout=900)


def test_tiny_run_of_the_parts_writes_their_tables(tmp_path):
    result = run_script(tmp_path, "checks", "cache", "maxbatch", "fps", TINY="1", STEPS="1", BATCH="2")
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "bench"
    cache = (out / "cache.txt").read_text()
    assert "candidate / baseline" in cache and "yes" in cache
    assert re.search(r"\|\s+image_region \|\s+2 \|", cache)  # at BATCH=2
    fps = (out / "fps.txt").read_text()
    assert "fps_backend=triton" in fps and "pointcloud_region" in fps
    if not torch.cuda.is_available():
        assert "checks: skipped (no CUDA device)" in result.stderr
        assert "maxbatch: skipped (no CUDA device)" in result.stderr
        assert not (out / "checks.txt").exists()


def test_tiny_run_at_the_configs_batch(tmp_path):
    """Without BATCH (an empty argument list under `set -u`), each modality runs at its dataset's batch (16)."""
    result = run_script(tmp_path, "opt2.7b", TINY="1", STEPS="1")
    assert result.returncode == 0, result.stderr[-3000:]
    main = (tmp_path / "bench" / "opt2.7b.txt").read_text()
    for modality in ("image", "image_region", "pointcloud", "pointcloud_region"):
        assert re.search(rf"\|\s+{modality} \|\s+16 \|", main), modality  # a row per modality, at batch 16
    assert "gen samples/s" in main


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_without_cuda_it_refuses_to_measure(tmp_path):
    result = run_script(tmp_path, "opt2.7b")
    assert result.returncode == 2 and "no CUDA device" in result.stderr


def test_an_unknown_part_is_named(tmp_path):
    result = run_script(tmp_path, "opt27b", TINY="1")
    assert result.returncode == 2
    assert "unknown part 'opt27b'" in result.stderr and "checks opt2.7b cache maxbatch compile fps" in result.stderr
