"""Name -> class registries for the parts a YAML file can ask for.

Each kind of part has its own `Registry`. Registration is an explicit decorator on the class; the package
`__init__` files import their modules by name, so what is registered is visible in one place.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown or duplicate name; the message lists what is registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise RegistryError(
                    f"{self.kind} '{name}' is already registered (by {self._entries[name]!r}); "
                    f"pick another name for {obj!r}"
                )
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1, cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise RegistryError(
                f"unknown {self.kind} '{name}'.{hint} Registered {self.kind}s: {', '.join(self.names()) or '(none)'}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


MODELS: Registry = Registry("model")
DATASET_BUILDERS: Registry = Registry("dataset builder")
TASKS: Registry = Registry("task")
PROCESSORS: Registry = Registry("processor")
RUNNERS: Registry = Registry("runner")
LR_SCHEDULES: Registry = Registry("lr schedule")
ENCODERS: Registry = Registry("encoder")
REGION_KINDS: Registry = Registry("region kind")
