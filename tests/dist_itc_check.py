"""Run under torchrun (2 ranks, gloo) by tests/models/test_itc_distributed.py: the cross-rank ITC of
lavis.models.regionblip.losses against a single-process reference on the same global batch.

Every rank builds the same global batch and takes its own rows (sizes per rank from SPLITS, unequal ones too).
Checked per split, asserted here (a failure exits non-zero) and written to <out>/itc_rank<r>.json for the test:
  loss      the rank's loss == the reference per-row losses of the whole batch, averaged over this rank's rows
  features  d(rank loss)/d(local features), as it arrives through the all_gather's backward, == the single-process
            gradient of the sum over ranks of the rank losses, at this rank's rows
  params    after the runner's sync_gradients (sum over ranks / world size), parameter gradients == the
            single-process gradient of mean over ranks of the rank losses; with equal sizes that is the plain ITC
            of the whole batch, with unequal sizes rows of the smaller rank weigh more (as under DDP)
  negatives hard negatives drawn from the gathered similarities never pick the positive, do reach the other
            rank's rows, and the check would catch positives indexed without the rank offset
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from lavis.models.regionblip import losses as L
from lavis.runners.runner import sync_gradients

SPLITS = {"equal": (3, 3), "unequal": (3, 2)}
NUM_QUERIES, IN_DIM, EMBED_DIM = 4, 6, 8
LABEL_SMOOTHING = 0.1
DRAWS = 400


def global_inputs(total: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(total, NUM_QUERIES, IN_DIM, generator=gen), torch.randn(total, IN_DIM, generator=gen)


def make_params(seed: int = 1) -> dict[str, torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "query_proj": torch.nn.Parameter(torch.randn(IN_DIM, EMBED_DIM, generator=gen)),
        "text_proj": torch.nn.Parameter(torch.randn(IN_DIM, EMBED_DIM, generator=gen)),
        "temp": torch.nn.Parameter(torch.tensor(0.2)),
    }


def features(query_in, text_in, params) -> tuple[torch.Tensor, torch.Tensor]:
    return (F.normalize(query_in @ params["query_proj"], dim=-1), F.normalize(text_in @ params["text_proj"], dim=-1))


def reference_row_losses(query_feats, text_feat, temp, label_smoothing: float) -> torch.Tensor:
    """BLIP-2's ITC written out on the whole batch in one process: per-row (i2t + t2i) / 2, no reduction."""
    sim = torch.einsum("iqe,te->itq", query_feats, text_feat).amax(-1) / temp  # [image i, text t]
    targets = torch.arange(sim.shape[0])
    i2t = F.cross_entropy(sim, targets, label_smoothing=label_smoothing, reduction="none")
    t2i = F.cross_entropy(sim.t(), targets, label_smoothing=label_smoothing, reduction="none")
    return (i2t + t2i) / 2


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> float:
    err = (a - b).abs().max().item()
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), f"rank {dist.get_rank()}: {what} differs by {err}"
    return err


