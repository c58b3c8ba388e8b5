"""A training step of every modality reads nothing back to the host between log points (on a GPU: no device sync
inside the step), and the log point still reports what happened, skipped non-finite steps included."""

from __future__ import annotations

import contextlib

import pytest
import torch

from lavis.common.config import load_config
from lavis.runners.runner import EpochRunner
from tests.conftest import REPO, tiny_demo_options
from tests.host_reads import HostReads

DEMO = str(REPO / "configs" / "demo" / "regionblip_tiny.yaml")


def train_options(world, out, **run) -> list[str]:
    """The demo config's training data pointed at a `tiny_world`, small batches, `run` overrides."""
    return [
        *tiny_demo_options(world),
        f"datasets.coco.image_root={world / 'images'}", f"datasets.coco.ann_root={world}",
        f"datasets.refcoco.refer_root={world}", f"datasets.refcoco.image_root={world / 'images' / 'train2014'}",
        f"datasets.objaverse.points_root={world / 'objaverse'}",
        f"datasets.objaverse.caption_file={world / 'Cap3D_automated_Objaverse.csv'}",
        f"datasets.objaverse.test_uids_file={world / 'objaverse' / 'test_uids.txt'}",
        f"datasets.scanrefer.annotation_root={world / 'scanrefer'}",
        f"datasets.scanrefer.scannet_data_root={world / 'scanrefer' / 'scannet_data'}",
        *[f"datasets.{name}.batch_size=2" for name in ("coco", "refcoco", "objaverse", "scanrefer")],
        f"run.output_dir={out}", "run.max_epoch=1", "run.ckpt_every_steps=0",
        *[f"run.{key}={value}" for key, value in run.items()],
    ]


def watch_steps(runner: EpochRunner, reads: contextlib.AbstractContextManager, modalities: list[str]) -> None:
    """Watch the runner's per-batch forward/backward and its optimizer step (not the data loading, which is host
    work anyway, nor the log point, whose reads are the point of it)."""
    forward_backward, optimizer_step = runner._forward_backward, runner._optimizer_step

    def watched_forward_backward(batch, window):
        modalities.append(batch["modality"])
        with reads:
            return forward_backward(batch, window)

    def watched_optimizer_step(step_loss, sample_ids):
        with reads:
            return optimizer_step(step_loss, sample_ids)

    runner._forward_backward, runner._optimizer_step = watched_forward_backward, watched_optimizer_step


def test_steps_of_every_modality_read_nothing_back_to_the_host(tiny_world, tmp_path):
    cfg = load_config(DEMO, train_options(tiny_world, tmp_path / "out", log_every_steps=1000))
    runner = EpochRunner(cfg)
    reads, modalities = HostReads(), []
    watch_steps(runner, reads, modalities)
    runner.train()  # one epoch
    assert set(modalities) == {"image", "image_region", "pointcloud", "pointcloud_region"}
    assert reads.found == [], reads.report()


def test_the_watch_sees_a_host_read_in_the_step(tiny_world, tmp_path, monkeypatch):
    """The watch is not blind: a loss read with .item() inside the step is reported, with where it happened."""
    cfg = load_config(DEMO, train_options(tiny_world, tmp_path / "out", log_every_steps=1000))
    runner = EpochRunner(cfg)
    train_step = runner.task.train_step

    def train_step_reading_its_loss(model, batch):
        loss, report = train_step(model, batch)
        if loss.item() > 1e9:  # the kind of check that would sync every step on a GPU
            raise AssertionError
        return loss, report

    monkeypatch.setattr(runner.task, "train_step", train_step_reading_its_loss)
    reads, modalities = HostReads(), []
    watch_steps(runner, reads, modalities)
    runner.train(stop_at_step=2)
    assert len(reads.found) == 2 * 2  # per step: Tensor.item, and the aten scalar read behind it
    assert "test_step_host_reads.py" in reads.found[0] and "train_step_reading_its_loss" in reads.found[0]


class CudaSyncIsAnError(contextlib.AbstractContextManager):
    """CUDA's own check: inside, an operation that synchronises with the device raises."""

    def __enter__(self):
        torch.cuda.set_sync_debug_mode("error")
        return self

    def __exit__(self, *exc) -> None:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])  # fp16: the GradScaler's unscale_ / update and the overflow check
def test_steps_on_cuda_never_wait_for_the_device(tiny_world, tmp_path, amp):
    cfg = load_config(DEMO, train_options(tiny_world, tmp_path / "out", log_every_steps=1000, device="cuda",
                                          amp=amp))
    runner = EpochRunner(cfg)
    modalities = []
    watch_steps(runner, CudaSyncIsAnError(), modalities)
    runner.train()
    assert set(modalities) == {"image", "image_region", "pointcloud", "pointcloud_region"}
