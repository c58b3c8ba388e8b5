"""What training and evaluation both do first: processes, run directory, logging, data paths, the model."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from omegaconf import OmegaConf

from lavis.common import dist as dist_utils
from lavis.common.checkpoint import (
    latest_checkpoint,
    latest_intact_checkpoint,
    remove_stale_temporaries,
)
from lavis.common.compile import apply_run_compile
from lavis.common.config import ResolvedConfig, RunConfig, save_config, with_source
from lavis.common.config_schema import ConfigError
from lavis.common.metric_log import setup_logging
from lavis.common.preflight import Preflight, preflight
from lavis.common.registry import MODELS
from lavis.common.run_lock import acquire_run_lock
from lavis.common.watchdog import start_watchdog
from lavis.models.base import BaseModel

log = logging.getLogger("lavis.setup")


@dataclass
class RunSetup:
    dist: dist_utils.DistInfo
    output_dir: Path
    builders: dict[str, Any]
    model: BaseModel
    resume_from: Path | None = None  # training: the checkpoint to continue from (None: a fresh start)


def count_parameters(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """(trainable, frozen) parameter counts per top-level module."""
    counts: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        entry = counts.setdefault(name.split(".")[0], [0, 0])
        entry[0 if p.requires_grad else 1] += p.numel()
    return {k: (v[0], v[1]) for k, v in counts.items()}


def log_parameters(model: torch.nn.Module) -> None:
    counts = count_parameters(model)
    for module, (trainable, frozen) in sorted(counts.items()):
        log.info("parameters %-28s trainable %12s  frozen %14s", module, f"{trainable:,}", f"{frozen:,}")
    total_t = sum(c[0] for c in counts.values())
    total_f = sum(c[1] for c in counts.values())
    log.info("parameters %-28s trainable %12s  frozen %14s", "TOTAL", f"{total_t:,}", f"{total_f:,}")


def choose_resume_checkpoint(run: RunConfig, output_dir: Path, info: dist_utils.DistInfo) -> Path | None:
    """Where a training run continues from, decided before anything is written to `output_dir`.

    A restart by `torchrun --max-restarts` resumes as `auto`. A fresh start in a directory that already holds
    checkpoints is refused: the runs would mix, and pruning (run.keep_ckpts) would delete the new run's lower-step
    checkpoints first. Rank 0 looks; every rank acts on what it saw, so all ranks decide alike."""
    target = run.resume_ckpt_path
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if not target and restarts > 0:
        log.warning("elastic restart %d and run.resume_ckpt_path is not set: resuming as 'auto' from the latest "
                    "checkpoint in %s", restarts, output_dir)
        target = "auto"
    latest = dist_utils.all_gather_objects(latest_checkpoint(output_dir) if info.is_main else None)[0]
    if not target and latest is not None:
        raise ConfigError(
            f"run.output_dir {output_dir} already holds checkpoints of an earlier run (latest: {latest.name}) and "
            "run.resume_ckpt_path is not set. A fresh start there would mix two runs, and pruning would delete the "
            "new run's checkpoints first. Set run.resume_ckpt_path=auto to continue that run, or choose another "
            "run.output_dir"
        )
    if info.is_main:
        for path in remove_stale_temporaries(output_dir):
            log.warning("removed %s, left by a checkpoint write that was killed", path)
    if target != "auto":
        if target and not Path(target).is_file():
            raise ConfigError(f"run.resume_ckpt_path = {target} is not a checkpoint file; name one, or set "
                              "run.resume_ckpt_path=auto to continue from the latest in run.output_dir",
                              key="run.resume_ckpt_path")
        return Path(target) if target else None
    # auto: the newest checkpoint that verifies; damaged newer ones are moved aside (rank 0 checks, all follow)
    intact = dist_utils.all_gather_objects(latest_intact_checkpoint(output_dir) if info.is_main else None)[0]
    if intact is None and latest is not None:
        raise ConfigError(f"run.resume_ckpt_path=auto: every checkpoint in {output_dir} is damaged (moved to "
                          "*.pth.damaged); resume from another copy, or start a fresh run in another run.output_dir")
    if intact is None:
        log.info("resume_ckpt_path=auto: no checkpoint in %s yet, starting fresh", output_dir)
    return intact


def hold_output_dir(output_dir: Path, info: dist_utils.DistInfo) -> str | None:
    """Rank 0 takes the folder's run lock (run_lock.py) before anything is written there; every rank gets rank 0's
    verdict, so a refused run stops on all ranks with the same message. Returns the lock's take-over note."""
    refusal = note = None
    if info.is_main:
        try:
            note = acquire_run_lock(output_dir)
        except ConfigError as e:
            refusal = str(e)
    refusal = dist_utils.all_gather_objects(refusal)[0]
    if refusal is not None:
        raise ConfigError(refusal)
    return note


def set_up_run(
    cfg: ResolvedConfig, cfg_path: str, config_name: str = "config.yaml", training: bool = False,
    before_build: Optional[Callable[[Preflight, dist_utils.DistInfo, Path], None]] = None,
) -> RunSetup:
    """`before_build` runs on every rank once the folder is held and preflight passed, before anything else is
    written to the folder and before the model is built (the evaluator records what it scores there)."""
    run = cfg.run
    info = dist_utils.init_distributed(run.device.value, run.dist_timeout_s)
    output_dir = Path(run.output_dir)
    start_watchdog(info, run.hang_timeout_s)
    if info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    lock_note = hold_output_dir(output_dir, info)
    setup_logging(info, output_dir, "train" if training else "eval")
    if lock_note:
        log.warning("%s", lock_note)
    # an error naming its key is prefixed with the key's source (the YAML file, or --options key=value)
    resume_from = with_source(choose_resume_checkpoint, cfg.source_of)(run, output_dir, info) if training else None
    checked = preflight(cfg, training, resume_from)  # data, datasets vs modalities, checkpoints: before any weight
    builders = checked.builders
    if before_build is not None:
        before_build(checked, info, output_dir)
    if info.is_main:
        log.info("resolved config:\n%s", OmegaConf.to_yaml(cfg.yaml))
        save_config(cfg, output_dir / config_name)

    # The same seed on every rank while building, so every rank starts from identical trainable tensors.
    torch.manual_seed(run.seed)
    model = MODELS.get(cfg.model_arch).from_config(cfg.model)
    if checked.load_state is not None:
        model.load_trainable_state_dict(checked.load_state["model"])
        log.info("loaded trainable tensors from %s", checked.load_path)
    log_parameters(model)
    from lavis.runners.features import attach_feature_caches  # imported here: it uses this module's autocast

    builders = attach_feature_caches(cfg, builders, model, info.device)  # datasets with feature_cache_dir
    model = apply_run_compile(model.to(info.device), run.compile)  # after the move; names and state_dict unchanged
    return RunSetup(dist=info, output_dir=output_dir, builders=builders, model=model, resume_from=resume_from)


def autocast_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """Precision is decided once: bf16 autocast on GPU by default, fp16 on request, fp32 on CPU."""
    if device.type != "cuda":
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)


def autocast(dtype: torch.dtype | None):
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type="cuda", dtype=dtype)
