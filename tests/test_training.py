"""The training engine on the toy plugin model: learning, freezing, resume, schedules, bad data."""

import json
import math

import pytest
import torch

from lavis.common.checkpoint import latest_checkpoint, load_checkpoint
from lavis.common.config import load_config
from lavis.common.config_schema import ConfigError
from lavis.common.optim import LRScheduleConfig, linear_warmup_cosine
from lavis.common.registry import RUNNERS
from lavis.datasets.loaders import ShardedEpochSampler
from tests.conftest import toy_run_config, write_yaml


def make_runner(tmp_path, data, options=()):
    cfg_path = write_yaml(tmp_path / f"run_{len(list(tmp_path.iterdir()))}.yaml", data)
    cfg = load_config(str(cfg_path), list(options))
    return RUNNERS.get(cfg.run.runner)(cfg, cfg_path=str(cfg_path))


def read_log(output_dir):
    return [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]


def refer_run_config(tmp_path, refer_root, **run_overrides) -> dict:
    """The toy model with an image_region modality, trained on a RefCOCO `refer` layout (for indexing checks)."""
    data = toy_run_config(tmp_path, **run_overrides)
    data["model"]["modalities"] = {"image_region": {"input_key": "image"}}
    data["datasets"] = {"refs": {"builder": "refcoco", "modality": "image_region", "batch_size": 2,
                                 "refer_root": str(refer_root), "image_root": str(refer_root / "images"),
                                 "train_image": {"image_size": 32}}}
    return data


