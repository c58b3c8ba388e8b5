"""What training and evaluation both do first: processes, run directory, logging, data paths, the model."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from lavis.common import dist as dist_utils
from lavis.common.checkpoint import latest_checkpoint, load_checkpoint
from lavis.common.config import ResolvedConfig, check_dataset_paths, save_config
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


def set_up_run(cfg: ResolvedConfig, cfg_path: str, config_name: str = "config.yaml") -> RunSetup:
    run = cfg.run
    info = dist_utils.init_distributed(run.device.value, run.dist_timeout_s)
    output_dir = Path(run.output_dir)
    if info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    dist_utils.barrier()
    setup_logging(info.rank, output_dir)
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
    return RunSetup(dist=info, output_dir=output_dir, builders=builders, model=model.to(info.device))


def autocast_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """Precision is decided once: bf16 autocast on GPU by default, fp16 on request, fp32 on CPU."""
    if device.type != "cuda":
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)


def autocast(dtype: torch.dtype | None):
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type="cuda", dtype=dtype)
