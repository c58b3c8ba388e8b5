"""The training loop: everything is built in `__init__`, `train()` only iterates.

One optimizer step = `run.accum_grad_iters` single-modality batches taken from the epoch plan. Gradients of the
trainable tensors (megabytes: LoRA, queries, PaFE, heads) are all-reduced in one flat buffer before each optimizer
step instead of wrapping the model in DDP: a step touches only one modality's tensors, which DDP could only handle
with find_unused_parameters. Between log points the host reads nothing from the device: metrics and the skip flags
of non-finite steps (skipped_steps.py) stay there until the log point reads them at once.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from lavis.common import dist as dist_utils
from lavis.common.checkpoint import (
    capture_rng_state,
    checkpoint_path,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_atomic,
)
from lavis.common.checkpoint_compat import Purpose, check_settings, config_differences
from lavis.common.config import ResolvedConfig
from lavis.common.metric_log import MetricSink, MetricWindow, Progress, peak_memory_mb, progress
from lavis.common.optim import build_optimizer, set_lr
from lavis.common.preemption import Preempted, StopSignals
from lavis.common.registry import LR_SCHEDULES, RUNNERS, TASKS
from lavis.datasets.base import indexing_skips
from lavis.datasets.loaders import (
    StreamingTrainStream,
    TrainStream,
    batch_size_of,
    build_train_stream,
    dataset_instruction,
    derive_seed,
    epoch_plan,
    move_to,
)
from lavis.runners.setup import autocast, autocast_dtype, set_up_run
from lavis.runners.skipped_steps import SkipLedger

log = logging.getLogger("lavis.runner")


class BadDataError(RuntimeError):
    pass


class NonFiniteError(FloatingPointError):
    pass


# A rank whose collective broke because a peer died waits this long before raising: torchrun's agent (polling every
# 0.1 s) then sees the peer's failure alone and reports it as the root cause, instead of a tie (error files carry
# whole-second timestamps) that it resolves in favour of rank 0's "connection reset".
PEER_FAILURE_GRACE_S = 5.0


def is_peer_failure(error: BaseException) -> bool:
    """A communication error (a peer exited, a store or collective timed out), not a failure of this rank."""
    return isinstance(error, torch.distributed.DistError) or (isinstance(error, RuntimeError) and "gloo" in str(error))


def sync_gradients(params: list[torch.nn.Parameter], world_size: int) -> None:
    """Average gradients over ranks. A tensor with a gradient on any rank takes part everywhere (zeros where it
    has none, e.g. a rank whose batch was all bad samples), so every rank applies the same update."""
    if not dist_utils.is_dist():
        return
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.int32)  # host-side: no device wait
    dist_utils.all_reduce_sum_host(has_grad)
    active = [p for p, flag in zip(params, has_grad.tolist()) if flag > 0]
    if not active:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in active]
    flat = _flatten_dense_tensors(grads)
    dist_utils.all_reduce_sum(flat)
    flat /= world_size
    for p, g in zip(active, _unflatten_dense_tensors(flat, grads)):
        p.grad = g


@RUNNERS.register("epoch_runner")
class EpochRunner:
    def __init__(self, cfg: ResolvedConfig, cfg_path: str = "<config>"):
        self.cfg, self.run = cfg, cfg.run
        run = cfg.run
        setup = set_up_run(cfg, cfg_path, training=True)
        self.dist, self.device, self.output_dir = setup.dist, setup.dist.device, setup.output_dir
        self.model = setup.model
        builders = setup.builders
        self.task = TASKS.get(run.task)()

        # Annotations dropped while indexing: counted on rank 0 only (every rank indexes the same files), reported
        # once per run (not again on resume), and held to run.max_bad_sample_fraction before the first step.
        self.index_skipped, self.index_kept = 0, 0
        self.dataset_sizes: dict[str, int] = {}
        self.streams = self._build_streams(builders, report_skips=setup.resume_from is None)
        self._check_indexing_skips()
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.model, run.optimizer, run.lr_schedule.init_lr)
        self.lr_at = LR_SCHEDULES.get(run.lr_schedule.name)
        self.steps_per_epoch = self._steps_per_epoch()
        self.total_steps = self.steps_per_epoch * run.max_epoch

        self.amp_dtype = autocast_dtype(self.device, run.amp.value)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)  # fp16 needs loss scaling

        self.epoch, self.position, self.global_step = 0, 0, 0
        # The LR schedule runs over global_step - schedule_offset: 0 unless a resume re-planned the data (_replan)
        self.schedule_offset = 0
        self.stop_signals = StopSignals()
        self.bad_samples, self.seen_samples = 0, 0
        self.nonfinite_steps = 0
        self.skips = SkipLedger(self.device)
        # Each rank's own random stream (dropout); a resumed run continues the stream its checkpoint saved.
        torch.manual_seed(derive_seed(run.seed, "rank", self.dist.rank))
        if setup.resume_from is not None:
            self._resume(setup.resume_from)
        self.sink = MetricSink(self.output_dir, run.tensorboard) if self.dist.is_main else None

    # ---- construction helpers -------------------------------------------------------------------------------
    def _build_streams(
        self, builders: dict[str, Any], report_skips: bool
    ) -> list[TrainStream | StreamingTrainStream]:
        streams = []
        for name, builder in builders.items():
            ds_cfg = self.cfg.datasets[name]
            if ds_cfg.train_split is None:
                continue
            dataset = builder.build(ds_cfg.train_split)
            self._account_indexing_skips(name, dataset, report_skips)
            self.dataset_sizes[name] = len(dataset)
            streams.append(build_train_stream(
                name, dataset, modality=ds_cfg.modality, batch_size=ds_cfg.batch_size, repeat=ds_cfg.repeat,
                rank=self.dist.rank, world_size=self.dist.world_size, seed=self.run.seed,
                num_workers=self.run.num_workers, text_tokenizer=getattr(self.model, "text_tokenizer", None),
                pin_memory=self.device.type == "cuda", instruction=dataset_instruction(self.model, ds_cfg),
            ))
            log.info("train data %-20s modality %-18s %7d samples x%d, %d batches/epoch/rank", name,
                     ds_cfg.modality, len(dataset), ds_cfg.repeat, streams[-1].batches_per_epoch)
        if not streams:
            raise ValueError("no dataset has a train_split; nothing to train on")
        self._check_ranks_agree(streams)
        return streams

    def _check_ranks_agree(self, streams: list[TrainStream | StreamingTrainStream]) -> None:
        """Every rank must take the same number of steps or a collective hangs; a stream's length is declared per
        rank, so compare before the first step rather than hang at the last."""
        counts = {s.name: s.batches_per_epoch for s in streams}
        per_rank = dist_utils.all_gather_objects(counts)
        if any(c != counts for c in per_rank):
            raise ValueError(f"ranks disagree on the batches per epoch of their datasets: {per_rank}; a streaming "
                             "dataset must declare the same len() on every rank")

    def _steps_per_epoch(self) -> int:
        batches = sum(s.batches_per_epoch for s in self.streams)
        return -(-batches // self.run.accum_grad_iters)

    def _data_plan(self) -> dict[str, Any]:
        """What the epoch plan and the position in it depend on; saved with every checkpoint (see _replan)."""
        return {
            "world_size": self.dist.world_size,
            "accum_grad_iters": self.run.accum_grad_iters,
            "modality_schedule": self.run.modality_schedule.value,
            "epoch_batches": sum(s.batches_per_epoch for s in self.streams),
            "datasets": {s.name: {"samples": self.dataset_sizes[s.name], "batch_size": s.batch_size,
                                  "repeat": self.cfg.datasets[s.name].repeat,
                                  "batches_per_epoch": s.batches_per_epoch} for s in self.streams},
        }

    def _lr(self) -> float:
        return self.lr_at(self.global_step - self.schedule_offset, self.total_steps, self.run.lr_schedule)

    # ---- checkpoints -----------------------------------------------------------------------------------------
    def _resume(self, path: Path) -> None:
        """Continue from `path` (chosen by set_up_run: run.resume_ckpt_path, `auto`, or an elastic restart)."""
        state = load_checkpoint(path)
        self._check_same_model_config(state["config"]["model"], path)
        self.model.load_trainable_state_dict(state["model"])
        # The implementation is this run's choice, not the checkpoint's: an optimizer state written by a per-tensor
        # AdamW (before the step skipped non-finite updates with fused AdamW's found_inf) continues fused.
        for group in state["optimizer"]["param_groups"]:
            group["fused"] = True
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        pos = state["position"]
        self.epoch, self.position, self.global_step = pos["epoch"], pos["position"], pos["global_step"]
        self.bad_samples, self.seen_samples = pos.get("bad_samples", 0), pos.get("seen_samples", 0)
        self.nonfinite_steps = pos.get("nonfinite_steps", 0)
        self.schedule_offset = pos.get("schedule_offset", 0)
        saved_plan = pos.get("data_plan")
        if saved_plan is not None and saved_plan != self._data_plan():
            self._replan(saved_plan, path)
        rng = state["rng"]
        if len(rng) == self.dist.world_size:
            restore_rng_state(rng[self.dist.rank])
        else:
            log.warning("checkpoint was written by %d ranks, this run has %d: RNG states are re-seeded",
                        len(rng), self.dist.world_size)
        log.info("resumed from %s at epoch %d, batch %d, step %d", path, self.epoch, self.position, self.global_step)

    def _replan(self, saved: dict[str, Any], path: Path) -> None:
        """The checkpoint was written under another data plan (a dataset's length, batch size or repeat, the world
        size, accum_grad_iters or the schedule changed), so its position indexes a different epoch plan.

        The rule: the epoch continues at the same fraction of its batches (rounded down to an optimizer step), and
        the LR schedule continues from the step that position has in the new plan, as if the run had always had
        the new shape. global_step keeps counting (checkpoint names stay increasing); the schedule runs over
        global_step - schedule_offset. Where a dataset's length or the world size changed, its shuffle differs, so
        within this epoch some samples may come again and others not at all; later epochs see each sample once."""
        current = self._data_plan()
        changes = config_differences(saved, current, "data")
        new_batches, accum = current["epoch_batches"], self.run.accum_grad_iters
        old_position = self.position
        if old_position >= saved["epoch_batches"]:
            self.position = new_batches
        else:
            self.position = min(int(old_position / saved["epoch_batches"] * new_batches) // accum * accum,
                                new_batches)
        schedule_step = self.epoch * self.steps_per_epoch + -(-self.position // accum)
        self.schedule_offset = self.global_step - schedule_step
        reshuffled = [n for n, d in current["datasets"].items()
                      if saved["datasets"].get(n, {}).get("samples") != d["samples"]]
        if saved["world_size"] != current["world_size"]:
            reshuffled = sorted(current["datasets"])
        log.warning(
            "%s was written under another data plan (%s). Epoch %d continues at the same fraction of its batches: "
            "batch %d of %d (was %d of %d); the LR schedule continues at step %d of %d (global step %d).%s",
            path, "; ".join(changes), self.epoch, self.position, new_batches, old_position, saved["epoch_batches"],
            schedule_step, self.total_steps, self.global_step,
            f" The shuffle of {', '.join(reshuffled)} changed with its length or the world size: within epoch "
            f"{self.epoch} some samples may repeat and others be missed." if reshuffled else "")

    def _check_same_model_config(self, saved: dict[str, Any], path: Path) -> None:
        """set_up_run's preflight compared the whole checkpoint config (weights included) and warned of allowed
        changes already; this guards the settings again, quietly, for the tensors actually loaded."""
        check_settings(saved, self.cfg, path, Purpose.resume, warn=False)

    def save_checkpoint(self) -> Path:
        self._read_skipped_steps()  # the count in the checkpoint includes every step taken so far
        rng = dist_utils.all_gather_objects(capture_rng_state())  # a collective: every rank calls this
        path = checkpoint_path(self.output_dir, self.global_step)
        if self.dist.is_main:
            state = {
                "model": {k: v.cpu() for k, v in self.model.trainable_state_dict().items()},
                "optimizer": self.optimizer.state_dict(),
                "scheduler": {"name": self.run.lr_schedule.name, "step": self.global_step},
                "scaler": self.scaler.state_dict(),
                "rng": rng,
                "position": {"epoch": self.epoch, "position": self.position, "global_step": self.global_step,
                             "bad_samples": self.bad_samples, "seen_samples": self.seen_samples,
                             "nonfinite_steps": self.nonfinite_steps, "schedule_offset": self.schedule_offset,
                             "data_plan": self._data_plan()},
                "config": OmegaConf.to_container(self.cfg.yaml),
            }
            save_atomic(state, path)
            prune_checkpoints(self.output_dir, self.run.keep_ckpts)
            log.info("saved %s", path)
        dist_utils.barrier()
        return path

    # ---- the loop --------------------------------------------------------------------------------------------
    def train(self, stop_at_step: int | None = None) -> dict[str, float]:
        """Train to the end of `run.max_epoch`, or stop once the global step reaches `stop_at_step` (the schedule
        still spans the whole run, as if the job had been cut off there; checkpoints follow run.ckpt_every_steps)."""
        try:
            with self.stop_signals:
                return self._train(stop_at_step)
        except Exception as e:
            if self.dist.enabled and is_peer_failure(e):
                log.error("rank %d: a collective failed, most likely because another rank failed first (its error "
                          "is the root cause); exiting in %.0f s: %s", self.dist.rank, PEER_FAILURE_GRACE_S, e)
                time.sleep(PEER_FAILURE_GRACE_S)
            raise

    def _train(self, stop_at_step: int | None) -> dict[str, float]:
        last: dict[str, float] = {}
        for epoch in range(self.epoch, self.run.max_epoch):
            self.epoch = epoch
            last = self._train_epoch(epoch, stop_at_step) or last
            if stop_at_step is not None and self.global_step >= stop_at_step:
                break
            self.epoch, self.position = epoch + 1, 0
            self._check_bad_fraction(final=True)
            self.save_checkpoint()
        if self.sink is not None:
            self.sink.close()
        return last

    def _train_epoch(self, epoch: int, stop_at_step: int | None) -> dict[str, float]:
        plan = epoch_plan(self.streams, self.run.modality_schedule.value, self.run.seed, epoch)
        consumed = Counter(plan[: self.position])
        iterators = {i: s.start_epoch(epoch, consumed[i]) for i, s in enumerate(self.streams)}
        accum = self.run.accum_grad_iters
        window = MetricWindow(self.device)
        metrics: dict[str, float] = {}
        bar = progress(len(plan), desc=f"epoch {epoch}", enabled=self.dist.is_main, initial=self.position)
        step_sample_ids: list[str] = []
        step_loss = torch.zeros((), device=self.device)  # summed on the device; read once per optimizer step
        for position in range(self.position, len(plan)):
            stream = self.streams[plan[position]]
            batch = next(iterators[plan[position]])
            self._account_samples(batch, epoch, position, stream)
            step_sample_ids += [f"{stream.name}/{i}" for i in batch["sample_ids"]]
            if batch_size_of(batch) > 0:
                step_loss += self._forward_backward(batch, window)
            bar.update(1)
            if (position + 1) % accum and position + 1 < len(plan):
                continue
            lr = self._optimizer_step(step_loss, step_sample_ids)
            step_sample_ids, step_loss = [], torch.zeros((), device=self.device)
            self.position = position + 1
            if self.global_step % self.run.log_every_steps == 0:
                metrics = self._flush(window, lr, epoch, bar)
            saved = self.run.ckpt_every_steps and self.global_step % self.run.ckpt_every_steps == 0
            if saved:
                self.save_checkpoint()
            if (signal_name := self.stop_signals.agreed()) is not None:
                self._stop_for_signal(signal_name, window, lr, epoch, bar, saved)
            if stop_at_step is not None and self.global_step >= stop_at_step:
                break
        if window.samples or window.sums:
            metrics = self._flush(window, self._lr(), epoch, bar)
        bar.close()
        return metrics

    def _stop_for_signal(self, signal_name: str, window: MetricWindow, lr: float, epoch: int, bar: Progress,
                         saved: bool) -> None:
        """A stop signal reached a rank (preemption.py): log the steps since the last log point, checkpoint this
        step boundary (unless it was just written) and end the run with Preempted."""
        if window.samples or window.sums:
            self._flush(window, lr, epoch, bar)
        path = checkpoint_path(self.output_dir, self.global_step) if saved else self.save_checkpoint()
        bar.close()
        if self.sink is not None:
            self.sink.close()
        stop = Preempted(signal_name, path, self.global_step)
        log.warning("%s", stop)
        raise stop

    def _forward_backward(self, batch: dict[str, Any], window: MetricWindow) -> torch.Tensor:
        """One batch's forward and backward (gradients accumulate); returns its loss, detached, on the device."""
        with autocast(self.amp_dtype):
            loss, report = self.task.train_step(self.model, move_to(batch, self.device))
        self.scaler.scale(loss / self.run.accum_grad_iters).backward()
        window.add(batch["modality"], report, batch_size_of(batch))
        return loss.detach().float()

    def _optimizer_step(self, step_loss: torch.Tensor, sample_ids: list[str]) -> float:
        """Average, clip and apply the accumulated gradients, unless the loss or a gradient is non-finite on any
        rank: that step is skipped on the device (see skipped_steps.py) and reported at the next log point."""
        lr = self._lr()
        set_lr(self.optimizer, lr)
        sync_gradients(self.trainable, self.dist.world_size)
        self.scaler.unscale_(self.optimizer)
        with_grad = [p for p in self.trainable if p.grad is not None]
        max_norm = self.run.grad_clip_norm if self.run.grad_clip_norm > 0 else float("inf")
        norm = (torch.nn.utils.clip_grad_norm_(with_grad, max_norm) if with_grad
                else torch.zeros((), device=self.device))
        bad = torch.stack([~torch.isfinite(step_loss), ~torch.isfinite(norm)]).float()
        loss_bad, grads_bad = dist_utils.all_reduce_sum(bad) > 0  # every rank decides alike
        # fp16: the scale this step ran with, read on the device (GradScaler.get_scale() would wait for it)
        scale = self.scaler._get_scale_async() if self.scaler.is_enabled() else None
        self.optimizer.found_inf = self.skips.record(self.global_step, loss_bad, grads_bad, scale, sample_ids)
        try:
            self.optimizer.step()
        finally:
            del self.optimizer.found_inf
        self.scaler.update()  # fp16: an overflow found by unscale_ lowers the scale for the next step
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        return lr

    def _read_skipped_steps(self) -> None:
        """Count and log the steps skipped since the last read. Once run.max_nonfinite_steps_in_row were skipped in
        a row, save a checkpoint and stop: skipped steps change no weight, so it holds no non-finite update.

        Under fp16 an overflow while the loss scale is above 1 is the scaler searching for its scale (several in a
        row are usual at the start), not divergence: it is counted and logged but does not count toward the stop."""
        limit = self.run.max_nonfinite_steps_in_row
        diverged = None
        for s in self.skips.read():
            self.nonfinite_steps += 1
            samples = ", ".join(s.sample_ids)
            if s.overflow:
                log.warning("fp16 gradient overflow at step %d: step skipped, loss scale lowered to %g (%d non-finite "
                            "steps in all); samples: %s", s.step, s.scale * self.scaler.get_backoff_factor(),
                            self.nonfinite_steps, samples)
                continue
            log.warning("non-finite loss or gradient at step %d: step skipped (%d in a row, %d in all); samples: %s",
                        s.step, s.in_row, self.nonfinite_steps, samples)
            if s.in_row >= limit and diverged is None:
                diverged = s
        if diverged is not None:
            path = self.save_checkpoint()
            raise NonFiniteError(
                f"{diverged.in_row} optimizer steps in a row had non-finite loss or gradients, reaching "
                f"run.max_nonfinite_steps_in_row = {limit} at step {diverged.step}; they were skipped (a skipped step "
                f"changes no weight), and {path} holds the weights of step {self.global_step}. Samples of step "
                f"{diverged.step}: {', '.join(diverged.sample_ids)}. Lower the LR, check those samples, or use "
                "run.amp=fp32, then resume with run.resume_ckpt_path=auto"
            )

    def _flush(self, window: MetricWindow, lr: float, epoch: int, bar: Progress) -> dict[str, float]:
        self._read_skipped_steps()
        metrics = window.flush()
        metrics["lr"] = lr
        metrics["peak_mem_mb"] = peak_memory_mb(self.device)
        metrics["nonfinite_steps"] = float(self.nonfinite_steps)  # skipped so far in the run (kept over resumes)
        self._check_bad_fraction(final=False)
        if self.sink is not None:
            self.sink.write(self.global_step, epoch, metrics)
            terms = "  ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if k.startswith("loss"))
            log.info("step %d  %s  lr %.2e  %.1f samples/s  peak %.0f MB", self.global_step, terms, lr,
                     metrics["samples_per_s"], metrics["peak_mem_mb"])
            bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}", lr=f"{lr:.2e}",
                            sps=f"{metrics['samples_per_s']:.1f}")
        return metrics

    # ---- bad samples and tracing -----------------------------------------------------------------------------
    def _account_indexing_skips(self, name: str, dataset: Any, report: bool) -> None:
        skips = indexing_skips(dataset)
        if not self.dist.is_main:
            return
        self.index_skipped += len(skips)
        self.index_kept += len(dataset)
        if report and skips:
            with (self.output_dir / "bad_samples_rank0.jsonl").open("a") as f:
                for sample_id, reason in skips:
                    f.write(json.dumps({"epoch": None, "stage": "indexing", "dataset": name, "sample_id": sample_id,
                                        "reason": reason}) + "\n")

    def _check_indexing_skips(self) -> None:
        """Before the first step: too many unusable annotations means a wrong file or format, not a few bad
        samples. Every rank gets rank 0's counts, so all stop together."""
        skipped, total = dist_utils.all_gather_objects((self.index_skipped, self.index_skipped + self.index_kept))[0]
        if total and skipped > self.run.max_bad_sample_fraction * total:
            raise BadDataError(
                f"{skipped} of {total} annotations of the training splits were unusable while indexing "
                f"({skipped / total:.2%} > run.max_bad_sample_fraction = {self.run.max_bad_sample_fraction:.2%}); "
                f"each sample and its reason is in {self.output_dir}/bad_samples_rank0.jsonl. Check the annotation "
                "files and paths, or raise the threshold knowingly."
            )

    def _account_samples(
        self, batch: dict[str, Any], epoch: int, position: int, stream: TrainStream | StreamingTrainStream
    ) -> None:
        skipped = batch["skipped"]
        self.seen_samples += batch_size_of(batch) + len(skipped)
        if skipped:
            self.bad_samples += len(skipped)
            with (self.output_dir / f"bad_samples_rank{self.dist.rank}.jsonl").open("a") as f:
                for s in skipped:
                    log.warning("skipped bad sample %s of dataset %s: %s", s.sample_id, s.dataset, s.reason)
                    f.write(json.dumps({"epoch": epoch, "dataset": s.dataset, "sample_id": s.sample_id,
                                        "reason": s.reason}) + "\n")
        if self.run.trace_samples:
            with (self.output_dir / f"samples_rank{self.dist.rank}.jsonl").open("a") as f:
                f.write(json.dumps({"epoch": epoch, "position": position, "dataset": stream.name,
                                    "sample_ids": batch["sample_ids"]}) + "\n")

    def _check_bad_fraction(self, final: bool) -> None:
        # Annotations dropped while indexing count once (rank 0 holds them) as seen and bad.
        totals = torch.tensor([float(self.bad_samples + self.index_skipped),
                               float(self.seen_samples + self.index_skipped)], device=self.device)
        dist_utils.all_reduce_sum(totals)
        bad, seen = totals.tolist()
        if seen == 0 or (not final and seen < self.run.bad_sample_check_after):
            return
        if bad > self.run.max_bad_sample_fraction * seen:
            raise BadDataError(
                f"{int(bad)} of {int(seen)} samples were bad ({bad / seen:.2%} > run.max_bad_sample_fraction = "
                f"{self.run.max_bad_sample_fraction:.2%}); the samples and reasons are in "
                f"{self.output_dir}/bad_samples_rank*.jsonl. Fix the data or raise the threshold knowingly."
            )
