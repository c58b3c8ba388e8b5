"""Random damage to a valid run YAML always fails with a message that names the damaged key (or loads fine)."""

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lavis.common.config import load_config
from lavis.common.config_schema import ConfigError
from tests.conftest import toy_run_config, write_yaml

# (path, must the config still load without it?)
DELETABLE = [
    (("run", "output_dir"), False),
    (("model", "arch"), False),
    (("datasets", "set_a", "modality"), False),
    (("run", "seed"), True),
    (("run", "lr_schedule", "init_lr"), True),
    (("datasets", "set_b", "batch_size"), True),
]
RETYPABLE = [
    ("run", "max_epoch"), ("run", "seed"), ("run", "amp"), ("run", "lr_schedule", "warmup_steps"),
    ("run", "optimizer", "weight_decay"), ("run", "num_workers"), ("datasets", "set_a", "batch_size"),
    ("datasets", "set_b", "aug_noise"), ("datasets", "set_a", "repeat"), ("model", "hidden"), ("model", "dropout"),
]
BAD_VALUES = st.sampled_from([{"nested": 1}, "not-a-number", [1, 2], "3.5.1"])


def _set(data, path, value):
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def _delete(data, path):
    node = data
    for key in path[:-1]:
        node = node[key]
    node.pop(path[-1], None)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(RETYPABLE), value=BAD_VALUES)
def test_wrong_type_names_the_key(tmp_path, path, value):
    data = copy.deepcopy(toy_run_config(tmp_path))
    _set(data, path, value)
    cfg_path = write_yaml(tmp_path / "fuzz.yaml", data)
    try:
        load_config(str(cfg_path), [])
    except ConfigError as e:
        assert ".".join(path) in str(e), str(e)
        assert "fuzz.yaml" in str(e)
    else:
        raise AssertionError(f"{'.'.join(path)} = {value!r} was accepted")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entry=st.sampled_from(DELETABLE))
def test_deleted_key_is_named_or_defaulted(tmp_path, entry):
    path, optional = entry
    data = copy.deepcopy(toy_run_config(tmp_path))
    _delete(data, path)
    cfg_path = write_yaml(tmp_path / "fuzz.yaml", data)
    if optional:
        load_config(str(cfg_path), [])
        return
    try:
        load_config(str(cfg_path), [])
    except ConfigError as e:
        assert ".".join(path) in str(e) or path[-1] in str(e), str(e)
    else:
        raise AssertionError(f"deleting {'.'.join(path)} was accepted")
