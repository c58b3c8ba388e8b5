"""Killed runs, non-finite steps, failing ranks and changed configs lose nothing and hang nothing."""

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from lavis.common.checkpoint import latest_checkpoint, load_checkpoint, save_atomic
from lavis.runners.runner import NonFiniteError
from tests.conftest import REPO, toy_run_config, write_yaml
from tests.test_distributed import torchrun
from tests.test_training import make_runner, read_log, refer_run_config


def poison_gradient_at(param: torch.nn.Parameter, *calls: int) -> None:
    """The gradients reaching `param` at these (0-based) backward calls become inf: a finite loss with an
    overflowing backward."""
    seen = []

    def hook(grad):
        seen.append(1)
        return torch.full_like(grad, math.inf) if len(seen) - 1 in calls else grad

    param.register_hook(hook)


def test_nonfinite_step_is_skipped_counted_and_logged(tmp_path):
    data = toy_run_config(tmp_path, max_epoch=1)
    data["model"]["nan_at_calls"] = [2]
    runner = make_runner(tmp_path, data)
    before = {k: v.clone() for k, v in runner.model.trainable_state_dict().items()}
    runner.train()
    assert runner.nonfinite_steps == 1
    assert runner.global_step == 6  # 6 batches: 6 optimizer steps, one of them skipped (the schedule still advances)
    logged = (tmp_path / "out" / "train_rank0.log").read_text()
    assert "non-finite loss or gradient at step 2: step skipped" in logged and "set_a/toy-" in logged
    after = runner.model.trainable_state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("scaler", ["none", "fp16_scaler"])
def test_inf_gradient_with_finite_loss_is_skipped_counted_and_logged(tmp_path, scaler):
    """fp16 autocast needs CUDA, so the fp16 path is exercised with a CPU GradScaler (the same unscale_/update
    calls): its skipped step must be counted and logged like the fp32 one, and its scale lowered."""
    runner = make_runner(tmp_path, toy_run_config(tmp_path, max_epoch=1))
    if scaler == "fp16_scaler":
        runner.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    poison_gradient_at(runner.model.heads["vec_a"][1].weight, 2)  # the third set_a batch: step 2
    runner.train()
    assert runner.nonfinite_steps == 1 and runner.global_step == 6
    logged = (tmp_path / "out" / "train_rank0.log").read_text()
    if scaler == "fp16_scaler":
        assert runner.scaler.get_scale() == 2.0**9  # the skipped step lowered the scale once
        expected = r"fp16 gradient overflow at step 2: step skipped, loss scale lowered to 512 \(1 non-finite steps"
    else:
        expected = r"non-finite loss or gradient at step 2: step skipped \(1 in a row, 1 in all\)"
    assert re.search(expected + r".*; samples: set_a/toy-", logged), logged[-2000:]
    rows = read_log(tmp_path / "out")
    assert all(math.isfinite(r["loss"]) for r in rows)  # the loss itself never was non-finite
    assert [r["nonfinite_steps"] for r in rows][:2] == [0, 0] and rows[-1]["nonfinite_steps"] == 1
    assert all(torch.isfinite(v).all() for v in runner.model.trainable_state_dict().values())


def test_fp16_overflows_in_a_row_lower_the_scale_without_stopping(tmp_path):
    """Three overflowing steps in a row with run.max_nonfinite_steps_in_row=2: under fp16 (a GradScaler whose
    scale is still above 1) that is the scaler finding its scale, so the run goes on; in fp32 it stops."""
    data = toy_run_config(tmp_path, max_epoch=1, max_nonfinite_steps_in_row=2)
    runner = make_runner(tmp_path, data)
    runner.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    poison_gradient_at(runner.model.heads["vec_a"][1].weight, 0, 1, 2)
    runner.train()
    assert (runner.nonfinite_steps, runner.global_step, runner.scaler.get_scale()) == (3, 6, 2.0**7)

    fp32_dir = tmp_path / "fp32"
    fp32_dir.mkdir()
    runner = make_runner(fp32_dir, toy_run_config(fp32_dir, max_epoch=1, max_nonfinite_steps_in_row=2))
    poison_gradient_at(runner.model.heads["vec_a"][1].weight, 0, 1, 2)
    with pytest.raises(NonFiniteError, match="2 optimizer steps in a row"):
        runner.train()


def test_nonfinite_count_is_checkpointed_and_resumed(tmp_path):
    common = {"max_epoch": 2, "ckpt_every_steps": 3, "keep_ckpts": 0}
    first = make_runner(tmp_path, toy_run_config(tmp_path, **common))
    poison_gradient_at(first.model.heads["vec_a"][1].weight, 1)
    first.train(stop_at_step=3)
    assert load_checkpoint(tmp_path / "out" / "checkpoint_00000003.pth")["position"]["nonfinite_steps"] == 1
    resumed = make_runner(tmp_path, toy_run_config(tmp_path, **common, resume_ckpt_path="auto"))
    assert (resumed.global_step, resumed.nonfinite_steps) == (3, 1)
    resumed.train()
    assert read_log(tmp_path / "out")[-1]["nonfinite_steps"] == 1


