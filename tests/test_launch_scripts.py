"""The run_scripts/ launchers called from another folder: relative paths (the config, --options values, WEIGHTS,
OUT) are taken from where the user stands, and a multi-rank run logs as README says (rank 0 alone on the console,
plain progress lines when the console is not a terminal, the world stated once)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, toy_run_config, write_yaml


def launch(script: str, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment.update({"PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env})
    return subprocess.run(["bash", str(REPO / "run_scripts" / script), *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300)


def user_folder(tmp_path: Path) -> Path:
    """A folder outside the repository holding a toy run config `run.yaml` whose output_dir is relative."""
    folder = tmp_path / "work"
    folder.mkdir()
    data = toy_run_config(tmp_path, max_epoch=1)
    data["run"]["output_dir"] = "out"
    write_yaml(folder / "run.yaml", data)
    return folder


def test_train_1node_takes_paths_from_where_the_user_stands(tmp_path):
    work = user_folder(tmp_path)
    result = launch("train_1node.sh", work, "run.yaml", "--options", "run.output_dir=runs/one", NPROC="2")
    assert result.returncode == 0, result.stderr[-3000:]
    out = work / "runs" / "one"  # --options' relative path, from the user's folder
    assert (out / "checkpoint_00000003.pth").is_file()  # per rank: 2 + 1 batches, one epoch
    assert not (REPO / "runs").exists()

    rank0, rank1 = ((out / f"train_rank{r}.log").read_text() for r in (0, 1))
    assert rank0.count("world size 2 (1 node(s) x 2 process(es)), backend gloo") == 1
    assert " INFO " not in rank1  # other ranks keep warnings, in their own file
    console = result.stderr
    assert "[rank1]" not in console and "[rank0] INFO" in console
    # stderr is a pipe here: no tqdm bar (carriage returns), a plain line per epoch instead
    assert "\r" not in console and "lavis.progress: epoch 0: 3/3 (100%)" in console


def test_train_multinode_takes_the_config_from_where_the_user_stands(tmp_path):
    work = user_folder(tmp_path)
    result = launch("train_multinode.sh", work, "--nproc", "1", "run.yaml", NNODES="1", MASTER_PORT="29563")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (work / "out" / "checkpoint_00000006.pth").is_file()  # one process: 4 + 2 batches


def test_eval_tables_write_out_beside_the_user(tmp_path):
    """A dry run (PYTHON records its arguments): OUT and WEIGHTS stay relative, so they are the user's folders;
    evaluate.py, the configs and the tools are named by absolute path."""
    work = tmp_path / "work"
    work.mkdir()
    log = tmp_path / "calls.log"
    fake = tmp_path / "fake_python"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" "" >> "{log}"\n')
    fake.chmod(0o755)
    result = launch("eval_table1.sh", work, OUT="results", WEIGHTS="weights", NPROC="1", LLMS="opt2.7b",
                    CELLS="refcoco", PYTHON=str(fake))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (work / "results" / "table1" / "opt2.7b").is_dir() and not (REPO / "results").exists()
    [evaluation, compare, table] = [block.split("\n") for block in log.read_text().split("\n\n") if block]
    assert evaluation[4] == str(REPO / "evaluate.py")
    config = Path(evaluation[evaluation.index("--cfg-path") + 1])
    assert config == REPO / "configs" / "eval" / "regionblip_opt2.7b_refcoco.yaml" and config.is_file()
    assert "model.llm.path=weights/opt-2.7b" in evaluation
    assert "run.output_dir=results/regionblip_opt2.7b_refcoco" in evaluation
    assert compare[0] == str(REPO / "tools" / "compare_table1.py") and Path(compare[0]).is_file()
    assert table[0] == str(REPO / "tools" / "metrics_table.py")
