"""NaN and inf in every loss term of every modality, under each precision path the CPU can run: each such step is
skipped and counted, nothing raises elsewhere, and non-finite steps in a row stop the run with a checkpoint."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import pytest
import torch

from lavis.common.checkpoint import latest_checkpoint, load_checkpoint
from lavis.common.config import load_config
from lavis.runners.runner import EpochRunner, NonFiniteError
from tests.test_step_host_reads import DEMO, train_options

VALUES = (math.nan, math.inf)


def make_runner(world, out, precision: str, **run) -> EpochRunner:
    """The demo's four modalities on a tiny world, interleaved so that modalities alternate within the epoch.
    fp16 autocast needs CUDA: its path (GradScaler unscale_ / update, overflow accounting) runs with a CPU scaler."""
    runner = EpochRunner(load_config(DEMO, train_options(world, out, modality_schedule="interleaved", **run)))
    if precision == "fp16_scaler":
        runner.scaler = torch.amp.GradScaler("cpu", init_scale=1.0)  # at 1 an overflow is divergence, not a search
    return runner


MODALITIES = ("image", "image_region", "pointcloud", "pointcloud_region")


def poison_inside(runner: EpochRunner) -> list[tuple[str, str, float]]:
    """Every other batch of each modality carries NaN or inf into the forward itself, in turn in the encoder's
    input (pixels, points: through FPS, the encoder and every loss term) and in the Q-Former's query outputs
    (through ITC similarities, ITM's hard-negative sampling, ITG, the LLM and the box head)."""
    model, forward, extract = runner.model, runner.model.forward, runner.model.extract
    plan = [("input", math.nan), ("query_outputs", math.inf), ("input", math.inf), ("query_outputs", math.nan)]
    seen, poisoned, current = Counter(), [], {}

    def poisoned_forward(batch):
        modality = batch["modality"]
        k, seen[modality] = seen[modality], seen[modality] + 1
        current.clear()
        if k % 2 == 0:
            where, value = plan[(k // 2) % len(plan)]
            poisoned.append((modality, where, value))
            current[where] = value
            if where == "input":
                key = model.cfg.encoders[model.cfg.modalities[modality].encoder].input_key
                batch = {**batch, key: batch[key] * value}
        return forward(batch)

    def poisoned_extract(batch):
        feats = extract(batch)
        if "query_outputs" in current:
            feats = dataclasses.replace(feats, query_outputs=feats.query_outputs * current["query_outputs"])
        return feats

    model.forward, model.extract = poisoned_forward, poisoned_extract
    return poisoned


def poison_terms(runner: EpochRunner) -> list[tuple[str, str, float]]:
    """Every batch: one loss term multiplied by NaN or inf (in the graph, so its gradients are poisoned too),
    cycling through the modality's terms and alternating the two values."""
    forward, seen, poisoned = runner.model.forward, Counter(), []

    def poisoned_forward(batch):
        output = forward(batch)
        modality = batch["modality"]
        k, seen[modality] = seen[modality], seen[modality] + 1
        terms = sorted(output.losses)
        term, value = terms[k % len(terms)], VALUES[k % 2]
        output.losses[term] = output.losses[term] * value
        poisoned.append((modality, term, value))
        return output

    runner.model.forward = poisoned_forward
    return poisoned


def test_nan_and_inf_inside_the_forward_of_every_modality_are_skipped_and_counted(tiny_world, tmp_path):
    out = tmp_path / "out"
    runner = make_runner(tiny_world, out, "fp32", log_every_steps=1, max_nonfinite_steps_in_row=100)
    poisoned = poison_inside(runner)
    before = {k: v.clone() for k, v in runner.model.trainable_state_dict().items()}
    runner.train()
    for modality in MODALITIES:
        mine = [(where, str(value)) for m, where, value in poisoned if m == modality]
        assert {"input", "query_outputs"} <= {w for w, _ in mine} and {"nan", "inf"} <= {v for _, v in mine}, mine
    assert runner.nonfinite_steps == len(poisoned)  # one batch per step: every poisoned batch is one skipped step
    after = runner.model.trainable_state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the clean steps trained
    assert (out / "train_rank0.log").read_text().count("step skipped") == len(poisoned)
    assert load_checkpoint(latest_checkpoint(out))["position"]["nonfinite_steps"] == len(poisoned)


@pytest.mark.parametrize("precision", ["fp32", "fp16_scaler"])
def test_nan_and_inf_in_every_loss_term_are_skipped_and_counted(tiny_world, tmp_path, precision):
    out = tmp_path / "out"
    runner = make_runner(tiny_world, out, precision, log_every_steps=1, max_nonfinite_steps_in_row=1000)
    poisoned = poison_terms(runner)
    before = {k: v.clone() for k, v in runner.model.trainable_state_dict().items()}
    runner.train()
    for modality in MODALITIES:
        assert {t for m, t, _ in poisoned if m == modality} == set(runner.model.loss_weights(modality)), modality
        assert {str(v) for m, _, v in poisoned if m == modality} == {"nan", "inf"}, modality
    assert runner.nonfinite_steps == len(poisoned) == runner.global_step
    for name, value in runner.model.trainable_state_dict().items():  # every step skipped: nothing changed
        assert torch.equal(value, before[name]), name
    assert load_checkpoint(latest_checkpoint(out))["position"]["nonfinite_steps"] == len(poisoned)


@pytest.mark.parametrize("precision", ["fp32", "fp16_scaler"])
def test_nonfinite_steps_in_a_row_stop_with_the_last_good_weights(tiny_world, tmp_path, precision):
    out = tmp_path / "out"
    runner = make_runner(tiny_world, out, precision, log_every_steps=1, max_nonfinite_steps_in_row=3)
    poison_terms(runner)
    before = {k: v.clone() for k, v in runner.model.trainable_state_dict().items()}
    with pytest.raises(NonFiniteError, match="3 optimizer steps in a row had non-finite loss or gradients"):
        runner.train()
    saved = load_checkpoint(latest_checkpoint(out))
    assert saved["position"]["nonfinite_steps"] == 3
    for name, value in before.items():  # every step was skipped: the checkpoint holds the initial weights
        assert torch.equal(saved["model"][name], value), name