def test_nonfinite_steps_in_a_row_stop_with_report_and_last_good_checkpoint(tmp_path):
    data = toy_run_config(tmp_path, max_epoch=1, max_nonfinite_steps_in_row=2)
    data["model"]["nan_at_calls"] = [3, 4]
    runner = make_runner(tmp_path, data)
    # steps 3 and 4 are skipped; the log point after step 4 reads their flags and stops
    expected = r"2 optimizer steps in a row .* at step 4;.*checkpoint_00000005\.pth.*Samples of step 4: set_b/toy-"
    with pytest.raises(NonFiniteError, match=expected):
        runner.train()
    saved = load_checkpoint(tmp_path / "out" / "checkpoint_00000005.pth")
    assert all(torch.isfinite(v).all() for v in saved["model"].values())
    for name, value in runner.model.trainable_state_dict().items():
        assert torch.equal(saved["model"][name], value), name  # the skipped steps changed nothing


def test_a_run_of_skips_stops_at_the_next_log_point_even_after_good_steps(tmp_path):
    """The flags are read only at log points: steps 1 and 2 reach the limit of 2, steps 3-5 train, and the log point
    after step 5 still stops the run, saying where the run of skips reached the limit."""
    data = toy_run_config(tmp_path, max_epoch=1, max_nonfinite_steps_in_row=2, log_every_steps=6)
    data["model"]["nan_at_calls"] = [1, 2]
    runner = make_runner(tmp_path, data)
    expected = r"2 optimizer steps in a row .* at step 2;.*checkpoint_00000006\.pth holds the weights of step 6"
    with pytest.raises(NonFiniteError, match=expected):
        runner.train()
    assert runner.nonfinite_steps == 2 and runner.global_step == 6
    saved = load_checkpoint(tmp_path / "out" / "checkpoint_00000006.pth")
    assert all(torch.isfinite(v).all() for v in saved["model"].values())
    # fused AdamW counted only the 4 applied steps (its step counter is left as it was by a skipped one)
    assert {float(s["step"]) for s in saved["optimizer"]["state"].values()} <= {2.0, 4.0}


def test_resume_from_a_per_tensor_adamw_state_continues_fused(tmp_path):
    """Checkpoints written before the runner used fused AdamW hold a per-tensor AdamW's state (`fused` unset): a
    resumed run continues with fused AdamW, whose found_inf the device-side skip needs."""
    common = {"max_epoch": 2, "ckpt_every_steps": 3, "keep_ckpts": 0}
    make_runner(tmp_path, toy_run_config(tmp_path, **common)).train(stop_at_step=3)
    path = tmp_path / "out" / "checkpoint_00000003.pth"
    state = load_checkpoint(path)
    for group in state["optimizer"]["param_groups"]:
        group["fused"] = None  # what torch.optim.AdamW(...) without fused=True saves
    save_atomic(state, path)
    resumed = make_runner(tmp_path, toy_run_config(tmp_path, **common, resume_ckpt_path="auto"))
    assert all(group["fused"] for group in resumed.optimizer.param_groups)
    poison_gradient_at(resumed.model.heads["vec_a"][1].weight, 0)  # the first resumed step is skipped
    resumed.train()
    assert resumed.nonfinite_steps == 1 and resumed.global_step == 12
    assert all(torch.isfinite(v).all() for v in resumed.model.trainable_state_dict().values())


def test_resume_with_changed_model_config_is_refused_unless_allowed(tmp_path):
    make_runner(tmp_path, toy_run_config(tmp_path, max_epoch=1)).train()
    changed = toy_run_config(tmp_path, max_epoch=2, resume_ckpt_path="auto")
    changed["model"]["dropout"] = 0.3
    with pytest.raises(ValueError, match=r"model.dropout: 0.1 -> 0.3.*run.allow_config_change=true"):
        make_runner(tmp_path, changed)
    changed["run"]["allow_config_change"] = True
    assert make_runner(tmp_path, changed).global_step == 6


def test_failing_rank_stops_the_job_with_its_error(tmp_path):
    data = toy_run_config(tmp_path, max_epoch=3, dist_timeout_s=60)
    data["model"].update(fail_at_call=2, fail_rank=1)
    cfg_path = write_yaml(tmp_path / "run.yaml", data)
    started = time.monotonic()
    result = torchrun(2, "train.py", "--cfg-path", str(cfg_path), timeout=180)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    # torchrun's summary names the first failure (rank 1's) as the root cause, not rank 0's broken collective
    assert "Root Cause (first observed failure):" in result.stderr, result.stderr[-3000:]
    root_cause = result.stderr.split("Root Cause (first observed failure):", 1)[1].split("=" * 20, 1)[0]
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)", root_cause), root_cause
    assert "RuntimeError: injected failure at forward call 2 on rank 1" in root_cause, root_cause
    assert elapsed < 120, f"the job took {elapsed:.0f} s to fail"


