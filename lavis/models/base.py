"""The contract between a model and the rest of the framework (runner, tasks, collate, checkpoints).

A registered model class has
    Config            a dataclass; YAML fills it once (lavis.common.config), defaults live only there
    DEFAULT_CONFIGS   {model_type: path of a YAML under lavis/configs/} merged under the user's `model:` block
    from_config(cfg)  builds the model, loads the weights the config names, freezes what is frozen
and its instances provide
    forward(batch) -> ModelOutput          batch from `lavis.datasets.collate`, one modality per batch
    loss_weights(modality) -> {term: w}    the task sums w * losses[term]
    text_tokenizer                         picklable callable (texts, modality) -> {name: Tensor}; the collate
                                           function calls it so that no string is tokenized inside forward
    generate(batch, **options) -> list[str]
Checkpoints hold only parameters with requires_grad (see `trainable_state_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Optional

import torch
from torch import nn

from lavis.datasets.base import ItemKeys


@dataclass(frozen=True)
class FrozenPart:
    """A part that does not train and where its weights come from: a run refuses one that loads none unless a
    setting allows random weights for it."""

    key: str  # e.g. model.encoders.vision
    weights_key: Optional[str]  # the config key naming the file it loads; None: it loads none
    random_allowed_by: Optional[str]  # the key whose setting allows random weights for it; None: nothing does
    fix: str  # what to set, e.g. "set model.encoders.vision.params.checkpoint_path"


@dataclass
class ModelOutput:
    """Unweighted loss terms by name (e.g. itc, itm, itg, llm, reg) and optional tensors for inspection."""

    losses: dict[str, torch.Tensor]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class BaseModel(nn.Module):
    Config: ClassVar[type]
    DEFAULT_CONFIGS: ClassVar[dict[str, str]] = {}
    text_tokenizer: Callable[[list[str], str], dict[str, torch.Tensor]]

    @classmethod
    def from_config(cls, cfg) -> BaseModel:
        raise NotImplementedError(f"{cls.__name__} must implement from_config")

    # ---- what the config can tell before anything is built (lavis/common/config.py, lavis/common/preflight.py) ----
    @classmethod
    def check_config(cls, cfg) -> None:
        """Raise ConfigError (with `key` set) for a cross-reference the config gets wrong; reads no file."""

    @classmethod
    def modality_inputs(cls, cfg) -> dict[str, ItemKeys]:
        """The item keys each modality reads, checked against what its datasets yield ({}: not declared)."""
        return {}

    @classmethod
    def frozen_parts(cls, cfg) -> list[FrozenPart]:
        """The frozen parts and where their weights come from; one without weights must be declared random."""
        return []

    def loss_weights(self, modality: str) -> dict[str, float]:
        raise NotImplementedError(f"{type(self).__name__} must implement loss_weights")

    def checkpoint_mismatch_hint(self, missing: list[str], unexpected: list[str]) -> str:
        """What a model knows about why a checkpoint's tensors differ from its trainable ones ('' for nothing)."""
        return ""

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load what `trainable_state_dict` wrote; any missing, extra or mis-shaped tensor is an error."""
        own = dict(self.named_parameters())
        expected = {name for name, p in own.items() if p.requires_grad}
        missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
        if missing or unexpected:
            hint = self.checkpoint_mismatch_hint(missing, unexpected)
            raise KeyError(
                f"trainable tensors differ from the checkpoint: missing {missing[:10]}, unexpected {unexpected[:10]}"
                + (f". {hint}" if hint else "")
            )
        with torch.no_grad():
            for name, value in state.items():
                if own[name].shape != value.shape:
                    raise ValueError(
                        f"{name}: checkpoint shape {tuple(value.shape)} != model shape {tuple(own[name].shape)}"
                    )
                own[name].copy_(value)
