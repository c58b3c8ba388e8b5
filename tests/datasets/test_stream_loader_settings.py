"""The streaming loader takes the map-style loader's pin_memory (applied where its batches are made: the collate in
the main process), and keeps a new epoch's set_epoch visible to its workers (no persistent workers)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import IterableDataset

from lavis.datasets.loaders import Collator, build_train_stream

ITEMS, BATCH = 5, 2


class _Epochs(IterableDataset):
    """Yields items tagged with the epoch it was told, so a stale worker copy would show."""

    def __init__(self):
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return ITEMS

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for i in range(worker, ITEMS, workers):
            yield {"x": torch.full((3,), float(self.epoch)), "text_input": f"item {i}", "sample_id": i}


def _stream(pin_memory: bool, workers: int = 0):
    return build_train_stream("toy", _Epochs(), modality="image", batch_size=BATCH, repeat=1, rank=0, world_size=1,
                              seed=0, num_workers=workers, text_tokenizer=None, pin_memory=pin_memory)


@pytest.mark.parametrize("pin_memory", [False, True])
def test_the_stream_collates_with_the_loaders_pin_memory(pin_memory):
    stream = _stream(pin_memory)
    assert stream.collate.pin_memory is pin_memory
    assert stream.loader.persistent_workers is False


def test_workers_see_each_epoch():
    stream = _stream(pin_memory=False, workers=2)
    for epoch in (0, 1, 2):
        xs = torch.cat([batch["x"] for batch in stream.start_epoch(epoch, 0)])
        assert xs.numel() == 3 * ITEMS and bool((xs == epoch).all()), epoch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pinned_collate_equals_the_plain_one():
    items = [{"x": torch.randn(4, 3), "text_input": f"t{i}", "sample_id": i} for i in range(3)]
    plain = Collator("image", None)(items)
    pinned = Collator("image", None, pin_memory=True)(items)
    assert pinned["x"].is_pinned() and not plain["x"].is_pinned()
    torch.testing.assert_close(pinned["x"], plain["x"], rtol=0, atol=0)
