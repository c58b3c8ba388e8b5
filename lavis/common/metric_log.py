"""Run logs and training metrics.

Logs: rank 0 writes INFO and above to the console and `{kind}_rank0.log`; every other rank writes warnings to its own
`{kind}_rank{r}.log` and only errors to the console, so N ranks do not print every library warning N times. Python
warnings and the transformers library's messages go through the same handlers. Progress bars (`progress`) are tqdm
bars on a terminal and plain periodic log lines otherwise, so a redirected log stays readable.

Metrics: summed on the device between log points (no host sync per step), then averaged over ranks and written to
the console, a JSONL file and TensorBoard by rank 0."""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Protocol

import torch
from tqdm import tqdm

from lavis.common.dist import DistInfo, all_reduce_sum

log = logging.getLogger("lavis")
progress_log = logging.getLogger("lavis.progress")
PROGRESS_EVERY_S = 30.0  # seconds between the plain lines of a progress report that is not a terminal bar


def setup_logging(info: DistInfo, output_dir: Path | None, kind: str = "train") -> None:
    """Configure the root logger for this rank (see the module docstring); `kind` names the log file
    (`train`, `eval`). Each set-up states the world (size, backend, devices) in its log."""
    rank = info.rank
    fmt = logging.Formatter(f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, logging.FileHandler):  # a previous set-up's log file
            handler.close()
    root.handlers.clear()
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    console.setLevel(logging.INFO if rank == 0 else logging.ERROR)
    root.addHandler(console)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        log_file = output_dir / f"{kind}_rank{rank}.log"
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger -> the handlers above
    _route_transformers_logs(progress_bars=rank == 0 and sys.stderr.isatty())
    log.info("%s", describe_world(info))


def _route_transformers_logs(progress_bars: bool) -> None:
    """transformers prints to its own stderr handler: send its records through ours instead, and keep its tqdm bars
    (loading weights) to rank 0 on a terminal."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    if not progress_bars:
        hf_logging.disable_progress_bar()


def describe_world(info: DistInfo) -> str:
    """One line: world size, process-group backend and this process's device."""
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "none (one process)"
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
    nodes = max(info.world_size // max(per_node, 1), 1)
    if info.device.type == "cuda":
        device = f"{info.device} ({torch.cuda.get_device_name(info.device)})"
    else:
        device = f"cpu ({torch.get_num_threads()} threads)"
    return (f"world size {info.world_size} ({nodes} node(s) x {per_node} process(es)), backend {backend}, "
            f"rank {info.rank} on {socket.gethostname()}: device {device}, torch {torch.__version__}")


class Progress(Protocol):
    """What the runner and the evaluator use of a progress report: tqdm's bar, or `PlainProgress`."""

    def update(self, n: int = 1) -> Any: ...

    def set_postfix(self, **values: Any) -> Any: ...

    def close(self) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


def progress(iterable_or_total: Iterable[Any] | int, desc: str, enabled: bool, initial: int = 0,
             every_s: float = PROGRESS_EVERY_S) -> Progress:
    """Report progress over an iterable (iterate the result) or a count (call `update`): a tqdm bar when stderr is
    a terminal, else `PlainProgress`'s log lines; nothing when not `enabled` (ranks other than 0)."""
    if isinstance(iterable_or_total, int):
        iterable, total = None, iterable_or_total
    else:
        iterable = iterable_or_total
        try:
            total = len(iterable)
        except TypeError:  # a stream without a length
            total = None
    if enabled and sys.stderr.isatty():
        return tqdm(iterable, total=total, initial=initial, desc=desc, dynamic_ncols=True)
    return PlainProgress(iterable, total, desc, enabled, initial, every_s)


class PlainProgress:
    """A progress report as INFO lines of the `lavis.progress` logger: one every `every_s` seconds while it runs and
    one at the end, e.g. `epoch 0: 120/500 (24%), 3.1 it/s, 2m03s left; loss=1.2345`."""

    def __init__(self, iterable: Optional[Iterable[Any]], total: Optional[int], desc: str, enabled: bool,
                 initial: int = 0, every_s: float = PROGRESS_EVERY_S, clock=time.monotonic):
        self.iterable, self.total, self.desc, self.enabled = iterable, total, desc, enabled
        self.n = self.start_n = initial
        self.every_s, self.clock = every_s, clock
        self.started = self.last_line = clock()
        self.postfix = ""
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        for item in () if self.iterable is None else self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.enabled and self.clock() - self.last_line >= self.every_s:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self.enabled and not self.closed:
            self._line(final=True)
        self.closed = True

    def _line(self, final: bool = False) -> None:
        now = self.clock()
        self.last_line = now
        elapsed = max(now - self.started, 1e-9)
        rate = (self.n - self.start_n) / elapsed
        done = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"
        parts = [f"{self.desc}: {done}", f"{rate:.2f} it/s"]
        if final:
            parts.append(f"done in {_duration(elapsed)}")
        elif self.total and rate > 0:
            parts.append(f"{_duration((self.total - self.n) / rate)} left")
        progress_log.info("%s%s", ", ".join(parts), f"; {self.postfix}" if self.postfix else "")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


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