def test_loss_falls_frozen_unchanged_trainable_changed(tmp_path):
    data = toy_run_config(tmp_path, max_epoch=8)
    runner = make_runner(tmp_path, data)
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    runner.train()
    after = runner.model.state_dict()
    for name, param in runner.model.named_parameters():
        if param.requires_grad:
            assert not torch.equal(before[name], after[name]), f"{name} did not train"
        else:
            assert torch.equal(before[name], after[name]), f"frozen {name} changed"
    log = read_log(tmp_path / "out")
    for modality in ("vec_a", "vec_b"):
        losses = [row[f"{modality}/loss"] for row in log if f"{modality}/loss" in row]
        assert losses[-1] < 0.6 * losses[0], (modality, losses[0], losses[-1])
    assert {"lr", "samples_per_s", "peak_mem_mb", "vec_a/loss_reg", "vec_b/loss_len"} <= set().union(*log)
    saved = load_checkpoint(latest_checkpoint(tmp_path / "out"))
    assert set(saved["model"]) == {n for n, p in runner.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("schedule,accum,cut,workers", [("sequential", 1, 3, 0), ("sequential", 1, 6, 0),
                                                         ("interleaved", 2, 2, 0), ("interleaved", 1, 4, 2)])
def test_resume_continues_exactly(tmp_path, schedule, accum, cut, workers):
    """2 epochs straight == cut off after `cut` steps (mid-epoch or at the epoch end), resumed by a new runner
    with resume_ckpt_path=auto: identical parameters, identical logged losses and LRs at every step."""
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    straight_dir.mkdir()
    resumed_dir.mkdir()
    common = {"modality_schedule": schedule, "accum_grad_iters": accum, "max_epoch": 2, "keep_ckpts": 0,
              "num_workers": workers}  # 2: persistent loader workers, augmentation seeded per sample
    straight = make_runner(straight_dir, toy_run_config(straight_dir, **common))
    straight.train()

    first = make_runner(resumed_dir, toy_run_config(resumed_dir, **common, ckpt_every_steps=cut))
    first.train(stop_at_step=cut)
    resumed = make_runner(resumed_dir, toy_run_config(resumed_dir, **common, resume_ckpt_path="auto"))
    assert resumed.global_step == cut
    resumed.train()

    for name, value in straight.model.trainable_state_dict().items():
        assert torch.equal(value, resumed.model.trainable_state_dict()[name]), name
    straight_log = {row["step"]: row for row in read_log(straight_dir / "out")}
    resumed_log = {row["step"]: row for row in read_log(resumed_dir / "out")}
    for step in straight_log:
        for key in ("loss", "lr"):
            assert resumed_log[step][key] == straight_log[step][key], (step, key)


def test_checkpoint_holds_position_and_state(tmp_path):
    runner = make_runner(tmp_path, toy_run_config(tmp_path, max_epoch=1, ckpt_every_steps=3, keep_ckpts=0))
    runner.train()
    state = load_checkpoint(tmp_path / "out" / "checkpoint_00000003.pth")
    plan = state["position"].pop("data_plan")
    assert state["position"] == {"epoch": 0, "position": 3, "global_step": 3, "bad_samples": 0, "seen_samples": 12,
                                 "nonfinite_steps": 0, "schedule_offset": 0}
    assert plan == {"world_size": 1, "accum_grad_iters": 1, "modality_schedule": "sequential", "epoch_batches": 6,
                    "datasets": {"set_a": {"samples": 16, "batch_size": 4, "repeat": 1, "batches_per_epoch": 4},
                                 "set_b": {"samples": 8, "batch_size": 4, "repeat": 1, "batches_per_epoch": 2}}}
    assert state["scheduler"] == {"name": "linear_warmup_cosine", "step": 3}
    assert len(state["rng"]) == 1 and state["optimizer"]["state"]
    assert state["config"]["run"]["ckpt_every_steps"] == 3
    assert not list((tmp_path / "out").glob(".*tmp*"))  # no temporary files left behind


def test_sequential_and_interleaved_plans(tmp_path):
    seq = make_runner(tmp_path, toy_run_config(tmp_path, trace_samples=True, max_epoch=1))
    seq.train()
    trace = [json.loads(x) for x in (tmp_path / "out" / "samples_rank0.jsonl").read_text().splitlines()]
    assert [t["dataset"] for t in trace] == ["set_a"] * 4 + ["set_b"] * 2  # each loader in full, in turn
    seen_a = sorted(i for t in trace if t["dataset"] == "set_a" for i in t["sample_ids"])
    assert seen_a == sorted(f"toy-{i}" for i in range(16))  # each sample once per epoch

    from lavis.datasets.loaders import epoch_plan

    plans = [epoch_plan(seq.streams, "interleaved", 7, epoch) for epoch in range(3)]
    assert all(sorted(p) == [0] * 4 + [1] * 2 for p in plans)  # proportional to dataset sizes
    assert len({tuple(p) for p in plans}) > 1  # reshuffled per epoch


def test_lr_schedule_runs_over_global_step():
    cfg = LRScheduleConfig(init_lr=1e-4, min_lr=1e-5, warmup_lr=0.0, warmup_steps=200)
    assert linear_warmup_cosine(0, 1000, cfg) == 0.0
    assert linear_warmup_cosine(100, 1000, cfg) == pytest.approx(5e-5)
    assert linear_warmup_cosine(200, 1000, cfg) == pytest.approx(1e-4)
    assert linear_warmup_cosine(600, 1000, cfg) == pytest.approx(1e-5 + 0.5 * 9e-5 * (1 + math.cos(math.pi / 2)))
    assert linear_warmup_cosine(1000, 1000, cfg) == pytest.approx(1e-5)


def test_lr_logged_follows_schedule_without_restart_per_dataset(tmp_path):
    runner = make_runner(tmp_path, toy_run_config(tmp_path, max_epoch=1))
    runner.train()
    logged = [row["lr"] for row in read_log(tmp_path / "out") if "lr" in row][:-1]  # last row is the epoch flush
    cfg = runner.run.lr_schedule
    assert logged == [pytest.approx(linear_warmup_cosine(s, runner.total_steps, cfg)) for s in range(len(logged))]


def test_no_decay_on_biases_and_norms(tmp_path):
    runner = make_runner(tmp_path, toy_run_config(tmp_path))
    decay, plain = runner.optimizer.param_groups
    names = {id(p): n for n, p in runner.model.named_parameters()}
    assert decay["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert all(names[id(p)].endswith("weight") for p in decay["params"])
    assert all(names[id(p)].endswith("bias") for p in plain["params"])
    assert not any(names[id(p)].startswith("encoder") for g in (decay, plain) for p in g["params"])


def test_bad_samples_counted_logged_and_threshold_stops(tmp_path):
    data = toy_run_config(tmp_path, max_epoch=1, max_bad_sample_fraction=0.5)
    data["datasets"]["set_a"]["bad_every"] = 4  # 4 of 16 samples are bad
    runner = make_runner(tmp_path, data)
    runner.train()
    assert runner.bad_samples == 4 and runner.seen_samples == 24
    rows = [json.loads(x) for x in (tmp_path / "out" / "bad_samples_rank0.jsonl").read_text().splitlines()]
    assert sorted(r["sample_id"] for r in rows) == ["toy-0", "toy-12", "toy-4", "toy-8"]

    from lavis.runners.runner import BadDataError

    strict_dir = tmp_path / "strict"
    strict_dir.mkdir()
    data = toy_run_config(strict_dir, max_epoch=1, max_bad_sample_fraction=0.05)
    data["datasets"]["set_a"]["bad_every"] = 4
    with pytest.raises(BadDataError, match=r"4 of 24 samples were bad .*bad_samples_rank"):
        make_runner(strict_dir, data).train()


def test_sampler_shards_evenly_and_skips():
    shards = [list(ShardedEpochSampler(10, repeat=1, rank=r, world_size=3, seed=0, name="d", shuffle=True))
              for r in range(3)]
    assert all(len(s) == 4 for s in shards)  # 10 padded to 12
    assert {i for s in shards for i, _ in s} == set(range(10))
    sampler = ShardedEpochSampler(10, repeat=2, rank=0, world_size=1, seed=0, name="d", shuffle=True)
    full = list(sampler)
    assert sorted(i for i, _ in full) == sorted(list(range(10)) * 2)
    sampler.set_epoch(0, skip=5)
    assert list(sampler) == full[5:]


def test_fresh_start_in_a_dir_with_checkpoints_is_refused(tmp_path):
    """Without run.resume_ckpt_path, a second run in the same output_dir would mix with the first, and pruning
    would delete its low-step checkpoints: refused before anything is written."""
    make_runner(tmp_path, toy_run_config(tmp_path, max_epoch=1)).train()
    out = tmp_path / "out"
    before = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint_"))
    saved_config = (out / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"already holds checkpoints .*run\.resume_ckpt_path=auto.*another "
                                          r"run\.output_dir"):
        make_runner(tmp_path, toy_run_config(tmp_path, max_epoch=3))
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint_")) == before
    assert (out / "config.yaml").read_text() == saved_config  # the earlier run's resolved config is kept
    assert make_runner(tmp_path, toy_run_config(tmp_path, max_epoch=3, resume_ckpt_path="auto")).global_step == 6


def test_elastic_restart_without_resume_path_resumes_auto(tmp_path, monkeypatch):
    make_runner(tmp_path, toy_run_config(tmp_path, max_epoch=1)).train()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # what torchrun --max-restarts sets on a restart
    runner = make_runner(tmp_path, toy_run_config(tmp_path, max_epoch=2))
    assert (runner.epoch, runner.global_step) == (1, 6)
    logged = (tmp_path / "out" / "train_rank0.log").read_text()
    assert "elastic restart 1 and run.resume_ckpt_path is not set: resuming as 'auto'" in logged


@pytest.mark.parametrize("resume", [None, "auto"])
def test_stale_checkpoint_temporaries_are_removed_at_start(tmp_path, resume):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".checkpoint_00000004.pth.tmp-4242"  # a write killed with kill -9
    stale.write_bytes(b"\x80\x02partial")
    keep = out / "notes.tmp-1"  # not a checkpoint temporary: left alone
    keep.write_text("mine")
    runner = make_runner(tmp_path, toy_run_config(tmp_path, max_epoch=1, resume_ckpt_path=resume))
    assert not stale.exists() and keep.exists()
    assert "left by a checkpoint write that was killed" in (out / "train_rank0.log").read_text()
    runner.train()


def test_tensorboard_events_are_written(tmp_path):
    make_runner(tmp_path, toy_run_config(tmp_path, max_epoch=1, tensorboard=True)).train()
    events = list((tmp_path / "out" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0


def test_annotations_dropped_while_indexing_count_before_training(tmp_path, refer_mostly_zero_area):
    """6 of 10 refs have zero-area boxes: the refer indexer drops them; the runner reports each and, with a 10%
    threshold, refuses to start."""
    from lavis.runners.runner import BadDataError

    data = refer_run_config(tmp_path, refer_mostly_zero_area, max_bad_sample_fraction=0.1)
    with pytest.raises(BadDataError, match=r"6 of 10 annotations .*unusable while indexing \(60\.00% > "
                                           r"run\.max_bad_sample_fraction = 10\.00%\).*bad_samples_rank0\.jsonl"):
        make_runner(tmp_path, data)
    rows = [json.loads(x) for x in (tmp_path / "out" / "bad_samples_rank0.jsonl").read_text().splitlines()]
    assert sorted(r["sample_id"] for r in rows) == [f"refcoco/{i}" for i in range(4, 10)]
    assert all(r["stage"] == "indexing" and "zero area" in r["reason"] and r["dataset"] == "refs" for r in rows)

    lenient_dir = tmp_path / "lenient"
    lenient_dir.mkdir()
    runner = make_runner(lenient_dir, refer_run_config(lenient_dir, refer_mostly_zero_area,
                                                       max_bad_sample_fraction=0.7))
    assert (runner.index_skipped, runner.index_kept) == (6, 4)
    # they count toward the fraction checked while training: 6 bad of 6 seen so far
    runner.run.max_bad_sample_fraction = 0.5
    with pytest.raises(BadDataError, match="6 of 6 samples were bad"):
        runner._check_bad_fraction(final=True)
