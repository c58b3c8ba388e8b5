"""SkipLedger, the device-side record of skipped optimizer steps: which steps are skipped, how runs of them are
counted (fp16 overflows neither extend nor break a run), and that the host sees them only when it reads."""

from __future__ import annotations

import torch

from lavis.runners.skipped_steps import SkipLedger

GOOD, LOSS_BAD, GRADS_BAD = (False, False), (True, True), (False, True)


def record_all(ledger: SkipLedger, steps: list[tuple[bool, bool]], scale: float | None = None) -> list[float]:
    flags = []
    for step, (loss_bad, grads_bad) in enumerate(steps):
        flag = ledger.record(step, torch.tensor(loss_bad), torch.tensor(grads_bad),
                             None if scale is None else torch.tensor(scale), [f"s{step}"])
        flags.append(float(flag))
    return flags


def test_skips_and_runs_without_loss_scaling():
    ledger = SkipLedger(torch.device("cpu"))
    flags = record_all(ledger, [GOOD, LOSS_BAD, GRADS_BAD, GOOD, GRADS_BAD])
    assert flags == [0.0, 1.0, 1.0, 0.0, 1.0]  # what the optimizer receives as found_inf
    skipped = ledger.read()
    assert [(s.step, s.in_row, s.overflow, s.sample_ids) for s in skipped] == [
        (1, 1, False, ["s1"]), (2, 2, False, ["s2"]), (4, 1, False, ["s4"])]
    assert ledger.read() == []  # each step is reported once
    record_all(ledger, [GRADS_BAD])  # the run of step 4 goes on across reads
    assert [s.in_row for s in ledger.read()] == [2]


def test_fp16_overflows_at_a_scale_above_one_neither_extend_nor_break_a_run():
    ledger = SkipLedger(torch.device("cpu"))
    record_all(ledger, [LOSS_BAD], scale=1024.0)  # a non-finite loss is divergence whatever the scale
    record_all(ledger, [GRADS_BAD, GRADS_BAD], scale=1024.0)  # overflows: the scaler searching for its scale
    record_all(ledger, [LOSS_BAD], scale=512.0)
    record_all(ledger, [GRADS_BAD], scale=1.0)  # at scale 1 an overflow is divergence too
    skipped = ledger.read()
    assert [(s.overflow, s.in_row, s.scale) for s in skipped] == [
        (False, 1, 1024.0), (True, 1, 1024.0), (True, 1, 1024.0), (False, 2, 512.0), (False, 3, 1.0)]


def test_the_run_length_stays_a_device_tensor_until_read():
    ledger = SkipLedger(torch.device("cpu"))
    record_all(ledger, [LOSS_BAD] * 3)
    assert isinstance(ledger.in_row, torch.Tensor) and ledger.in_row.item() == 3  # kept on the device
    assert len(ledger.read()) == 3
