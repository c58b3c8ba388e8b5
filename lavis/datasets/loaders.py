"""From datasets to single-modality batches: sharding, per-sample seeding, collation, and the epoch plan.

Reproducibility contract: the order of samples depends only on (seed, epoch, dataset); the augmentation of a
sample depends only on (seed, epoch, position), whatever the number of workers. That is what lets a resumed run
see exactly the batches the uninterrupted run would have seen.

Two kinds of training dataset. A map-style one gets the sampler here (ShardedEpochSampler): exact shuffling, an
equal share per rank, resume by index. A streaming one (an IterableDataset, e.g. region_shards with
`access: stream`) shards, shuffles and seeds itself and declares, by `len()`, how many items this rank yields per
epoch (the same number on every rank) and takes `set_epoch(epoch)`; see `StreamingTrainStream`.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from lavis.common.preemption import ignore_stop_signals
from lavis.datasets.base import BadSampleError, SkippedSample

log = logging.getLogger(__name__)


def derive_seed(*parts: Any) -> int:
    """A stable 63-bit seed from any values (Python's hash() is salted per process, so it is not used)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class ShardedEpochSampler(Sampler):
    """Shuffles `repeat` copies of the dataset per epoch and gives each rank an equal share.

    Like DistributedSampler, the index list is padded by wrapping around so every rank gets the same number of
    samples (and therefore batches): ranks must agree on the step count or a collective would hang. Yields
    (dataset index, sample seed); `skip` drops the first samples of the epoch when resuming.
    """

    def __init__(self, size: int, *, repeat: int, rank: int, world_size: int, seed: int, name: str, shuffle: bool):
        if size == 0:
            raise ValueError(f"dataset '{name}' is empty; check its paths and split")
        self.size, self.repeat, self.rank, self.world = size, repeat, rank, world_size
        self.seed, self.name, self.shuffle = seed, name, shuffle
        self.epoch, self.skip = 0, 0

    @property
    def per_rank(self) -> int:
        return -(-self.size * self.repeat // self.world)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return self.per_rank - self.skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        total = self.size * self.repeat
        if self.shuffle:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, self.name, self.epoch))
            order = torch.randperm(total, generator=gen)
        else:
            order = torch.arange(total)
        padded = torch.cat([order, order[: self.per_rank * self.world - total]]) % self.size
        mine = padded[self.rank :: self.world].tolist()
        for position in range(self.skip, len(mine)):
            yield mine[position], derive_seed(self.seed, self.name, self.epoch, self.rank, position)


class SeededItems(Dataset):
    """Seeds the global RNGs per sample, then reads it; a bad sample becomes a `SkippedSample` for the collate."""

    def __init__(self, dataset: Dataset, name: str):
        self.dataset, self.name = dataset, name

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            return self.dataset[index]
        except BadSampleError as e:
            return SkippedSample(self.name, e.sample_id, e.reason)


@dataclass
class Collator:
    """Stacks items into one batch of one modality and tokenizes its text with the model's tokenizer.

    The batch keeps `skipped`: the (dataset, sample id, reason) of bad samples dropped from it, so the runner can
    count and report them (workers live in other processes; this is how the report reaches the main one).
    Regions: every sample's `region_geometry` rows (and `region_mask`) are concatenated, sample after sample, into
    [R, ...] with `region_sample` [R] (each region's sample) and `region_counts` (a list: per sample). `instruction`
    is each item's own, or the dataset's template (`instruction`) for items without one.
    `pin_memory` stacks the tensors straight into page-locked memory (for a collate in the main process, where no
    DataLoader pin thread follows it; needs CUDA).
    """

    modality: str
    text_tokenizer: Callable[..., dict[str, torch.Tensor]] | None
    pin_memory: bool = False
    instruction: str | None = None  # the template of items without their own `instruction`

    def __call__(self, items: list) -> dict[str, Any]:
        good = [it for it in items if not isinstance(it, SkippedSample)]
        batch: dict[str, Any] = {
            "modality": self.modality,
            "skipped": [it for it in items if isinstance(it, SkippedSample)],
            "sample_ids": [str(it["sample_id"]) for it in good],
        }
        for key in good[0].keys() if good else ():
            if key in ("sample_id", "region_geometry", "region_mask", "instruction"):
                continue
            values = [it[key] for it in good]
            batch[key] = self._stack(values) if isinstance(values[0], torch.Tensor) else values
        if good and "region_geometry" in good[0]:
            self._regions(good, batch)
        if good and (self.instruction is not None or "instruction" in good[0]):
            batch["instruction"] = [it.get("instruction", self.instruction) for it in good]
        if good and self.text_tokenizer is not None and "text_input" in batch:
            # a plugin's tokenizer may take (texts, modality) only: instructions come with instruction datasets or
            # a model that names templates (RegionBLIP's instruction_template)
            extra = (batch["instruction"], batch.get("region_counts")) if "instruction" in batch else ()
            tokens = self.text_tokenizer(batch["text_input"], self.modality, *extra)
            batch.update({k: v.pin_memory() if self.pin_memory and isinstance(v, torch.Tensor) else v
                          for k, v in tokens.items()})
        return batch

    def _regions(self, items: list, batch: dict[str, Any]) -> None:
        geometry = [it["region_geometry"] for it in items]
        geometry = [g.unsqueeze(0) if g.dim() == 1 else g for g in geometry]  # [D]: one region
        counts = [len(g) for g in geometry]
        batch["region_counts"] = counts
        batch["region_geometry"] = self._cat(geometry)
        batch["region_sample"] = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
        if "region_mask" in items[0]:
            batch["region_mask"] = self._cat([it["region_mask"] for it in items])

    def _stack(self, values: list[torch.Tensor]) -> torch.Tensor:
        if not self.pin_memory:
            return torch.stack(values)
        # the stack's one copy lands in pinned memory (from the CUDA host allocator's cache), not a second copy
        out = torch.empty((len(values), *values[0].shape), dtype=values[0].dtype, pin_memory=True)
        return torch.stack(values, out=out)

    def _cat(self, values: list[torch.Tensor]) -> torch.Tensor:
        if not self.pin_memory:
            return torch.cat(values)
        out = torch.empty((sum(len(v) for v in values), *values[0].shape[1:]), dtype=values[0].dtype,
                          pin_memory=True)
        return torch.cat(values, out=out)


