"""What training and evaluation both do first: processes, run directory, logging, data paths, the model."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from lavis.common import dist as dist_utils
from lavis.common.checkpoint import latest_checkpoint, load_checkpoint, remove_stale_temporaries
from lavis.common.compile import apply_run_compile
from lavis.common.config import ResolvedConfig, RunConfig, check_dataset_paths, save_config
from lavis.common.config_schema import ConfigError
from lavis.common.metric_log import setup_logging
from lavis.common.registry import MODELS
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


def resolve_load_path(path: str) -> Path:
    """A checkpoint file, or a training run directory: its latest checkpoint (what an eval config names)."""
    if not Path(path).is_dir():
        return Path(path)
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"run.load_ckpt_path: {path} is a folder without checkpoint_*.pth files")
    return found


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
        return Path(target) if target else None
    if latest is None:
        log.info("resume_ckpt_path=auto: no checkpoint in %s yet, starting fresh", output_dir)
    return latest


def set_up_run(
    cfg: ResolvedConfig, cfg_path: str, config_name: str = "config.yaml", training: bool = False
) -> RunSetup:
    run = cfg.run
    info = dist_utils.init_distributed(run.device.value, run.dist_timeout_s)
    output_dir = Path(run.output_dir)
    if info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    dist_utils.barrier()
    setup_logging(info.rank, output_dir)
    resume_from = choose_resume_checkpoint(run, output_dir, info) if training else None
    if info.is_main:
        log.info("resolved config:\n%s", OmegaConf.to_yaml(cfg.yaml))
        save_config(cfg, output_dir / config_name)

    # Data paths are checked before any weight is read.
    builders = {name: cfg.builder_of(name)(ds) for name, ds in cfg.datasets.items()}
    check_dataset_paths(cfg, builders, cfg_path)

    # The same seed on every rank while building, so every rank starts from identical trainable tensors.
    torch.manual_seed(run.seed)
    model = MODELS.get(cfg.model_arch).from_config(cfg.model)
    if run.load_ckpt_path:
        ckpt_path = resolve_load_path(run.load_ckpt_path)
        model.load_trainable_state_dict(load_checkpoint(ckpt_path)["model"])
        log.info("loaded trainable tensors from %s", ckpt_path)
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
