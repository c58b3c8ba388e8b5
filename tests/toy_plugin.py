"""A tiny model and dataset registered from outside the package (through `run.imports`), used to test the
training engine on its own: two modalities, a frozen encoder, per-modality trainable heads with dropout, and a
dataset with optional augmentation noise and optional bad samples."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import torch
from torch import nn
from torch.utils.data import Dataset

from lavis.common.registry import DATASET_BUILDERS, MODELS
from lavis.datasets.base import BadSampleError, DatasetConfig
from lavis.models.base import BaseModel, ModelOutput


class CharTokenizer:
    """Picklable text tokenizer: character codes, padded to the longest text of the batch."""

    def __call__(self, texts: list[str], modality: str) -> dict[str, torch.Tensor]:
        longest = max(len(t) for t in texts)
        ids = torch.zeros(len(texts), longest, dtype=torch.long)
        for i, t in enumerate(texts):
            ids[i, : len(t)] = torch.tensor([ord(c) % 128 for c in t], dtype=torch.long)
        return {"text_ids": ids}


@dataclass
class ToyModalityConfig:
    input_key: str = "image"
    losses: Dict[str, float] = field(default_factory=lambda: {"reg": 1.0, "len": 0.1})


@dataclass
class ToyModelConfig:
    dim: int = 8
    hidden: int = 16
    dropout: float = 0.1
    modalities: Dict[str, ToyModalityConfig] = field(default_factory=dict)
    # Failure injection for the reliability tests:
    nan_at_calls: List[int] = field(default_factory=list)  # forward calls (0-based) whose loss is NaN
    fail_at_call: int = -1  # this forward call raises ...
    fail_rank: int = -1  # ... on this rank only (-1: every rank) ...
    fail_marker: str = ""  # ... and only while this file does not exist (it is created when failing)


@MODELS.register("toy_multimodal")
class ToyMultimodal(BaseModel):
    Config = ToyModelConfig
    DEFAULT_CONFIGS = {"base": str(Path(__file__).with_name("toy_model_defaults.yaml"))}

    def __init__(self, cfg: ToyModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = nn.Linear(cfg.dim, cfg.hidden)
        self.encoder.requires_grad_(False)  # frozen, like the real encoders
        self.heads = nn.ModuleDict({m: nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, cfg.dim))
                                    for m in cfg.modalities})
        self.length_heads = nn.ModuleDict({m: nn.Linear(cfg.hidden, 1) for m in cfg.modalities})
        self.text_tokenizer = CharTokenizer()
        self.calls = 0

    @classmethod
    def from_config(cls, cfg: ToyModelConfig) -> ToyMultimodal:
        return cls(cfg)

    def loss_weights(self, modality: str) -> dict[str, float]:
        return {k: w for k, w in self.cfg.modalities[modality].losses.items() if w > 0}

    def _inject_failures(self) -> float:
        call, self.calls = self.calls, self.calls + 1
        rank = int(os.environ.get("RANK", "0"))
        if call == self.cfg.fail_at_call and self.cfg.fail_rank in (-1, rank):
            marker = Path(self.cfg.fail_marker) if self.cfg.fail_marker else None
            if marker is None or not marker.exists():
                if marker is not None:
                    marker.touch()
                raise RuntimeError(f"injected failure at forward call {call} on rank {rank}")
        return float("nan") if call in self.cfg.nan_at_calls else 0.0

    def forward(self, batch) -> ModelOutput:
        poison = self._inject_failures()
        m = batch["modality"]
        features = torch.tanh(self.encoder(batch[self.cfg.modalities[m].input_key]))
        prediction = self.heads[m](features)
        length = (batch["text_ids"] > 0).sum(1).float()
        return ModelOutput(losses={
            "reg": (prediction - batch["region_geometry"]).abs().mean() + poison,
            "len": ((self.length_heads[m](features).squeeze(1) - length / 10) ** 2).mean(),
        })


    @torch.no_grad()
    def generate(self, batch) -> list[str]:
        """A "caption" whose length is the predicted text length: enough to score with the caption metrics."""
        m = batch["modality"]
        features = torch.tanh(self.encoder(batch[self.cfg.modalities[m].input_key]))
        lengths = (self.length_heads[m](features).squeeze(1) * 10).round().clamp(1, 12).long().tolist()
        return [" ".join(["a"] * n) for n in lengths]


@dataclass
class ToyVectorsConfig(DatasetConfig):
    size: int = 32
    dim: int = 8
    input_key: str = "image"
    data_seed: int = 0
    aug_noise: float = 0.0
    bad_every: int = 0  # every k-th sample is unreadable (0: none)
    data_root: str = ""  # optional; exists only to test path checks


class ToyVectors(Dataset):
    def __init__(self, cfg: ToyVectorsConfig, split: str):
        gen = torch.Generator().manual_seed(cfg.data_seed + (0 if split == "train" else 1))
        self.cfg = cfg
        self.x = torch.randn(cfg.size, cfg.dim, generator=gen)
        mix = torch.randn(cfg.dim, cfg.dim, generator=gen) / cfg.dim**0.5
        self.y = torch.tanh(self.x @ mix)

    def __len__(self) -> int:
        return self.cfg.size

    def __getitem__(self, i: int):
        if self.cfg.bad_every and i % self.cfg.bad_every == 0:
            raise BadSampleError(f"toy-{i}", "unreadable on purpose")
        x = self.x[i] + self.cfg.aug_noise * torch.randn(self.cfg.dim)  # augmentation uses the global RNG
        return {"sample_id": f"toy-{i}", self.cfg.input_key: x, "region_geometry": self.y[i],
                "text_input": "a" * (1 + i % 7), "image_id": i}


@DATASET_BUILDERS.register("toy_vectors")
class ToyVectorsBuilder:
    Config = ToyVectorsConfig
    DEFAULT_CONFIG = None

    def __init__(self, cfg: ToyVectorsConfig):
        self.cfg = cfg

    def check_paths(self) -> list[str]:
        if self.cfg.data_root and not Path(self.cfg.data_root).is_dir():
            return [f"data_root = {self.cfg.data_root} does not exist; it should hold the toy vectors"]
        return []

    def build(self, split: str) -> Dataset:
        return ToyVectors(self.cfg, split)
