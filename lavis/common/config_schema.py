"""Typed configs filled from YAML: one function turns (dataclass, sources) into a checked instance.

Every error names the source (a file, `--options`, or a YAML block), the full key, and the closest valid key.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import is_dataclass
from typing import Any, Iterable, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A mistake in the configuration. `key`: the dotted key it concerns, when one does (callers that know where
    each key was set prefix the message with that source); `original`: the exception behind it, if any."""

    def __init__(self, message: str, key: str | None = None, original: BaseException | None = None):
        super().__init__(message)
        self.key = key
        self.original = original


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


def _is_section_map(node: Any) -> bool:
    """A `Dict[str, <dataclass>]` field (e.g. model.modalities): user-named sections, where `name: null` removes one."""
    if not isinstance(node, DictConfig) or node._metadata.object_type not in (None, dict):
        return False
    element = node._metadata.element_type
    return isinstance(element, type) and is_dataclass(element)


def _remove_nulled(node: DictConfig, data: dict, source: str, key: str) -> None:
    """Delete from `node` each entry of a section map that `data` sets to null (and drop it from `data`); a null
    entry naming no existing section is an error (a typo would otherwise remove nothing, silently)."""
    for name, value in list(data.items()):
        if name not in node or not isinstance(node._get_node(name), DictConfig):
            continue
        child = node._get_node(name)
        full = f"{key}.{name}" if key else str(name)
        if child._is_none() or child._is_missing() or not isinstance(value, dict):
            continue
        if _is_section_map(child):
            for entry, entry_value in list(value.items()):
                if entry_value is not None:
                    continue
                if entry not in child:
                    raise ConfigError(f"{source}: '{full}.{entry}: null' removes nothing: '{full}' has no entry "
                                      f"'{entry}' (it has: {', '.join(map(str, child.keys())) or 'none'})",
                                      key=f"{full}.{entry}")
                del child[entry]
                del value[entry]
        _remove_nulled(child, value, source, full)


def merge_checked(schema: DictConfig, sources: Iterable[tuple[str, Any]], prefix: str = "") -> DictConfig:
    """Merge each (source name, mapping) over the structured `schema`, in order, failing on the first bad key.
    In a map of named sections (`Dict[str, <dataclass>]`, e.g. model.modalities) `name: null` removes the entry
    the sources before it made."""
    merged = schema
    for source, data in sources:
        if data is None:
            continue
        plain = OmegaConf.to_container(data, resolve=False) if isinstance(data, (DictConfig, ListConfig)) else data
        if not isinstance(plain, dict):
            where = f"bad value for '{prefix}': " if prefix else ""
            raise ConfigError(f"{source}: {where}expected a mapping, got {describe(plain)}")
        plain = copy.deepcopy(plain)  # the removals below must not change the caller's mapping
        _remove_nulled(merged, plain, source, prefix)
        _check_shapes(merged, plain, source, prefix)
        try:
            merged = OmegaConf.merge(merged, plain)
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
