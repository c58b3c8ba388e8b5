"""A watchdog for ranks that stop answering without dying (SIGSTOP, a frozen node, a process stuck holding the GIL).

A dead rank is torchrun's to report; a stopped one is not: its peers wait in their next collective until
`run.dist_timeout_s` (30 minutes by default) and then blame whichever rank timed out first, usually a healthy one.
Here every rank runs a daemon thread that bumps its own counter in the rendezvous store every few seconds and
watches the others' counters. A counter that has not moved for `run.hang_timeout_s` (by the watcher's own clock, so
hosts' clocks need not agree) fails the job from the watching ranks, with an error naming the silent rank, its host
and pid. The store is reached through a client of its own whose operations time out after `hang_timeout_s` too, so a
stopped store host (rank 0, when the store is not torchrun's agent's) is reported as such instead of blocking.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import sys
import threading
import time

import torch.distributed as dist

from lavis.common import dist as dist_utils

log = logging.getLogger(__name__)

HUNG_RANK_EXIT_CODE = 70  # EX_SOFTWARE; the message says which rank stopped


class HangWatchdog(threading.Thread):
    def __init__(self, rank: int, world_size: int, timeout_s: float, store: dist.Store, store_address: str):
        super().__init__(name="lavis-hang-watchdog", daemon=True)
        self.rank, self.world_size, self.timeout_s = rank, world_size, timeout_s
        self.store, self.store_address = store, store_address
        self.interval_s = min(max(timeout_s / 10, 0.2), 10.0)
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            self.store.set(f"watchdog/who{self.rank}", f"host {socket.gethostname()}, pid {os.getpid()}")
            self._watch()
        except Exception as e:  # noqa: BLE001 - any store failure means the store host stopped answering
            if not self._stop_event.is_set():
                self._fail(f"rank {self.rank}: the rendezvous store at {self.store_address} did not answer within "
                           f"run.hang_timeout_s = {self.timeout_s:g} s ({e}); the process hosting it (torchrun's "
                           "agent, or rank 0 when the store is not the agent's) is stopped or gone")

    def _watch(self) -> None:
        others = [r for r in range(self.world_size) if r != self.rank]
        last = {r: (-1, time.monotonic()) for r in others}
        while not self._stop_event.wait(self.interval_s):
            self.store.add(f"watchdog/beat{self.rank}", 1)
            now = time.monotonic()
            for r in others:
                if self.store.add(f"watchdog/done{r}", 0):
                    continue  # that rank finished normally
                beat = self.store.add(f"watchdog/beat{r}", 0)
                if beat != last[r][0]:
                    last[r] = (beat, now)
                elif now - last[r][1] > self.timeout_s:
                    who = self.store.get(f"watchdog/who{r}").decode() if self.store.check([f"watchdog/who{r}"]) \
                        else "host unknown"
                    self._fail(f"rank {r} ({who}) stopped answering: its heartbeat has not moved for "
                               f"{now - last[r][1]:.0f} s (run.hang_timeout_s = {self.timeout_s:g}); the process "
                               f"is stopped, frozen or cut off. Rank {self.rank} ends the job; look at rank {r}'s host "
                               "and its log in the run folder")

    def stop(self) -> None:
        """This rank ends normally: tell the others not to wait for its heartbeat."""
        self._stop_event.set()
        try:
            self.store.add(f"watchdog/done{self.rank}", 1)
        except Exception:  # noqa: BLE001 - the store may already be gone at the end of a job
            pass

    def _fail(self, message: str) -> None:
        """Fail the job from this thread: the main thread may be blocked inside a collective, where no Python
        exception reaches it. The error is written where torchrun's root-cause summary looks for it."""
        log.error(message)
        print(f"ERROR: {message}", file=sys.stderr, flush=True)
        error = RuntimeError(message)
        if os.environ.get("TORCHELASTIC_ERROR_FILE"):
            from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

            ErrorHandler().record_exception(error)
        logging.shutdown()
        os._exit(HUNG_RANK_EXIT_CODE)


_WATCHDOG: HangWatchdog | None = None


def start_watchdog(info: dist_utils.DistInfo, timeout_s: int) -> None:
    """Start this rank's watchdog (a distributed run with run.hang_timeout_s > 0); stopped by stop_watchdog."""
    global _WATCHDOG
    if not info.enabled or timeout_s <= 0 or _WATCHDOG is not None:
        return
    address = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    client = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                           timeout=datetime.timedelta(seconds=timeout_s))
    _WATCHDOG = HangWatchdog(info.rank, info.world_size, timeout_s,
                             dist.PrefixStore(dist_utils.attempt_prefix(), client), address)
    _WATCHDOG.start()


def stop_watchdog() -> None:
    global _WATCHDOG
    if _WATCHDOG is not None:
        _WATCHDOG.stop()
        _WATCHDOG = None
