"""`run.compile`: torch.compile the model's repeated blocks, not the whole model ("regional" compilation).

Whole-model compilation breaks on the per-modality control flow and the LoRA adapter switching; each block, on the
other hand, is straight-line tensor code, and all blocks of one kind share one compiled graph (dynamo guards on the
block's type and attributes, not on which instance it is), so compile time is that of one block per kind and variant.

Compiled in place with `nn.Module.compile()`: the module tree, parameter names and state_dict keys do not change, so
checkpoints load either way and LoRA finds its layers by name as before.

Blocks compiled (found by type, so the encoder and Q-Former code need not know):
- the EVA ViT's blocks (timm `EvaBlock` / `EvaBlockPostNorm`) and Point-BERT's (timm ViT `Block`): frozen encoders;
- each Q-Former `Layer`, including its peft LoRA Linears. The active adapter is a plain Python attribute of each LoRA
  layer (`_active_adapter`, `_disable_adapters`) read while tracing, so dynamo guards on it: switching the adapter
  (per modality) fails the guard and picks (or compiles, once per adapter) the graph for the new one.
  tests/test_compile.py checks that compiled and eager steps give the same losses when two adapters alternate.
"""

from __future__ import annotations

import logging
from collections import Counter

import torch
from torch import nn

log = logging.getLogger("lavis.compile")

# Variants per block kind: cross-attention or not, queries-only / text-only / both, one per LoRA adapter (and none),
# train / eval, grad / no grad. Dynamo's default of 8 per code object would silently fall back to eager beyond it.
MIN_RECOMPILE_LIMIT = 64


def block_types() -> tuple[type[nn.Module], ...]:
    """The module types compiled one by one."""
    from timm.models.eva import EvaBlock, EvaBlockPostNorm
    from timm.models.vision_transformer import Block

    from lavis.models.qformer import Layer

    return (EvaBlock, EvaBlockPostNorm, Block, Layer)


def _raise_recompile_limit(minimum: int) -> None:
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    if getattr(config, name) < minimum:
        setattr(config, name, minimum)


def compile_blocks(model: nn.Module, **compile_kwargs) -> dict[str, int]:
    """Compile every block of `model` in place (see module docstring); returns the count per block type.

    Idempotent: an already compiled block is left alone. Outer modules stay eager."""
    types = block_types()
    counts: Counter[str] = Counter()
    for module in model.modules():
        if isinstance(module, types) and not is_compiled(module):
            module.compile(**compile_kwargs)
            counts[type(module).__name__] += 1
    if counts:
        _raise_recompile_limit(MIN_RECOMPILE_LIMIT)
    return dict(counts)


def is_compiled(module: nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def apply_run_compile(model: nn.Module, enabled: bool) -> nn.Module:
    """What `run.compile` does, once, after the model is built and on its device; logs what it compiled."""
    if not enabled:
        return model
    counts = compile_blocks(model)
    what = ", ".join(f"{n} x {t}" for t, n in sorted(counts.items())) or "no blocks found"
    log.info("run.compile: torch.compile per block (compiled on first use): %s", what)
    return model
