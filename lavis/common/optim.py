"""AdamW over the trainable parameters, and learning-rate schedules as functions of the global step.

The schedule is stateless: the LR at step s depends only on s, so a resumed run gets exactly the same LR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List

import torch
from torch import nn

from lavis.common.registry import LR_SCHEDULES


@dataclass
class OptimizerConfig:
    weight_decay: float = 0.05
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class LRScheduleConfig:
    name: str = "linear_warmup_cosine"
    init_lr: float = 1e-4  # peak LR, reached at the end of warm-up
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_steps: int = 200


def no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norms, scalars (temperatures) and 1-d tensors take no weight decay."""
    lowered = name.lower()
    return param.ndim < 2 or lowered.endswith(".bias") or "norm" in lowered or "ln_" in lowered


def build_optimizer(model: nn.Module, cfg: OptimizerConfig, lr: float) -> torch.optim.AdamW:
    decay, plain = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (plain if no_decay(name, param) else decay).append(param)
    if not decay and not plain:
        raise ValueError("the model has no trainable parameters; check the freezing options in model:")
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]
    # fused: one kernel for all tensors, and the only AdamW that takes a device-side `found_inf` (the runner skips
    # non-finite steps with it, without reading a flag back to the host)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=True)


@LR_SCHEDULES.register("linear_warmup_cosine")
def linear_warmup_cosine(step: int, total_steps: int, cfg: LRScheduleConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.warmup_lr + (cfg.init_lr - cfg.warmup_lr) * step / cfg.warmup_steps
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.init_lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


@LR_SCHEDULES.register("constant")
def constant(step: int, total_steps: int, cfg: LRScheduleConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.warmup_lr + (cfg.init_lr - cfg.warmup_lr) * step / cfg.warmup_steps
    return cfg.init_lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