def dataset_instruction(model: Any, ds_cfg: Any) -> str | None:
    """The instruction of a dataset's items that bring none: the model's template for the dataset's modality and
    task prompt (RegionBLIP's `instruction_template`), or None for a model without instructions."""
    template = getattr(model, "instruction_template", None)
    return template(ds_cfg.modality, getattr(ds_cfg, "task_prompt", None)) if template is not None else None


def batch_size_of(batch: dict[str, Any]) -> int:
    return len(batch["sample_ids"])


def move_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@dataclass
class TrainStream:
    """One dataset's loader for training, with its sampler so the epoch and resume offset can be set."""

    name: str
    modality: str
    loader: DataLoader
    sampler: ShardedEpochSampler
    batch_size: int

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.sampler.per_rank // self.batch_size)

    def start_epoch(self, epoch: int, skip_batches: int) -> Iterator[dict[str, Any]]:
        self.sampler.set_epoch(epoch, skip=skip_batches * self.batch_size)
        return iter(self.loader)


def _items(items: list) -> list:
    """The loader's collate for a stream: items stay items (batches are cut in the main process)."""
    return items


@dataclass
class StreamingTrainStream:
    """A streaming dataset's loader for training, with the interface of `TrainStream`.

    Loader workers yield single items; the main process cuts them into batches of `batch_size` (the last one
    shorter), so an epoch is exactly ceil(len(dataset) / batch_size) batches on every rank, however the dataset
    splits its items among workers. A stream cannot seek: resuming mid-epoch calls `set_epoch` and then reads and
    drops the batches already trained on, so resume costs reading (decoding) those batches, not training them.
    """

    name: str
    modality: str
    loader: DataLoader
    dataset: IterableDataset
    batch_size: int
    items_per_epoch: int  # this rank's, declared by len(dataset)
    collate: Collator

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.items_per_epoch // self.batch_size)

    def start_epoch(self, epoch: int, skip_batches: int) -> Iterator[dict[str, Any]]:
        self.dataset.set_epoch(epoch)  # before iter(): the workers receive a copy of the dataset
        return self._batches(iter(self.loader), skip_batches)

    def _batches(self, items: Iterator[Any], skip_batches: int) -> Iterator[dict[str, Any]]:
        for index in range(self.batches_per_epoch):
            size = min(self.batch_size, self.items_per_epoch - index * self.batch_size)
            chunk = list(itertools.islice(items, size))
            if len(chunk) < size:
                raise RuntimeError(
                    f"stream '{self.name}' ended after {index * self.batch_size + len(chunk)} items, but its len() "
                    f"declares {self.items_per_epoch} per epoch on this rank"
                )
            if index >= skip_batches:
                yield self.collate(chunk)


