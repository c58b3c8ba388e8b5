"""LoRA as a transform over a model: several named adapters (one per modality) in one module, built on peft.

`add_lora_adapters` wraps every targeted Linear in peft's `lora.Linear`, which holds one (A, B) pair per adapter name
(parameters `...lora_A.<name>.weight`, `...lora_B.<name>.weight`). B starts at zero, so a fresh adapter leaves the
outputs unchanged. Base weights are frozen; every adapter tensor stays trainable, and the optimizer may hold them all:
only the active adapter takes part in forward, so the others get no gradient (`.grad` stays None, AdamW skips them).

peft's own `set_adapter` also flips `requires_grad` of the inactive adapters; switching here keeps each tensor's
`requires_grad` as it was, so the set of trainable tensors (and a checkpoint of them) does not depend on which
modality ran last. Under DDP the inactive adapters are unused parameters (`find_unused_parameters=True`).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, List

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn


@dataclass
class LoraSettings:
    target_modules: List[str] = field(default_factory=lambda: ["query", "value"])
    rank: int = 8
    alpha: float = 1.0
    dropout: float = 0.0


def _lora_layers(module: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    for name, sub in module.named_modules():
        if isinstance(sub, LoraLayer):
            yield name, sub


def _targeted_linears(module: nn.Module, target: str) -> list[str]:
    """Names of the Linear layers (plain, or already LoRA-wrapped) whose name ends with `target`."""
    found = []
    for name, sub in module.named_modules():
        if name != target and not name.endswith("." + target):
            continue
        base = sub.get_base_layer() if isinstance(sub, LoraLayer) else sub
        if isinstance(base, nn.Linear) and ".lora_" not in name:
            found.append(name)
    return found


def add_lora_adapters(
    module: nn.Module, adapter_names: list[str], settings: LoraSettings, where: str, *, freeze_base: bool = True
) -> list[str]:
    """Add one LoRA adapter per name to every Linear of `module` whose name ends with a target; returns the names of
    the adapted Linears. `where` names the module in errors (e.g. "qformer.image").

    With `freeze_base` every parameter of `module` that is not an adapter tensor is frozen (the usual LoRA setup);
    without it their `requires_grad` is left as it was. Adapters added earlier keep their `requires_grad` and the
    active adapter stays what it was (None, the plain base weights, after the first call)."""
    if not adapter_names:
        raise ValueError(f"{where}: no LoRA adapter names given")
    if len(set(adapter_names)) != len(adapter_names):
        raise ValueError(f"{where}: duplicate LoRA adapter names {adapter_names}")
    existing = adapter_names_in(module)
    clash = sorted(set(adapter_names) & existing)
    if clash:
        raise ValueError(f"{where}: LoRA adapter(s) {clash} already exist")
    matched: list[str] = []
    for target in settings.target_modules:
        names = _targeted_linears(module, target)
        if not names:
            raise ValueError(f"{where}: LoRA target '{target}' matched no Linear layer")
        matched.extend(n for n in names if n not in matched)

    previous = get_active_adapter(module)
    requires_grad = {id(p): p.requires_grad for p in module.parameters()}
    old_adapter = {id(p) for name in existing for p in adapter_parameters(module, name).values()}
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=matched,  # full names: exactly the Linears checked above
        bias="none",
        init_lora_weights=True,  # A: Kaiming uniform, B: zeros
    )
    with warnings.catch_warnings():
        # peft warns when a module gets a second adapter; several named adapters are the point here
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        for name in adapter_names:
            inject_adapter_in_model(config, module, adapter_name=name)

    # peft changes requires_grad while injecting; decide it here instead
    new_adapter = {id(p) for name in adapter_names for p in adapter_parameters(module, name).values()}
    for p in module.parameters():
        if id(p) in new_adapter:
            p.requires_grad = True
        elif id(p) in old_adapter or not freeze_base:
            p.requires_grad = requires_grad[id(p)]
        else:
            p.requires_grad = False
    set_active_adapter(module, previous)
    return matched


def adapter_names_in(module: nn.Module) -> set[str]:
    names: set[str] = set()
    for _, layer in _lora_layers(module):
        names.update(layer.lora_A.keys())
    return names


def get_active_adapter(module: nn.Module) -> str | None:
    """The adapter that takes part in forward, or None for the plain base weights (or no LoRA at all)."""
    for _, layer in _lora_layers(module):
        if layer.disable_adapters:
            return None
        active = layer.active_adapters
        return active[0] if active else None
    return None


def set_active_adapter(module: nn.Module, name: str | None) -> None:
    """Only adapter `name` takes part in forward; None runs the plain base weights. `requires_grad` is untouched."""
    layers = list(_lora_layers(module))
    if name is not None and layers and name not in adapter_names_in(module):
        raise KeyError(f"no LoRA adapter '{name}'; adapters: {sorted(adapter_names_in(module))}")
    for _, layer in layers:
        requires_grad = {p: p.requires_grad for p in layer.parameters()}
        if name is None:
            layer.enable_adapters(False)
        else:
            layer.enable_adapters(True)
            layer.set_adapter(name)
        for p, flag in requires_grad.items():
            p.requires_grad = flag


@contextmanager
def active_adapter(module: nn.Module, name: str | None):
    """Activate `name` inside the block, then restore whatever was active before."""
    previous = get_active_adapter(module)
    set_active_adapter(module, name)
    try:
        yield module
    finally:
        set_active_adapter(module, previous)


def adapter_parameters(module: nn.Module, name: str) -> dict[str, nn.Parameter]:
    """The tensors of adapter `name`, by their full parameter name in `module`."""
    found = {}
    for layer_name, layer in _lora_layers(module):
        prefix = f"{layer_name}." if layer_name else ""
        for attr in layer.adapter_layer_names:
            holder = getattr(layer, attr, None)
            if holder is None or name not in holder:
                continue
            held = holder[name]
            if isinstance(held, nn.Parameter):
                found[f"{prefix}{attr}.{name}"] = held
            else:
                for pname, p in held.named_parameters():
                    found[f"{prefix}{attr}.{name}.{pname}"] = p
    if not found:
        raise KeyError(f"no LoRA adapter '{name}'; adapters: {sorted(adapter_names_in(module))}")
    return found
