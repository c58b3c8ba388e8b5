"""The loss terms of one modality's batch (paper eq. 2): ITC, ITM, ITG, LLM (in lavis.models.llm) and REG.

Cross-rank gathering keeps the gradient of the local slice (torch.distributed.nn), and copes with ranks whose
batches differ in size (bad samples are dropped per rank)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
ITG_LABEL_SMOOTHING = 0.1  # as LAVIS's Q-Former LM head


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_batch(t: Tensor) -> tuple[Tensor, int]:
    """(concatenation over ranks along dim 0, offset of this rank's rows); gradients reach the local rows."""
    if _world() == 1:
        return t, 0
    from torch.distributed.nn.functional import all_gather

    size = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(_world())]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    longest = max(sizes)
    padded = F.pad(t, (0, 0) * (t.dim() - 1) + (0, longest - t.shape[0])) if t.shape[0] < longest else t
    parts = all_gather(padded.contiguous())
    rank = dist.get_rank()
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]), sum(sizes[:rank])


def contrastive_loss(
    query_feats: Tensor, text_feat: Tensor, temp: Tensor, label_smoothing: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """ITC between normalised query features [B, Q, E] and text [CLS] features [B, E], over the gathered batch.

    The image-text similarity is the max over queries (BLIP-2). Returns (loss, sim_i2t [B, N], sim_t2i [B, N],
    targets [B]) with N the gathered batch size and targets the positives' columns."""
    query_all, offset = gather_batch(query_feats)
    text_all, _ = gather_batch(text_feat)
    sim_i2t = torch.einsum("bqe,ne->bnq", query_feats, text_all).amax(-1) / temp
    sim_t2i = torch.einsum("be,nqe->bnq", text_feat, query_all).amax(-1) / temp
    targets = torch.arange(query_feats.shape[0], device=query_feats.device) + offset
    loss = (
        F.cross_entropy(sim_i2t, targets, label_smoothing=label_smoothing)
        + F.cross_entropy(sim_t2i, targets, label_smoothing=label_smoothing)
    ) / 2
    return loss, sim_i2t, sim_t2i, targets


@torch.no_grad()
def sample_hard_negatives(similarity: Tensor, positives: Tensor) -> Tensor:
    """One index per row, drawn from softmax(similarity) with the positive column removed (never picked).

    similarity [B, N], positives [B] column of each row's positive; needs N >= 2. A row with a non-finite
    similarity (a diverging step, a corrupt input) draws uniformly among its negatives instead of failing inside
    the forward: the step's losses are non-finite too, and the runner skips and counts it."""
    if similarity.shape[1] < 2:
        raise ValueError("hard-negative sampling needs at least 2 samples in the (gathered) batch")
    masked = similarity.float().scatter(1, positives[:, None], float("-inf"))
    weights = masked.softmax(dim=1)
    uniform = torch.ones_like(weights).scatter(1, positives[:, None], 0.0)
    finite = torch.isfinite(weights).all(dim=1, keepdim=True)  # on the device: no host read
    return torch.multinomial(torch.where(finite, weights, uniform), 1).squeeze(1)


def matching_loss(logits: Tensor, batch_size: int) -> Tensor:
    """ITM cross-entropy for logits [3B, 2] laid out as (positive pairs, negative images, negative texts)."""
    # built where the logits are: a host tensor moved there would be a blocking copy in the middle of the step
    labels = torch.zeros(3 * batch_size, dtype=torch.long, device=logits.device)
    labels[:batch_size] = 1
    return F.cross_entropy(logits, labels)


def caption_loss(logits: Tensor, decoder_ids: Tensor, decoder_mask: Tensor) -> Tensor:
    """ITG: next-token cross-entropy of the Q-Former decoder; the first token ([DEC]) is never a target."""
    labels = decoder_ids.masked_fill(decoder_mask == 0, IGNORE_INDEX)[:, 1:]
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(),
        labels.flatten(),
        ignore_index=IGNORE_INDEX,
        label_smoothing=ITG_LABEL_SMOOTHING,
    )


def regression_loss(prediction: Tensor, region_geometry: Tensor) -> Tensor:
    return F.l1_loss(prediction.float(), region_geometry.flatten(1).float())
