"""Process-group setup and the few collectives the runner needs; decided once at start-up."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str, timeout_s: int) -> DistInfo:
    """Read torchrun's environment; NCCL on GPU, gloo on CPU. `device` is auto | cpu | cuda."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device is 'cuda' but no CUDA device is visible; use run.device=cpu or auto")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        # A finite timeout makes a rank stuck in a collective fail instead of hanging the job forever.
        timeout = datetime.timedelta(seconds=timeout_s)
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            store=_store_for_this_attempt(rank, world, timeout),
            rank=rank,
            world_size=world,
            timeout=timeout,
            device_id=dev if use_cuda else None,
        )
        # Host-side bookkeeping (which tensors have gradients) goes through gloo: reading an NCCL result on the host
        # would wait for all GPU work queued before it. Made on CPU runs too (where the default group is gloo
        # already), so the CPU tests run the path the GPU runs take.
        global _HOST_GROUP
        _HOST_GROUP = dist.new_group(backend="gloo", timeout=timeout)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def _store_for_this_attempt(rank: int, world: int, timeout: datetime.timedelta) -> dist.Store:
    """The rendezvous store of torchrun (MASTER_ADDR:MASTER_PORT), with a key prefix per restart attempt.

    After a failure, `torchrun --max-restarts` starts a new worker group that may meet the failed attempt's keys in
    the agent's store (seen with gloo: the new ranks dialled the dead ranks' addresses); a prefix per attempt keeps
    the attempts apart."""
    agent_hosts_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
        is_master=rank == 0 and not agent_hosts_store, timeout=timeout,
    )
    return dist.PrefixStore(attempt_prefix(), store)


def attempt_prefix() -> str:
    """The key prefix of this restart attempt in the rendezvous store."""
    return f"lavis/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"


_HOST_GROUP = None  # a gloo group for host (CPU) tensors in a distributed run; None in a single process


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_sum_host(t: torch.Tensor) -> torch.Tensor:
    """Sum a CPU tensor over ranks without waiting for the accelerator (see _HOST_GROUP)."""
    if not is_dist():
        return t
    if _HOST_GROUP is None and dist.get_backend() != "gloo":
        raise RuntimeError(f"the process group ({dist.get_backend()}) was not set up by lavis.common.dist."
                           "init_distributed, so there is no gloo group for host tensors; start the run through "
                           "init_distributed (train.py and evaluate.py do)")
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=_HOST_GROUP)
    return t


def all_gather_objects(obj) -> list:
    if not is_dist():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_dist():
        dist.barrier()


def shutdown() -> None:
    from lavis.common.watchdog import stop_watchdog  # here: the watchdog module imports this one

    stop_watchdog()
    global _HOST_GROUP
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _HOST_GROUP = None
