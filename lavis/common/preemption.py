"""Preemption: SIGTERM (Slurm, Kubernetes, cloud spot reclaim, torchrun's shutdown), SIGUSR1 (Slurm's
`--signal=USR1@T` warning) and SIGINT (Ctrl-C) ask the run to stop at the next optimizer step boundary, after a
checkpoint, instead of dying with up to `run.ckpt_every_steps` (or an epoch) of work lost.

A signal may reach one rank, some, or all (torchrun forwards it to each of its workers; Slurm may signal the whole
process tree). The flags are summed over ranks at every step boundary through the host gloo group, so every rank
stops after the same step and the checkpoint is written by rank 0 with every rank's RNG state, as at any
checkpoint. The run then ends with `PREEMPTED_EXIT_CODE`, so scripts can tell "preempted, resume me" from a failure.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import torch

from lavis.common import dist as dist_utils

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: try again (resume with run.resume_ckpt_path=auto)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Preempted(SystemExit):
    """Raised by the runner after the preemption checkpoint. A SystemExit, so that `python train.py` and torchrun's
    workers exit with PREEMPTED_EXIT_CODE without every entry point catching it, and no traceback is printed."""

    def __init__(self, signal_name: str, checkpoint: Path, step: int):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.signal_name, self.checkpoint, self.step = signal_name, checkpoint, step

    def __str__(self) -> str:
        return (f"stopped by {self.signal_name} after step {self.step}; {self.checkpoint} holds it. Resume with "
                "--options run.resume_ckpt_path=auto")


class StopSignals:
    """Within `with StopSignals() as stop:`, the stop signals set a flag instead of ending the process; outside,
    the previous handlers are back. Only the main thread can install handlers: elsewhere this does nothing."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = name
            log.warning("%s received: the run stops after the current optimizer step, once a checkpoint is written",
                        name)
        else:
            # torchrun forwards the signal it got to its workers, so a second one is usual; kill -9 stops at once
            log.warning("%s received: already stopping at the next step boundary", name)

    def agreed(self) -> str | None:
        """The name of the signal when any rank received one (a collective: every rank calls it at the same step)."""
        flag = torch.tensor([0 if self.received is None else 1], dtype=torch.int32)
        if dist_utils.all_reduce_sum_host(flag).item() == 0:
            return None
        return self.received or "a stop signal on another rank"


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker_init_fn: a signal sent to the whole process group (Ctrl-C, Slurm) must not kill the
    workers under the main process before it has written its checkpoint; the main process ends them."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
