"""Optimizer steps skipped for a non-finite loss or gradient: decided on the device, read by the host at log points.

Deciding on the host would read a flag from the accelerator at every optimizer step, and the GPU would idle while
the host queued the next step. Instead the all-rank flag goes to fused AdamW as `found_inf` (it then leaves the
weights, the moments and its step count as they were) and the host reads the flags of a whole log window at once.
A skipped step still advances the global step and so the LR schedule, as a GradScaler skip does in plain PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_IDS_KEPT = 32  # sample ids kept per step for the warning


@dataclass(frozen=True)
class SkippedStep:
    step: int
    overflow: bool  # fp16: gradients overflowed at a loss scale above 1 (the scaler searching its scale)
    in_row: int  # skipped steps in a row, overflows not counted, ending with this one
    scale: float  # fp16: the loss scale this step ran with
    sample_ids: list[str]


class SkipLedger:
    """Per-step skip flags as device tensors until `read()`; the in-a-row count stays on the device throughout."""

    def __init__(self, device: torch.device):
        self.in_row = torch.zeros((), device=device)
        self._pending: list[tuple[int, torch.Tensor, list[str]]] = []

    def record(self, step: int, loss_bad: torch.Tensor, grads_bad: torch.Tensor, scale: torch.Tensor | None,
               sample_ids: list[str]) -> torch.Tensor:
        """Note one optimizer step; returns its skip flag (a 0-d float tensor, 1.0 to skip) for the optimizer.

        `loss_bad` / `grads_bad`: 0-d bool tensors, the same on every rank. `scale`: the fp16 loss scale the step
        ran with, None without loss scaling."""
        skip = loss_bad | grads_bad
        overflow = torch.zeros_like(skip) if scale is None else ~loss_bad & grads_bad & (scale > 1)
        divergent = skip & ~overflow
        # an overflow neither extends nor breaks a run of divergent steps; a good step ends it
        self.in_row = torch.where(divergent, self.in_row + 1, torch.where(skip, self.in_row, 0))
        scale_value = torch.zeros_like(self.in_row) if scale is None else scale.to(self.in_row)
        flags = torch.stack([skip.to(self.in_row), overflow.to(self.in_row), self.in_row, scale_value])
        self._pending.append((step, flags, sample_ids[:MAX_IDS_KEPT]))
        return skip.float()

    def read(self) -> list[SkippedStep]:
        """The skipped steps since the last read, oldest first: one host read for the whole window."""
        if not self._pending:
            return []
        rows = torch.stack([flags for _, flags, _ in self._pending]).tolist()
        skipped = [SkippedStep(step, bool(overflow), int(in_row), scale, ids)
                   for (step, _, ids), (skip, overflow, in_row, scale) in zip(self._pending, rows) if skip]
        self._pending.clear()
        return skipped
