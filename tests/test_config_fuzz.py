"""Random damage to a valid run YAML: any section or leaf deleted or given a value of the wrong type. It either still
loads (a default or a coercion covers it) or fails with a ConfigError naming the file and the damaged key; never a
bare Python error."""

import copy
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lavis.common.config import load_config
from lavis.common.config_schema import ConfigError
from tests.conftest import toy_run_config, write_yaml


def _paths(node: dict, prefix: tuple = ()) -> list[tuple]:
    """Every section and every leaf of a YAML tree, as key paths."""
    out = []
    for key, value in node.items():
        out.append(prefix + (key,))
        if isinstance(value, dict):
            out += _paths(value, prefix + (key,))
    return out


TOY = toy_run_config(Path("/toy"))
PATHS = _paths(TOY)
# Deleting these leaves nothing to fall back on (the toy model's modalities come from its model_type's defaults).
MUST_FAIL_WHEN_DELETED = {
    ("model",), ("model", "arch"), ("model", "model_type"), ("datasets",), ("run",), ("run", "output_dir"),
    ("datasets", "set_a", "builder"), ("datasets", "set_a", "modality"),
    ("datasets", "set_b", "builder"), ("datasets", "set_b", "modality"),
}
WRONG_VALUES = [{"nested": 1}, [1, 2], "not-a-number", "3.5.1", 5, None]


def _get(data, path):
    for key in path:
        data = data[key]
    return data


def _set(data, path, value):
    _get(data, path[:-1])[path[-1]] = value


def _delete(data, path):
    del _get(data, path[:-1])[path[-1]]


def _load_expecting_key(tmp_path, data, path, may_load: bool) -> None:
    cfg_path = write_yaml(tmp_path / "fuzz.yaml", data)
    key = ".".join(path)
    try:
        load_config(str(cfg_path), [])
    except ConfigError as e:
        assert key in str(e), f"{key}: {e}"
        assert "fuzz.yaml" in str(e), f"{key}: {e}"
    else:
        assert may_load, f"{key}: the damaged config was accepted"


def test_every_section_and_leaf_is_fuzzed():
    assert ("datasets", "set_a") in PATHS and ("run", "lr_schedule", "warmup_steps") in PATHS
    assert ("run", "imports") in PATHS and ("model", "model_type") in PATHS


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), value=st.sampled_from(WRONG_VALUES))
def test_wrong_type_names_the_key(tmp_path, path, value):
    data = copy.deepcopy(TOY)
    data["run"]["output_dir"] = str(tmp_path / "out")
    original = _get(data, path)
    _set(data, path, value)
    # A scalar in place of a scalar may be coerced (5 -> "5", 5 -> 5.0) or valid ("3.5.1" as a directory name);
    # a section or list replaced, or a mapping or list in place of a scalar, never is.
    may_load = not isinstance(original, (dict, list)) and not isinstance(value, (dict, list))
    _load_expecting_key(tmp_path, data, path, may_load)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS))
def test_deleted_key_is_named_or_defaulted(tmp_path, path):
    data = copy.deepcopy(TOY)
    data["run"]["output_dir"] = str(tmp_path / "out")
    _delete(data, path)
    _load_expecting_key(tmp_path, data, path, may_load=path not in MUST_FAIL_WHEN_DELETED)


@pytest.mark.parametrize("option,key", [
    ("run.imports=x", "run.imports"),
    ("run.imports=[no_such_module_xyz]", "run.imports"),
    ("model.arch=5", "model.arch"),
    ("model=x", "model"),
    ("datasets.set_a=oops", "datasets.set_a"),
    ("datasets.set_a.builder=[1]", "datasets.set_a.builder"),
    ("run.lr_schedule=cosine", "run.lr_schedule"),
    ("run.task=pretrian", "run.task"),
])
def test_damage_through_options_names_options_and_key(tmp_path, option, key):
    cfg_path = write_yaml(tmp_path / "run.yaml", toy_run_config(tmp_path))
    with pytest.raises(ConfigError) as err:
        load_config(str(cfg_path), [option])
    message = str(err.value)
    assert message.startswith("--options") and key in message, message


@pytest.mark.parametrize("path,value,suggestion", [
    (("model", "arch"), "toy_multimodel", "toy_multimodal"),
    (("datasets", "set_a", "builder"), "toy_vector", "toy_vectors"),
    (("run", "task"), "pretrian", "pretrain"),
    (("run", "lr_schedule", "name"), "linear_warmup_cosin", "linear_warmup_cosine"),
])
def test_unknown_registered_name_names_file_key_and_suggestion(tmp_path, path, value, suggestion):
    data = toy_run_config(tmp_path)
    _set(data, path, value)
    cfg_path = write_yaml(tmp_path / "fuzz.yaml", data)
    with pytest.raises(ConfigError) as err:
        load_config(str(cfg_path), [])
    message = str(err.value)
    assert "fuzz.yaml" in message and f"'{'.'.join(path)}'" in message and f"Did you mean '{suggestion}'" in message