def build_streaming_train_stream(
    name: str, dataset: IterableDataset, *, modality: str, batch_size: int, repeat: int, num_workers: int,
    text_tokenizer, pin_memory: bool = False, instruction: str | None = None,
) -> StreamingTrainStream:
    """Items from the workers, batches cut and collated in the main process. Of the map-style loader's settings,
    `pin_memory` applies to the collate (the loader's pin thread would pin single items, which the main process then
    stacks into unpinned memory), and persistent workers do not apply (see below)."""
    if repeat != 1:
        raise ValueError(f"dataset '{name}' streams (an IterableDataset): repeat must be 1, not {repeat}; the stream "
                         "decides what one epoch reads")
    if not callable(getattr(dataset, "set_epoch", None)):
        raise TypeError(f"dataset '{name}' streams but has no set_epoch(epoch): its order could not change per epoch")
    try:
        items = len(dataset)
    except TypeError:
        raise TypeError(f"dataset '{name}' streams but has no len(): it must declare how many items this rank yields "
                        "per epoch, or ranks could disagree on the number of steps") from None
    if items == 0:
        raise ValueError(f"dataset '{name}' is empty; check its paths and split")
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_items,
        worker_init_fn=ignore_stop_signals,
        # item-level prefetch: keep about two batches in flight over all workers, as batch-level loaders do
        prefetch_factor=max(2, -(-2 * batch_size // num_workers)) if num_workers else None,
        # Not persistent: a worker holds the copy of the dataset made when it started, so `set_epoch` on the main
        # process's dataset reaches only workers started after it; a new iterator per epoch restarts them.
        persistent_workers=False,
    )
    return StreamingTrainStream(name, modality, loader, dataset, batch_size, items,
                                Collator(modality, text_tokenizer, pin_memory=pin_memory, instruction=instruction))


def build_train_stream(
    name: str,
    dataset: Dataset,
    *,
    modality: str,
    batch_size: int,
    repeat: int,
    rank: int,
    world_size: int,
    seed: int,
    num_workers: int,
    text_tokenizer,
    pin_memory: bool,
    instruction: str | None = None,
) -> TrainStream | StreamingTrainStream:
    """A map-style dataset gets the epoch sampler; an IterableDataset streams (see `StreamingTrainStream`)."""
    if isinstance(dataset, IterableDataset):
        return build_streaming_train_stream(name, dataset, modality=modality, batch_size=batch_size, repeat=repeat,
                                            num_workers=num_workers, text_tokenizer=text_tokenizer,
                                            pin_memory=pin_memory, instruction=instruction)
    sampler = ShardedEpochSampler(
        len(dataset), repeat=repeat, rank=rank, world_size=world_size, seed=seed, name=name, shuffle=True
    )
    loader = DataLoader(
        SeededItems(dataset, name),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=Collator(modality, text_tokenizer, instruction=instruction),
        worker_init_fn=ignore_stop_signals,  # the main process stops on SIGTERM / Ctrl-C after a checkpoint
        pin_memory=pin_memory,
        # Workers survive epochs: the sampler runs in the main process (each new iterator re-reads its epoch and
        # offset), and augmentation is seeded per sample, so a worker's own RNG state never matters.
        persistent_workers=num_workers > 0,
        drop_last=False,
        # Its own generator: a new iterator draws the workers' base seed from it, not from the global RNG, whose
        # state (dropout) must not depend on when iterators are created (a resumed run creates them mid-epoch).
        generator=torch.Generator().manual_seed(derive_seed(seed, name, "loader")),
    )
    return TrainStream(name, modality, loader, sampler, batch_size)


def epoch_plan(streams: list[TrainStream | StreamingTrainStream], schedule: str, seed: int, epoch: int) -> list[int]:
    """The stream index of every step of one epoch; identical on every rank.

    sequential: each dataset's loader in full, in turn (the reference's semi-hybrid behaviour).
    interleaved: all batches of all datasets in a seeded random order, so each modality is visited in
    proportion to its size throughout the epoch (less forgetting of the modalities trained first).
    """
    plan = [i for i, s in enumerate(streams) for _ in range(s.batches_per_epoch)]
    if schedule == "interleaved":
        gen = torch.Generator().manual_seed(derive_seed(seed, "plan", epoch))
        plan = [plan[j] for j in torch.randperm(len(plan), generator=gen).tolist()]
    elif schedule != "sequential":
        raise ValueError(f"run.modality_schedule must be 'sequential' or 'interleaved', not '{schedule}'")
    return plan


class EvalSampler(Sampler):
    """Every sample exactly once over all ranks (rank r takes r, r + world, ...): no padding, so nothing is
    scored twice. Yields (index, seed) like the training sampler."""

    def __init__(self, size: int, *, rank: int, world_size: int, seed: int, name: str):
        self.indices = list(range(rank, size, world_size))
        self.seed, self.name = seed, name

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.indices:
            yield index, derive_seed(self.seed, self.name, "eval", index)


def build_eval_loader(name: str, dataset: Dataset, *, modality: str, batch_size: int, rank: int, world_size: int,
                      seed: int, num_workers: int, instruction: str | None = None) -> DataLoader:
    sampler = EvalSampler(len(dataset), rank=rank, world_size=world_size, seed=seed, name=name)
    return DataLoader(SeededItems(dataset, name), batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=Collator(modality, text_tokenizer=None, instruction=instruction))
