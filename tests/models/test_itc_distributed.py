"""Cross-rank ITC and hard negatives under two gloo processes (tests/dist_itc_check.py), and its single-process
reference against the loss the model uses."""

from __future__ import annotations

import json

import torch

from lavis.models.regionblip import losses as L
from tests.dist_itc_check import LABEL_SMOOTHING, features, global_inputs, make_params, reference_row_losses
from tests.test_distributed import torchrun


def test_reference_is_the_single_process_contrastive_loss():
    query_feats, text_feat = features(*global_inputs(5), make_params())
    temp = torch.tensor(0.2)
    loss, _, sim_t2i, targets = L.contrastive_loss(query_feats, text_feat, temp, LABEL_SMOOTHING)
    torch.testing.assert_close(loss, reference_row_losses(query_feats, text_feat, temp, LABEL_SMOOTHING).mean())
    assert targets.tolist() == list(range(5)) and sim_t2i.shape == (5, 5)


def test_two_ranks_equal_and_unequal_batches(tmp_path):
    result = torchrun(2, "tests/dist_itc_check.py", str(tmp_path))
    assert result.returncode == 0, result.stderr[-4000:]
    reports = [json.loads((tmp_path / f"itc_rank{r}.json").read_text()) for r in (0, 1)]
    for rank, report in enumerate(reports):
        for split in ("equal", "unequal"):
            r = report[split]
            assert r["offset"] == sum(r["sizes"][:rank])
            assert max(r["loss_err"], r["query_grad_err"], r["text_grad_err"], *r["param_grad_err"].values()) < 1e-6
            assert r["picked_positive"] == 0 and r["negatives_from_other_ranks"] > 0
            if rank == 1:  # without the rank offset the positive would be drawn: the check can see that bug
                assert r["positive_hits_without_offset"] > 0
        # equal halves: averaging the synced gradients reproduces the whole-batch ITC gradient exactly;
        # 3 vs 2 rows: each rank's mean weighs its rows by 1 / (world x its size), so it does not
        assert report["equal"]["synced_equals_whole_batch_itc"] is True
        assert report["unequal"]["synced_equals_whole_batch_itc"] is False
