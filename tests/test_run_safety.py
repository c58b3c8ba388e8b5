"""Runs that cannot be lost: one run per folder, resumes that know their data, checkpoints that prove themselves,
preemption and hung ranks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from lavis.common.checkpoint import (
    CheckpointDamagedError,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
)
from lavis.common.config_schema import ConfigError
from lavis.common.optim import linear_warmup_cosine
from lavis.common.preemption import PREEMPTED_EXIT_CODE, Preempted
from tests.conftest import REPO, free_port, toy_run_config, write_yaml
from tests.test_training import make_runner, read_log

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def train_command(cfg_path: Path) -> list[str]:
    return [sys.executable, "train.py", "--cfg-path", str(cfg_path)]


def torchrun_command(cfg_path: Path, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "train.py", "--cfg-path", str(cfg_path)]


def logged_steps(out: Path) -> int:
    log = out / "log.jsonl"
    return len(log.read_text().splitlines()) if log.is_file() else 0


def wait_for_steps(proc: subprocess.Popen, out: Path, steps: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and logged_steps(out) < steps and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before the test could act on it; make it longer"


def assert_same_trainable(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert torch.equal(value, b[name]), name


# ---- one run per folder ------------------------------------------------------------------------------------------
def test_two_runs_started_at_once_on_one_folder_one_is_refused(tmp_path):
    cfg_path = write_yaml(tmp_path / "run.yaml", toy_run_config(tmp_path, max_epoch=12))
    procs = [subprocess.Popen(train_command(cfg_path), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    refused = next(err for code, err in results if code != 0)
    assert "is in use by another run (pid" in refused and socket.gethostname() in refused, refused[-2000:]
    assert len(read_log(tmp_path / "out")) == 72  # one run's rows only: 6 steps x 12 epochs


def test_a_second_runner_is_refused_while_another_process_holds_the_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lavis.common.run_lock import acquire_run_lock; "
         "acquire_run_lock(sys.argv[1]); print('held', flush=True); time.sleep(60)", str(out)],
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"in use by another run \\(pid {holder.pid} on host"):
            make_runner(tmp_path, toy_run_config(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    make_runner(tmp_path, toy_run_config(tmp_path)).train()  # the holder is gone: the folder is free again


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                              "started": "2026-01-01T00:00:00", "command": "train.py"}))
    make_runner(tmp_path, toy_run_config(tmp_path, max_epoch=1)).train()
    assert f"taking over the lock of {out.resolve()} from a run that no longer runs (pid {dead.pid}" in \
        (out / "train_rank0.log").read_text()
    assert json.loads((out / "run.lock").read_text())["pid"] == os.getpid()


# ---- resume knows its data ---------------------------------------------------------------------------------------
def interrupted_at_step_3(tmp_path, **run):
    """A toy run (6 batches per epoch, 2 epochs) stopped after step 3 with a checkpoint there."""
    data = toy_run_config(tmp_path, ckpt_every_steps=3, trace_samples=True, **run)
    make_runner(tmp_path, data).train(stop_at_step=3)
    return data


def test_resume_with_a_smaller_batch_continues_at_the_same_fraction_of_the_epoch(tmp_path):
    data = interrupted_at_step_3(tmp_path)
    for ds in data["datasets"].values():
        ds["batch_size"] = 2  # 12 batches per epoch instead of 6
    data["run"]["resume_ckpt_path"] = "auto"
    runner = make_runner(tmp_path, data)
    assert (runner.position, runner.global_step, runner.schedule_offset) == (6, 3, -3)
    logged = (tmp_path / "out" / "train_rank0.log").read_text()
    assert "was written under another data plan (data.datasets.set_a.batch_size: 4 -> 2" in logged
    assert "batch 6 of 12 (was 3 of 6); the LR schedule continues at step 6 of 24" in logged
    runner.train()
    assert runner.global_step == 3 + 6 + 12
    rows = read_log(tmp_path / "out")
    first_resumed = next(r for r in rows if r["step"] == 4)
    schedule = runner.run.lr_schedule
    assert first_resumed["lr"] == pytest.approx(linear_warmup_cosine(6, 24, schedule))
    assert rows[-1]["lr"] == pytest.approx(linear_warmup_cosine(23, 24, schedule))  # the schedule ends on time
    # epoch 0 saw every sample exactly once over the two shapes: the shuffle did not change with the batch size
    traces = [json.loads(line) for line in (tmp_path / "out" / "samples_rank0.jsonl").read_text().splitlines()]
    for dataset, size in (("set_a", 16), ("set_b", 8)):
        ids = [i for t in traces if t["epoch"] == 0 and t["dataset"] == dataset for i in t["sample_ids"]]
        assert sorted(ids) == sorted(f"toy-{i}" for i in range(size)), dataset


@pytest.mark.parametrize("change", ["batch_1", "batch_8_accum_2", "grown_dataset"])
def test_resume_with_changed_data_finishes_the_run(tmp_path, change):
    data = interrupted_at_step_3(tmp_path)
    if change == "batch_1":
        data["datasets"]["set_a"]["batch_size"] = 1
    elif change == "batch_8_accum_2":
        data["datasets"]["set_a"]["batch_size"] = 8
        data["run"]["accum_grad_iters"] = 2
    else:
        data["datasets"]["set_a"]["size"] = 24
    data["run"]["resume_ckpt_path"] = "auto"
    runner = make_runner(tmp_path, data)
    runner.train()
    assert runner.epoch == 2 and runner.position == 0
    logged = (tmp_path / "out" / "train_rank0.log").read_text()
    assert "was written under another data plan" in logged
    if change == "grown_dataset":
        assert "data.datasets.set_a.samples: 16 -> 24" in logged
        assert "The shuffle of set_a changed with its length or the world size" in logged
    assert all(torch.isfinite(v).all() for v in runner.model.trainable_state_dict().values())


def test_resume_with_the_same_data_plan_says_nothing_about_replanning(tmp_path):
    data = interrupted_at_step_3(tmp_path)
    data["run"]["resume_ckpt_path"] = "auto"
    runner = make_runner(tmp_path, data)
    assert (runner.position, runner.schedule_offset) == (3, 0)
    assert "another data plan" not in (tmp_path / "out" / "train_rank0.log").read_text()


# ---- checkpoints prove themselves --------------------------------------------------------------------------------
def flip_tensor_bytes(path: Path) -> None:
    """Overwrite 64 bytes in the middle of the largest tensor record (the data, not the archive's directory)."""
    with zipfile.ZipFile(path) as archive:
        record = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    start = record.header_offset + 30 + len(record.filename.encode()) + len(record.extra)  # local header
    start += record.file_size // 2 - 32
    raw[start:start + 64] = bytes(b ^ 0xFF for b in raw[start:start + 64])
    path.write_bytes(bytes(raw))


DAMAGE = {
    "flipped_bytes": flip_tensor_bytes,
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "empty": lambda p: p.write_bytes(b""),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_auto_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, damage):
    data = toy_run_config(tmp_path, ckpt_every_steps=1, keep_ckpts=0)
    make_runner(tmp_path, data).train(stop_at_step=4)
    newest = checkpoint_path(tmp_path / "out", 4)
    DAMAGE[damage](newest)
    with pytest.raises(CheckpointDamagedError, match=str(newest)):
        load_checkpoint(newest)
    data["run"]["resume_ckpt_path"] = "auto"
    runner = make_runner(tmp_path, data)
    assert runner.global_step == 3
    logged = (tmp_path / "out" / "train_rank0.log").read_text()
    assert f"{newest} is damaged" in logged or f"{newest} is not a checkpoint" in logged
    assert "moved it to checkpoint_00000004.pth.damaged" in logged
    assert newest.with_name(newest.name + ".damaged").is_file() and not newest.exists()
    runner.train()
    assert latest_checkpoint(tmp_path / "out").name == "checkpoint_00000012.pth"


def test_flipped_bytes_are_caught_where_torch_load_would_train_on(tmp_path):
    make_runner(tmp_path, toy_run_config(tmp_path, max_epoch=1)).train()
    path = latest_checkpoint(tmp_path / "out")
    flip_tensor_bytes(path)
    torch.load(path, map_location="cpu", weights_only=True)  # what used to happen: it loads
    with pytest.raises(CheckpointDamagedError, match="does not match its CRC-32"):
        load_checkpoint(path)


def test_an_explicit_damaged_resume_checkpoint_is_refused_naming_it(tmp_path):
    data = toy_run_config(tmp_path, max_epoch=1)
    make_runner(tmp_path, data).train()
    path = latest_checkpoint(tmp_path / "out")
    flip_tensor_bytes(path)
    data["run"]["resume_ckpt_path"] = str(path)
    with pytest.raises(CheckpointDamagedError, match=f"{path} is damaged: record .* does not match its CRC-32"):
        make_runner(tmp_path, data)


# ---- preemption --------------------------------------------------------------------------------------------------
def signal_self_at_batch(runner, batch: int, sig: signal.Signals) -> None:
    forward_backward, calls = runner._forward_backward, []

    def wrapped(b, window):
        calls.append(1)
        if len(calls) == batch:
            os.kill(os.getpid(), sig)
        return forward_backward(b, window)

    runner._forward_backward = wrapped


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_a_stop_signal_checkpoints_the_step_and_resumes_to_the_uninterrupted_result(tmp_path, sig, one_thread):
    reference_dir, stopped_dir = tmp_path / "reference", tmp_path / "stopped"
    reference_dir.mkdir(), stopped_dir.mkdir()
    reference = make_runner(reference_dir, toy_run_config(reference_dir))
    reference.train()
    data = toy_run_config(stopped_dir)  # ckpt_every_steps 0: without the signal, nothing before the epoch's end
    runner = make_runner(stopped_dir, data)
    signal_self_at_batch(runner, 4, sig)
    with pytest.raises(Preempted) as stop:
        runner.train()
    assert stop.value.code == PREEMPTED_EXIT_CODE and stop.value.step == 4
    assert [p.name for p in (stopped_dir / "out").glob("checkpoint_*.pth")] == ["checkpoint_00000004.pth"]
    assert f"stopped by {sig.name} after step 4" in (stopped_dir / "out" / "train_rank0.log").read_text()
    assert signal.getsignal(sig) is not runner.stop_signals._handle  # the handlers are restored
    data["run"]["resume_ckpt_path"] = "auto"
    resumed = make_runner(stopped_dir, data)
    resumed.train()
    assert_same_trainable(reference.model.trainable_state_dict(), resumed.model.trainable_state_dict())


def test_sigterm_to_a_two_process_run_checkpoints_and_resumes_to_the_uninterrupted_result(tmp_path):
    reference_dir, stopped_dir = tmp_path / "reference", tmp_path / "stopped"
    runs = {}
    for directory in (reference_dir, stopped_dir):
        directory.mkdir()
        runs[directory] = toy_run_config(directory, max_epoch=12, dist_timeout_s=60)
    ref = subprocess.run(torchrun_command(write_yaml(reference_dir / "run.yaml", runs[reference_dir])), cwd=REPO,
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]

    out = stopped_dir / "out"
    cfg_path = write_yaml(stopped_dir / "run.yaml", runs[stopped_dir])
    proc = subprocess.Popen(torchrun_command(cfg_path), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_for_steps(proc, out, 3)
    proc.send_signal(signal.SIGTERM)  # torchrun's agent forwards it to its workers, as under Slurm or Kubernetes
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode != 0
    step = load_checkpoint(latest_checkpoint(out))["position"]["global_step"]
    assert 3 <= step < 36, stderr[-3000:]
    assert f"stopped by SIGTERM after step {step}" in (out / "train_rank0.log").read_text()  # its checkpoint

    runs[stopped_dir]["run"]["resume_ckpt_path"] = "auto"
    cfg_path = write_yaml(stopped_dir / "run.yaml", runs[stopped_dir])
    resumed = subprocess.run(torchrun_command(cfg_path), cwd=REPO, env=ENV, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = load_checkpoint(latest_checkpoint(out))
    expected = load_checkpoint(latest_checkpoint(reference_dir / "out"))
    assert final["position"]["global_step"] == expected["position"]["global_step"] == 36  # 3 steps x 12 epochs
    assert_same_trainable(expected["model"], final["model"])


def test_a_preempted_single_process_run_exits_with_the_documented_code(tmp_path):
    out = tmp_path / "out"
    cfg_path = write_yaml(tmp_path / "run.yaml", toy_run_config(tmp_path, max_epoch=40))
    proc = subprocess.Popen(train_command(cfg_path), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_for_steps(proc, out, 2)
    proc.send_signal(signal.SIGUSR1)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == PREEMPTED_EXIT_CODE, stderr[-3000:]
    assert "Traceback" not in stderr
    step = load_checkpoint(latest_checkpoint(out))["position"]["global_step"]
    assert f"stopped by SIGUSR1 after step {step}" in (out / "train_rank0.log").read_text()


# ---- hung ranks --------------------------------------------------------------------------------------------------
def worker_pid(tag: str, rank: int) -> int | None:
    """The pid of the training worker of `rank` whose environment carries `tag`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"LAVIS_TEST_TAG={tag}".encode() in environ and f"RANK={rank}".encode() in environ:
            return int(entry.name)  # torchrun's agent has no RANK: only a worker matches
    return None


def test_a_stopped_rank_fails_the_job_within_the_hang_timeout_naming_it(tmp_path):
    out = tmp_path / "out"
    cfg_path = write_yaml(tmp_path / "run.yaml", toy_run_config(tmp_path, max_epoch=400, hang_timeout_s=4,
                                                                dist_timeout_s=600))
    env = {**ENV, "LAVIS_TEST_TAG": str(tmp_path)}
    proc = subprocess.Popen(torchrun_command(cfg_path), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_for_steps(proc, out, 3)
    pid = worker_pid(str(tmp_path), 1)
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        rank0 = worker_pid(str(tmp_path), 0)
        while rank0 is not None and Path(f"/proc/{rank0}").exists() and time.monotonic() - stopped < 120:
            time.sleep(0.2)
        detected = time.monotonic() - stopped
    finally:
        os.kill(pid, signal.SIGCONT)  # let it receive torchrun's SIGTERM instead of waiting for its SIGKILL
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode != 0
    assert detected < 30, f"found after {detected:.0f} s (run.dist_timeout_s is 600)"
    assert f"rank 1 (host {socket.gethostname()}, pid {pid}) stopped answering" in stderr, stderr[-3000:]


# ---- Slurm -------------------------------------------------------------------------------------------------------
def test_the_sbatch_script_requeues_and_checkpoints_on_slurms_warning_signal(tmp_path):
    """train_slurm.sbatch under stand-ins for srun and scontrol: Slurm's USR1 (--signal=B:USR1@180) makes the
    script requeue the job and stop training with a checkpoint; the requeued job's command resumes it."""
    sbatch = (REPO / "run_scripts" / "train_slurm.sbatch").read_text()
    assert "#SBATCH --signal=B:USR1@" in sbatch and "#SBATCH --requeue" in sbatch
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/usr/bin/env bash\nshift\nexec "$@"\n')  # drop --kill-on-bad-exit=1
    (bin_dir / "scontrol").write_text(
        '#!/usr/bin/env bash\nif [ "$1" = show ]; then echo 127.0.0.1; else echo "$@" >> "$REQUEUE_LOG"; fi\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    out = tmp_path / "out"
    cfg_path = write_yaml(tmp_path / "run.yaml", toy_run_config(tmp_path, max_epoch=40))
    env = {**ENV, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": sys.executable, "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "node0", "SLURM_NNODES": "1", "SLURM_SUBMIT_DIR": str(REPO), "NPROC": "1",
           "MASTER_PORT": str(free_port()), "REQUEUE_LOG": str(tmp_path / "requeued")}
    job = subprocess.Popen(["bash", str(REPO / "run_scripts" / "train_slurm.sbatch"), str(cfg_path)], cwd=REPO,
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_steps(job, out, 3)
    job.send_signal(signal.SIGUSR1)  # what Slurm sends to the batch shell before the time limit
    stderr = job.communicate(timeout=120)[1]
    assert (tmp_path / "requeued").read_text().split() == ["requeue", "4242"], stderr[-3000:]
    step = load_checkpoint(latest_checkpoint(out))["position"]["global_step"]
    assert f"stopped by SIGTERM after step {step}" in (out / "train_rank0.log").read_text(), stderr[-3000:]
    assert job.returncode != 0  # not "completed": the requeued job continues
