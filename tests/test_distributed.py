"""Two CPU processes under torchrun (gloo): identical parameters on both ranks, each sample once per epoch."""

import json
import os
import subprocess
import sys

import torch

from tests.conftest import REPO, toy_run_config, write_yaml


def torchrun(nproc: int, script: str, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_two_process_run(tmp_path):
    data = toy_run_config(tmp_path, max_epoch=2, trace_samples=True, modality_schedule="interleaved")
    cfg_path = write_yaml(tmp_path / "run.yaml", data)
    result = torchrun(2, "tests/dist_train_check.py", str(cfg_path))
    assert result.returncode == 0, result.stderr[-4000:]
    out = tmp_path / "out"
    rank0 = torch.load(out / "final_rank0.pt", weights_only=True)
    rank1 = torch.load(out / "final_rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name

    traces = [json.loads(line) for r in (0, 1) for line in (out / f"samples_rank{r}.jsonl").read_text().splitlines()]
    for epoch in (0, 1):
        for dataset, size in (("set_a", 16), ("set_b", 8)):
            ids = [i for t in traces if t["epoch"] == epoch and t["dataset"] == dataset for i in t["sample_ids"]]
            assert sorted(ids) == sorted(f"toy-{i}" for i in range(size)), (epoch, dataset)
    # Both ranks walked the same plan, step for step.
    plans = [[(t["epoch"], t["position"], t["dataset"])
              for t in map(json.loads, (out / f"samples_rank{r}.jsonl").read_text().splitlines())] for r in (0, 1)]
    assert plans[0] == plans[1]
    assert (out / "checkpoint_00000006.pth").is_file()  # per rank: 2 + 1 batches an epoch, 2 epochs


def test_launch_scripts_run_two_processes(tmp_path):
    """run_scripts/train_1node.sh and train_multinode.sh (one node, c10d rendezvous) start a working 2-rank job."""
    env = {**os.environ, "NPROC": "2", "PYTHON": sys.executable, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for script, extra_env in (("train_1node.sh", {}), ("train_multinode.sh", {"NNODES": "1", "MASTER_PORT": "29561"})):
        out = tmp_path / script
        data = toy_run_config(out, max_epoch=1)
        cfg_path = write_yaml(tmp_path / f"{script}.yaml", data)
        result = subprocess.run(["bash", f"run_scripts/{script}", str(cfg_path), "--options", "run.max_epoch=2"],
                                cwd=REPO, env={**env, **extra_env}, capture_output=True, text=True, timeout=240)
        assert result.returncode == 0, result.stderr[-3000:]
        assert (out / "out" / "checkpoint_00000006.pth").is_file(), script  # --options reached train.py
