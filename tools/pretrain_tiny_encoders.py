"""Pretrain the demo's tiny frozen encoders CLIP-style on the synthetic world, and save them in the formats that
`model.encoders.*.params.checkpoint_path` loads:

    python tools/pretrain_tiny_encoders.py --cfg-path configs/demo/regionblip_tiny.yaml --out data/demo/assets \
        [--steps 120] [--batch-size 32]

RegionBLIP's encoders are contrastively pretrained (EVA-CLIP's ViT; ULIP's Point-BERT) and frozen; a randomly
initialised tiny encoder is a poor stand-in, since nothing it outputs is aligned with text. This trains, for each
encoder of the config that a dataset with a holistic (region-free) modality feeds, that encoder plus a small
throw-away text encoder with the symmetric InfoNCE loss of CLIP on the dataset's train split, read through the real
dataset classes and processors (one processed view per sample). The encoders' params in the YAML must equal those
of the configs that load the files (configs/demo/*.yaml share them). Written files:

  <out>/eva_vit_tiny.pth     {"model": {visual_encoder.*, ln_vision.*}}  (the LAVIS BLIP-2 layout of the ViT)
  <out>/pointbert_tiny.pth   {"state_dict": {point_encoder.*}}           (the ULIP layout of Point-BERT)
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lavis  # noqa: F401  (registers the built-in models and datasets)
from lavis.common.config import add_debug_flag, load_config, report_config_errors
from lavis.common.registry import ENCODERS
from lavis.models.pointbert.encoder import PointBert
from lavis.models.pointbert.sampling import group_points
from lavis.models.qformer import build_qformer_tokenizer
from lavis.models.regionblip.config import encoder_configs

# encoder registry name -> (file name, wrapper key, key prefix) of the format its loader accepts
FORMATS = {
    "eva_vit": ("eva_vit_tiny.pth", "model", ""),  # keys are visual_encoder.* and ln_vision.* already
    "pointbert": ("pointbert_tiny.pth", "state_dict", "point_encoder."),
}


class TextTower(nn.Module):
    """Token embeddings + a small transformer + mean pooling: only the encoder's side is kept."""

    def __init__(self, vocab_size: int, width: int, max_len: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.pos = nn.Parameter(torch.randn(1, max_len, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, 2)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        x = self.blocks(self.embed(ids) + self.pos[:, : ids.shape[1]], src_key_padding_mask=mask == 0)
        return (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


def pointbert_from_groups(encoder: nn.Module, groups: Tensor, centres: Tensor) -> Tensor:
    """Point-BERT's forward after its (fixed, precomputed) grouping: farthest-point sampling dominates its cost."""
    tokens = encoder.reduce_dim(encoder.encoder(groups))
    batch = tokens.shape[0]
    x = torch.cat([encoder.cls_token.expand(batch, -1, -1), tokens], dim=1)
    pos = torch.cat([encoder.cls_pos.expand(batch, -1, -1), encoder.pos_embed(centres)], dim=1)
    return encoder.norm(encoder.blocks(x, pos))


class Tower(nn.Module):
    """The encoder under training with a projection of its mean token (CLS included)."""

    def __init__(self, encoder: nn.Module, dim: int):
        super().__init__()
        self.encoder = encoder
        self.proj = nn.Linear(encoder.num_features, dim)

    def forward(self, inputs: tuple[Tensor, ...]) -> Tensor:
        if isinstance(self.encoder, PointBert):
            return self.proj(pointbert_from_groups(self.encoder, *inputs).mean(1))
        return self.proj(self.encoder(*inputs).mean(1))


def load_pairs(cfg, dataset: str, encoder: nn.Module, input_key: str) -> tuple[tuple[Tensor, ...], list[str]]:
    """Every train item of a dataset (one processed view each), as the encoder's input, and its caption."""
    builder = cfg.builder_of(dataset)(cfg.datasets[dataset])
    data = builder.build(cfg.datasets[dataset].train_split)
    items = [data[i] for i in range(len(data))]
    inputs = torch.stack([it[input_key] for it in items])
    if isinstance(encoder, PointBert):
        return group_points(inputs, encoder.num_groups, encoder.group_size), [it["text_input"] for it in items]
    return (inputs,), [it["text_input"] for it in items]


def pretrain(encoder: nn.Module, inputs: tuple[Tensor, ...], texts: list[str], tokenizer, steps: int, batch_size: int,
             seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    tokens = tokenizer(texts, padding="longest", return_tensors="pt")
    ids, mask = tokens.input_ids, tokens.attention_mask
    dim = 64
    image_tower, text_tower = Tower(encoder, dim), TextTower(len(tokenizer), dim, ids.shape[1])
    logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = [*image_tower.parameters(), *text_tower.parameters(), logit_scale]
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    image_tower.train()
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        pick = torch.randperm(len(texts), generator=gen)[:batch_size]
        a = F.normalize(image_tower(tuple(x[pick] for x in inputs)), dim=-1)
        b = F.normalize(text_tower(ids[pick], mask[pick]), dim=-1)
        # identical captions in a batch are positives of each other (the synthetic vocabulary repeats)
        same = torch.tensor([[texts[i] == texts[j] for j in pick.tolist()] for i in pick.tolist()], dtype=torch.float)
        targets = same / same.sum(1, keepdim=True)
        logits = logit_scale.exp().clamp(max=100) * a @ b.T
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 25 == 0 or step + 1 == steps:
            print(f"  step {step + 1}/{steps}  contrastive loss {loss.item():.3f}", flush=True)
    return float(loss.detach())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg-path", required=True, help="a demo run YAML: its encoders, datasets and tokenizer")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--options", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="key=value overrides, as for train.py (repeatable)")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    cfg = load_config(args.cfg_path, args.options)
    model = cfg.model
    args.out.mkdir(parents=True, exist_ok=True)
    enc_cfgs = encoder_configs(model)
    tokenizer = build_qformer_tokenizer(next(iter(model.qformers.values())).config.tokenizer_path)
    done = set()
    for name, ds in cfg.datasets.items():
        modality = model.modalities[ds.modality]
        if modality.region is not None or modality.encoder in done or ds.train_split is None:
            continue
        key, entry = modality.encoder, model.encoders[modality.encoder]
        torch.manual_seed(args.seed)
        enc_cfg = enc_cfgs[key]
        enc_cfg.checkpoint_path = None  # the file this run writes
        encoder = ENCODERS.get(entry.name).from_config(enc_cfg)
        start = time.time()
        inputs, texts = load_pairs(cfg, name, encoder, entry.input_key)
        print(f"encoder {key} ({entry.name}) on {name}: {len(texts)} pairs, {args.steps} steps", flush=True)
        final = pretrain(encoder, inputs, texts, tokenizer, args.steps, args.batch_size, args.seed)
        file_name, wrapper, prefix = FORMATS[entry.name]
        state = {prefix + k: v for k, v in encoder.state_dict().items()}
        torch.save({wrapper: state}, args.out / file_name)
        print(f"  wrote {args.out / file_name} (final loss {final:.3f}, {time.time() - start:.0f} s)", flush=True)
        done.add(key)


if __name__ == "__main__":
    report_config_errors(main)  # a config error: one message, exit status 2 (--debug: the traceback)
