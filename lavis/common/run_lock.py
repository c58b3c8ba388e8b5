"""One run per output folder: rank 0 holds an exclusive lock on `<output_dir>/run.lock` for the life of the process.

The lock is an `flock` on the file, so the kernel drops it when the holder dies in any way (kill -9, node loss on a
local disk): a lock file is never stale in itself. The file's text (host, pid, start time, command) names the holder
for the refusal message; when the lock was free but the text names a process of this host that no longer runs, the
take-over is logged. On network filesystems flock is only as good as the mount: NFSv4 and Lustre with `flock` share
it between hosts, Lustre with `localflock` and some NFSv3 setups do not (two jobs on different nodes then both get
the lock); give concurrent jobs distinct output folders there.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from lavis.common.config_schema import ConfigError

LOCK_NAME = "run.lock"

# Folders this process holds, with their open files: a second runner in the same process (tests, notebooks, an
# evaluation after training in one script) shares the hold instead of refusing itself.
_HELD: dict[Path, object] = {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}, "
            f"command: {holder.get('command')}")


def acquire_run_lock(output_dir: str | Path) -> str | None:
    """Hold `output_dir`'s lock until this process exits; ConfigError naming the holder when another run has it.
    Returns a note to log when the lock was taken over from a process of this host that no longer runs (the caller
    logs it: the folder's log file is opened only once the folder is held)."""
    folder = Path(output_dir).resolve()
    path = folder / LOCK_NAME
    if folder in _HELD:
        return None
    f = path.open("a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = _parse(f.read())
        f.close()
        raise ConfigError(
            f"run.output_dir {folder} is in use by another run ({_describe(holder)}): two runs in one folder would "
            f"overwrite each other's checkpoints and logs. Wait for it to end, stop it, or choose another "
            f"run.output_dir (the lock is {path})"
        ) from None
    f.seek(0)
    previous = _parse(f.read())
    note = None
    if previous.get("host") == socket.gethostname() and isinstance(previous.get("pid"), int) \
            and previous["pid"] != os.getpid() and not _pid_alive(previous["pid"]):
        note = f"taking over the lock of {folder} from a run that no longer runs ({_describe(previous)})"
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)}) + "\n")
    f.flush()
    _HELD[folder] = f
    return note


def release_run_lock(output_dir: str | Path) -> None:
    """Release early (the lock goes with the process anyway). The file stays: unlinking a lock file races with a
    run that opened it but has not locked it yet."""
    f = _HELD.pop(Path(output_dir).resolve(), None)
    if f is not None:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()


def _parse(text: str) -> dict:
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}