def check_split(name: str, sizes: tuple[int, ...]) -> dict:
    rank, world = dist.get_rank(), dist.get_world_size()
    start, total = sum(sizes[:rank]), sum(sizes)
    rows = slice(start, start + sizes[rank])
    query_in, text_in = global_inputs(total)
    report: dict = {"sizes": list(sizes), "offset": start}

    # single-process reference on the whole batch: one copy of the parameters, every row, each row's loss kept
    owner = torch.repeat_interleave(torch.arange(world), torch.tensor(sizes))
    # the sum over ranks of the rank losses reaches the features; its mean over ranks the synced parameters
    per_rank = reference_grads(query_in, text_in, lambda rows_loss: sum(rows_loss[owner == r].mean()
                                                                        for r in range(world)))
    plain = reference_grads(query_in, text_in, lambda rows_loss: rows_loss.mean())  # the ITC of the whole batch

    # distributed: this rank's rows only
    params = make_params()
    query_feats, text_feat = features(query_in[rows], text_in[rows], params)
    query_feats.retain_grad()
    text_feat.retain_grad()
    loss, sim_i2t, sim_t2i, targets = L.contrastive_loss(query_feats, text_feat, params["temp"], LABEL_SMOOTHING)
    loss.backward()

    # (i) the loss, and the positives' columns in the gathered batch
    report["loss_err"] = _close(loss.detach(), per_rank["rows_loss"][rows].mean(), f"{name}: loss")
    assert targets.tolist() == list(range(start, start + sizes[rank])), f"{name}: targets {targets.tolist()}"
    # (ii) feature gradients through all_gather's backward, then parameter gradients after the runner's sync
    report["query_grad_err"] = _close(query_feats.grad, per_rank["query"][rows], f"{name}: query feature grad")
    report["text_grad_err"] = _close(text_feat.grad, per_rank["text"][rows], f"{name}: text feature grad")
    sync_gradients(list(params.values()), world)
    report["param_grad_err"] = {k: _close(p.grad, per_rank[k] / world, f"{name}: synced {k} grad")
                                for k, p in params.items()}
    report["synced_equals_whole_batch_itc"] = all(
        torch.allclose(p.grad, plain[k], rtol=1e-5, atol=1e-6) for k, p in params.items()
    )
    if len(set(sizes)) == 1:  # equal sizes: the features get world x the whole-batch gradient, the sync divides
        _close(query_feats.grad, world * plain["query"][rows], f"{name}: query grad vs world x whole batch")
        _close(text_feat.grad, world * plain["text"][rows], f"{name}: text grad vs world x whole batch")

    # (iii) hard negatives over the gathered batch
    report.update(check_negatives(name, sim_i2t.detach(), sim_t2i.detach(), targets, start, sizes))
    return report


def reference_grads(query_in, text_in, objective) -> dict[str, torch.Tensor]:
    """Single-process gradients of objective(per-row losses) w.r.t. the features and the parameters."""
    params = make_params()
    query_feats, text_feat = features(query_in, text_in, params)
    query_feats.retain_grad()
    text_feat.retain_grad()
    rows_loss = reference_row_losses(query_feats, text_feat, params["temp"], LABEL_SMOOTHING)
    objective(rows_loss).backward()
    grads = {k: p.grad for k, p in params.items()}
    return {"query": query_feats.grad, "text": text_feat.grad, "rows_loss": rows_loss.detach(), **grads}


def check_negatives(name: str, sim_i2t, sim_t2i, targets, start: int, sizes) -> dict:
    rank = dist.get_rank()
    own = set(range(start, start + sizes[rank]))
    # make the positives dominate, so that a wrongly masked column would be drawn almost always
    boosted = [s.scatter_add(1, targets[:, None], torch.full_like(targets[:, None], 8.0, dtype=s.dtype))
               for s in (sim_i2t, sim_t2i)]
    picked_positive, other_rank, wrong_mask_hits = 0, 0, 0
    local_positions = targets - start  # the bug the offset prevents: positives indexed as if the batch were local
    for draw in range(DRAWS):
        torch.manual_seed(1000 * rank + draw)
        for sim in boosted:
            negatives = L.sample_hard_negatives(sim, targets)
            picked_positive += int((negatives == targets).sum())
            other_rank += sum(int(n) not in own for n in negatives.tolist())
            wrong = L.sample_hard_negatives(sim, local_positions)
            wrong_mask_hits += int((wrong == targets).sum())
    assert picked_positive == 0, f"rank {rank} {name}: the positive was drawn {picked_positive} times"
    assert other_rank > 0, f"rank {rank} {name}: negatives never came from another rank"
    if start > 0:
        assert wrong_mask_hits > 0, f"rank {rank} {name}: the check cannot see a missing rank offset"
    return {"picked_positive": picked_positive, "negatives_from_other_ranks": other_rank,
            "positive_hits_without_offset": wrong_mask_hits}


def check_gather_ids(sizes) -> None:
    rank = dist.get_rank()
    start = sum(sizes[:rank])
    ids = torch.arange(sum(sizes) * 5).view(-1, 5)
    gathered, offset = L.gather_batch(ids[start : start + sizes[rank]])
    assert offset == start and torch.equal(gathered, ids), f"rank {rank}: gather_batch({sizes}) lost rows"


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    assert dist.get_world_size() == 2, "run with --nproc_per_node=2"
    torch.set_default_dtype(torch.float64)  # the comparisons are about the algebra, not float32 rounding
    results = {}
    for name, sizes in SPLITS.items():
        check_gather_ids(sizes)
        results[name] = check_split(name, sizes)
    Path(out_dir, f"itc_rank{dist.get_rank()}.json").write_text(json.dumps(results, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
