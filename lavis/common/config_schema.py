"""Typed configs filled from YAML: one function turns (dataclass, sources) into a checked instance.

Every error names the source (a file, `--options`, or a YAML block), the full key, and the closest valid key.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def _valid_keys(node: Any, full_key: str) -> list[str]:
    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    try:
        sub = OmegaConf.select(node, parent) if parent else node
    except OmegaConfBaseException:
        return []
    return [str(k) for k in sub.keys()] if isinstance(sub, DictConfig) else []


def explain(error: OmegaConfBaseException, schema: Any, source: str, prefix: str = "") -> ConfigError:
    """Turn an omegaconf error into one line: source, key, problem, suggestion."""
    key = str(getattr(error, "full_key", "") or getattr(error, "key", "") or "")
    shown = f"{prefix}.{key}" if prefix and key else (prefix or key)
    if isinstance(error, ConfigKeyError):
        valid = _valid_keys(schema, key)
        bad = key.rsplit(".", 1)[-1]
        close = difflib.get_close_matches(bad, valid, n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return ConfigError(f"{source}: unknown key '{shown}'.{hint} Valid keys here: {', '.join(sorted(valid))}")
    first_line = str(error).splitlines()[0]
    return ConfigError(f"{source}: bad value for '{shown}': {first_line}")


def describe(value: Any) -> str:
    """A value as the user wrote it, with its kind: "the str 'oops'", "the list [1, 2]"."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=False)
    kind = {dict: "mapping", list: "list"}.get(type(value), type(value).__name__)
    return f"the {kind} {value!r}"


def _check_shapes(node: DictConfig, data: dict, source: str, key: str) -> None:
    """A scalar where the schema has a section (or a list), caught before merging: omegaconf's own error for it
    names no key, or is a bare TypeError."""
    for name, value in data.items():
        if value is None or name not in node:
            continue  # null is checked by the merge; an unknown key gets omegaconf's error with a suggestion
        child = node._get_node(name)
        full = f"{key}.{name}" if key else str(name)
        if isinstance(child, DictConfig):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: bad value for '{full}': expected a mapping, got {describe(value)}")
            if not (child._is_none() or child._is_missing()):
                _check_shapes(child, value, source, full)
        elif isinstance(child, ListConfig) and not isinstance(value, list):
            raise ConfigError(f"{source}: bad value for '{full}': expected a list, got {describe(value)}")


def merge_checked(schema: DictConfig, sources: Iterable[tuple[str, Any]], prefix: str = "") -> DictConfig:
    """Merge each (source name, mapping) over the structured `schema`, in order, failing on the first bad key."""
    merged = schema
    for source, data in sources:
        if data is None:
            continue
        plain = OmegaConf.to_container(data, resolve=False) if isinstance(data, (DictConfig, ListConfig)) else data
        if not isinstance(plain, dict):
            where = f"bad value for '{prefix}': " if prefix else ""
            raise ConfigError(f"{source}: {where}expected a mapping, got {describe(plain)}")
        _check_shapes(merged, plain, source, prefix)
        try:
            merged = OmegaConf.merge(merged, data)
        except OmegaConfBaseException as e:
            raise explain(e, merged, source, prefix) from None
    return merged


def config_from_dict(cls: type[T], params: Any, where: str) -> T:
    """Build the dataclass `cls` from a mapping, checking keys and types; `where` names the YAML block."""
    schema = OmegaConf.structured(cls)
    merged = merge_checked(schema, [(where, params)])
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise ConfigError(f"{where}: required key(s) not set: {', '.join(missing)}")
    return OmegaConf.to_object(merged)
