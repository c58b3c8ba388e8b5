"""Config merge order, overrides, and error messages that name the file, the key and a suggestion."""

from pathlib import Path

import pytest
import yaml

from lavis.common.config import load_config, save_config
from lavis.common.config_schema import ConfigError
from tests.conftest import toy_run_config, write_yaml


def load(tmp_path, data, options=None):
    return load_config(str(write_yaml(tmp_path / "run.yaml", data)), options or [])


def test_defaults_then_user_then_options(tmp_path):
    data = toy_run_config(tmp_path)
    data["model"]["hidden"] = 24  # user YAML over the model's default YAML (hidden 16)
    cfg = load(tmp_path, data, ["model.dropout=0.3", "datasets.set_a.batch_size=2", "run.max_epoch=5"])
    assert cfg.model.hidden == 24
    assert cfg.model.dim == 8  # from the default YAML
    assert cfg.model.dropout == 0.3
    assert set(cfg.model.modalities) == {"vec_a", "vec_b"}
    assert cfg.datasets["set_a"].batch_size == 2
    assert cfg.run.max_epoch == 5
    assert cfg.run.optimizer.weight_decay == 0.05  # RunConfig default


def test_unknown_key_in_file_names_file_key_and_suggestion(tmp_path):
    data = toy_run_config(tmp_path)
    data["run"]["max_epochs"] = 3
    with pytest.raises(ConfigError) as err:
        load(tmp_path, data)
    message = str(err.value)
    assert "run.yaml" in message and "run.max_epochs" in message and "Did you mean 'max_epoch'" in message


def test_unknown_key_in_options(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, toy_run_config(tmp_path), ["datasets.set_a.batch_sise=3"])
    message = str(err.value)
    assert message.startswith("--options") and "datasets.set_a.batch_sise" in message
    assert "Did you mean 'batch_size'" in message


def test_wrong_type_names_key(tmp_path):
    data = toy_run_config(tmp_path)
    data["model"]["hidden"] = "wide"
    with pytest.raises(ConfigError, match=r"run\.yaml: bad value for 'model\.hidden'"):
        load(tmp_path, data)


def test_bad_enum_value(tmp_path):
    with pytest.raises(ConfigError, match="run.modality_schedule"):
        load(tmp_path, toy_run_config(tmp_path), ["run.modality_schedule=random"])


def test_missing_required_key(tmp_path):
    data = toy_run_config(tmp_path)
    del data["run"]["output_dir"]
    with pytest.raises(ConfigError, match=r"required key\(s\) not set: run.output_dir"):
        load(tmp_path, data)


def test_unknown_model_and_model_type(tmp_path):
    data = toy_run_config(tmp_path)
    data["model"]["arch"] = "toy_multimodel"
    with pytest.raises(ConfigError, match=r"run\.yaml: bad value for 'model\.arch'.*Did you mean 'toy_multimodal'"):
        load(tmp_path, data)
    data = toy_run_config(tmp_path)
    data["model"]["model_type"] = "bse"
    with pytest.raises(ConfigError, match="Did you mean 'base'"):
        load(tmp_path, data)


def test_unset_model_type_is_named_when_the_model_lacks_its_defaults(tmp_path):
    data = toy_run_config(tmp_path)
    del data["model"]["model_type"]  # the toy model's modalities come from its 'base' default YAML
    with pytest.raises(ConfigError, match=r"model\.model_type is not set, so none of the default configs"):
        load(tmp_path, data)


def test_dataset_modality_must_exist(tmp_path):
    data = toy_run_config(tmp_path)
    data["datasets"]["set_b"]["modality"] = "vec_c"
    with pytest.raises(ConfigError, match="datasets.set_b.modality 'vec_c' is not a key of model.modalities"):
        load(tmp_path, data)


def test_top_level_typo(tmp_path):
    data = toy_run_config(tmp_path)
    data["dataset"] = data.pop("datasets")
    with pytest.raises(ConfigError, match="Did you mean 'datasets'"):
        load(tmp_path, data)


def test_options_cannot_invent_a_dataset(tmp_path):
    with pytest.raises(ConfigError, match="dataset 'set_c' is not in"):
        load(tmp_path, toy_run_config(tmp_path), ["datasets.set_c.batch_size=1"])


def test_missing_dataset_path_reported_before_training(tmp_path):
    from lavis.common.config import check_dataset_paths

    data = toy_run_config(tmp_path)
    data["datasets"]["set_a"]["data_root"] = str(tmp_path / "nowhere")
    cfg = load(tmp_path, data)
    builders = {name: cfg.builder_of(name)(ds) for name, ds in cfg.datasets.items()}
    with pytest.raises(ConfigError, match=r"datasets.set_a: data_root = .*nowhere does not exist"):
        check_dataset_paths(cfg, builders, "run.yaml")


def test_resolved_config_saved_and_reloadable(tmp_path):
    cfg = load(tmp_path, toy_run_config(tmp_path), ["model.hidden=12"])
    out = tmp_path / "resolved.yaml"
    save_config(cfg, out)
    saved = yaml.safe_load(out.read_text())
    assert saved["model"]["hidden"] == 12 and saved["model"]["arch"] == "toy_multimodal"
    again = load_config(str(out), [])  # the saved file is itself a valid run config
    assert again.model == cfg.model and again.run == cfg.run


def test_invalid_yaml_names_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(str(path), [])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(Path("/nonexistent/run.yaml")), [])