def test_elastic_restart_resumes_from_latest_checkpoint(tmp_path):
    """A rank fails once mid-run; torchrun --max-restarts restarts the group, which resumes from the latest
    checkpoint although run.resume_ckpt_path is not set, and ends with the same parameters as a run that never
    failed."""
    straight_dir, failing_dir = tmp_path / "straight", tmp_path / "failing"
    common = {"max_epoch": 2, "ckpt_every_steps": 1, "keep_ckpts": 0}
    for directory, failure in ((straight_dir, {}), (failing_dir, {"fail_at_call": 4, "fail_rank": 1,
                                                                     "fail_marker": str(tmp_path / "failed")})):
        directory.mkdir()
        data = toy_run_config(directory, **common)
        data["model"].update(failure)
        cfg_path = write_yaml(directory / "run.yaml", data)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "--max-restarts=1", "train.py", "--cfg-path", str(cfg_path)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "failed").exists()  # the failure did happen
    assert "elastic restart 1 and run.resume_ckpt_path is not set: resuming as 'auto'" in \
        (failing_dir / "out" / "train_rank0.log").read_text()
    straight = load_checkpoint(latest_checkpoint(straight_dir / "out"))
    recovered = load_checkpoint(latest_checkpoint(failing_dir / "out"))
    assert straight["position"]["global_step"] == recovered["position"]["global_step"] == 6
    for name, value in straight["model"].items():
        assert torch.equal(value, recovered["model"][name]), name


@pytest.mark.parametrize("seed", [0, 1])  # each seed: a kill inside a checkpoint write, then two random moments
def test_kill9_at_random_moments_then_resume_matches_uninterrupted(tmp_path, seed):
    """SIGKILL the trainer at random moments (one kill waits for a checkpoint write in progress), resume with
    auto each time; the final parameters equal an uninterrupted run's."""
    rng = random.Random(seed)
    common = {"max_epoch": 12, "ckpt_every_steps": 1, "keep_ckpts": 2, "resume_ckpt_path": "auto"}
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

    def command(directory):
        directory.mkdir(exist_ok=True)
        cfg_path = write_yaml(directory / "run.yaml", toy_run_config(directory, **common))
        return [sys.executable, "train.py", "--cfg-path", str(cfg_path)]

    subprocess.run(command(reference_dir), cwd=REPO, env=env, check=True, capture_output=True, timeout=300)

    out = killed_dir / "out"

    def logged_steps() -> int:
        log = out / "log.jsonl"
        return len(log.read_text().splitlines()) if log.is_file() else 0

    inside_save = False
    for mode in ("during-save", "random", "random"):
        already = logged_steps()
        proc = subprocess.Popen(command(killed_dir), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while proc.poll() is None and logged_steps() == already and time.monotonic() < deadline:
            time.sleep(0.01)  # wait until this attempt trains (start-up takes seconds)
        if mode == "during-save":
            while proc.poll() is None and time.monotonic() < deadline:
                if any(p.name.startswith(".checkpoint_") for p in out.iterdir()):
                    inside_save = True  # a temporary checkpoint is being written right now
                    break
                time.sleep(0.0002)
        else:  # a random step of this attempt, then a random moment inside it
            target = already + rng.randint(1, 8)
            while proc.poll() is None and logged_steps() < target and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.05))
        assert proc.poll() is None, "the run finished before it could be killed; make it longer"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert inside_save
    subprocess.run(command(killed_dir), cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    reference = load_checkpoint(latest_checkpoint(reference_dir / "out"))
    final = load_checkpoint(latest_checkpoint(out))
    assert final["position"] == reference["position"]
    for name, value in reference["model"].items():
        assert torch.equal(value, final["model"][name]), name
    losses = {r["step"]: r["loss"] for r in read_log(reference_dir / "out")}
    resumed = {r["step"]: r["loss"] for r in read_log(out)}  # rows of killed attempts may repeat a step
    assert all(resumed[step] == loss for step, loss in losses.items())


def test_indexing_skips_count_once_over_ranks(tmp_path, refer_mostly_zero_area):
    """Both ranks index the same refs; the 6 dropped of 10 are counted and reported once, and both ranks stop."""
    data = refer_run_config(tmp_path, refer_mostly_zero_area, max_bad_sample_fraction=0.1, dist_timeout_s=60)
    cfg_path = write_yaml(tmp_path / "run.yaml", data)
    result = torchrun(2, "train.py", "--cfg-path", str(cfg_path), timeout=180)
    assert result.returncode != 0
    assert "BadDataError: 6 of 10 annotations of the training splits were unusable" in result.stderr
    rows = (tmp_path / "out" / "bad_samples_rank0.jsonl").read_text().splitlines()
    assert len(rows) == 6 and all(json.loads(r)["stage"] == "indexing" for r in rows)
    assert not (tmp_path / "out" / "bad_samples_rank1.jsonl").exists()
