"""Training metrics: summed on the device between log points (no host sync per step), then averaged
over ranks and written to the console, a JSONL file and TensorBoard by rank 0."""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
from pathlib import Path

import torch

from lavis.common.dist import all_reduce_sum

log = logging.getLogger("lavis")


def setup_logging(rank: int, output_dir: Path | None) -> None:
    """INFO from rank 0 only; warnings and errors from every rank, prefixed with it."""
    level = logging.INFO if rank == 0 else logging.WARNING
    fmt = logging.Formatter(f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    root.addHandler(console)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(output_dir / f"train_rank{rank}.log")
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class MetricWindow:
    """Sums of every reported scalar since the last flush, kept as device tensors."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.samples = 0
        self.started = time.perf_counter()

    def add(self, modality: str, report: dict[str, torch.Tensor], samples: int) -> None:
        for name, value in report.items():
            for key in (name, f"{modality}/{name}"):
                self.sums[key] = self.sums.get(key, torch.zeros((), device=self.device)) + value.float()
                self.counts[key] = self.counts.get(key, 0) + 1
        self.samples += samples

    def flush(self) -> dict[str, float]:
        """Average over steps and ranks. Every rank must call it at the same step (it is a collective)."""
        keys = sorted(self.sums)
        packed = torch.stack([self.sums[k] for k in keys] + [torch.tensor(float(self.samples), device=self.device)]) \
            if keys else torch.tensor([float(self.samples)], device=self.device)
        counts = torch.tensor([float(self.counts[k]) for k in keys], device=self.device)
        all_reduce_sum(packed)
        all_reduce_sum(counts)
        values = packed.tolist()
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        out = {k: v / c for k, v, c in zip(keys, values[:-1], counts.tolist())}
        out["samples_per_s"] = values[-1] / elapsed
        self.sums, self.counts, self.samples, self.started = {}, {}, 0, time.perf_counter()
        return out


class MetricSink:
    """Rank 0's outputs: JSONL always, TensorBoard when asked."""

    def __init__(self, output_dir: Path, tensorboard: bool):
        self.jsonl = (output_dir / "log.jsonl").open("a")
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(output_dir / "tensorboard"))

    def write(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        self.jsonl.write(json.dumps({"step": step, "epoch": epoch, **metrics}) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.jsonl.close()
        if self.writer is not None:
            self.writer.close()
