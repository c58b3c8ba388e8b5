"""A test suite of mistakes: each one a user makes in a run YAML, and again with --options, stops the run before any
model is built (the model class's from_config is made to fail loudly if reached), in one message naming where the
value was set (the file, or `--options key=value`) and the key. Then the features the fixes rest on: removing a
modality with null, `base:` inheritance, the checkpoint-config comparison, and the command line's one-message
report. Nothing here builds a RegionBLIP: the paths exist, the files are stand-ins, so it stays fast."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import lavis  # noqa: F401  (registers the built-in models and datasets)
from lavis.common.checkpoint_compat import weight_fingerprints
from lavis.common.config import load_config
from lavis.common.config_schema import ConfigError
from lavis.common.registry import MODELS
from lavis.models.regionblip.config import without_unused_parts
from lavis.runners.setup import set_up_run
from tests.conftest import REPO, toy_run_config, write_yaml

VISION_WEIGHTS = "model.encoders.vision.params.checkpoint_path"


class ModelBuilt(Exception):
    """Raised where a model would be built: a mistake must be reported before this."""


@pytest.fixture
def no_model(monkeypatch):
    """Every registered model's constructor raises ModelBuilt."""
    def refuse(cls, cfg):
        raise ModelBuilt(cls.__name__)

    for name in MODELS.names():
        monkeypatch.setattr(MODELS.get(name), "from_config", classmethod(refuse))


def regionblip_world(tmp_path: Path) -> dict:
    """A tiny RegionBLIP run over RefCOCO, Objaverse and ScanRefer whose every path exists (empty stand-ins)."""
    root = tmp_path / "world"
    for folder in ("bert", "opt", "images", "refer/refcoco", "objaverse", "scanrefer", "scannet"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for file in ("refer/refcoco/refs(unc).p", "refer/refcoco/instances.json", "cap3d.csv",
                 "scanrefer/ScanRefer_filtered_train.json", "scanrefer/ScanRefer_filtered_val.json"):
        (root / file).write_text("")
    (root / "opt" / "config.json").write_text("{}")
    (root / "vit_a.pth").write_bytes(b"weights a" * 100)
    (root / "vit_b.pth").write_bytes(b"weights b" * 100)
    qformer = {"config": {"tokenizer_path": str(root / "bert")}}
    return {
        "model": {"arch": "regionblip", "model_type": "tiny", "qformers": {"blip2": qformer, "point": qformer},
                  "llm": {"path": str(root / "opt")}},
        "datasets": {
            "refcoco": {"modality": "image_region", "refer_root": str(root / "refer"),
                        "image_root": str(root / "images")},
            "objaverse_cap3d": {"modality": "pointcloud", "points_root": str(root / "objaverse"),
                                "caption_file": str(root / "cap3d.csv"), "eval_split": None},
            "scanrefer": {"modality": "pointcloud_region", "annotation_root": str(root / "scanrefer"),
                          "scannet_data_root": str(root / "scannet")},
        },
        "run": {"output_dir": str(tmp_path / "out"), "task": "captioning", "num_workers": 0, "tensorboard": False},
    }


def set_in(data: dict, key: str, value) -> dict:
    node = data
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return data


def start(cfg_path: Path, options: list[str], training: bool = False):
    """load_config, then what train.py / evaluate.py do before building the model."""
    cfg = load_config(str(cfg_path), options)
    return cfg, set_up_run(cfg, str(cfg_path), training=training)


def yaml_value(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


# (what goes wrong, key it is set at, wrong value, key the message must name, phrase it must contain, training)
MISTAKES = [
    ("checkpoint to load is missing", "run.load_ckpt_path", "{tmp}/nowhere.pth", "run.load_ckpt_path",
     "does not exist", False),
    ("checkpoint folder holds none", "run.load_ckpt_path", "{tmp}/world", "run.load_ckpt_path",
     "without checkpoint_", False),
    ("checkpoint to resume is missing", "run.resume_ckpt_path", "{tmp}/nowhere.pth", "run.resume_ckpt_path",
     "not a checkpoint file", True),
    ("3D region kind on RefCOCO's boxes", "model.modalities.image_region.region", "box3d_corners",
     "model.modalities.image_region.region", "carry region_geometry of 4 values", False),
    ("a point dataset on an image modality", "datasets.objaverse_cap3d.modality", "image",
     "datasets.objaverse_cap3d.modality", "carry 'points'", False),
    ("an unregistered region kind", "model.modalities.image_region.region", "mask",
     "model.modalities.image_region.region", "unknown region kind 'mask'", False),
    ("a frozen encoder without weights", "model.encoders.vision.allow_random_weights", False,
     "model.encoders.vision", "would stay random", False),
    ("an encoder weight file that is not there", VISION_WEIGHTS, "{tmp}/absent_vit.pth", VISION_WEIGHTS,
     "does not exist", False),
    ("a misspelt run key", "run.max_epochs", 3, "run.max_epochs", "Did you mean 'max_epoch'", False),
    ("a modality naming no encoder", "model.modalities.image.encoder", "visoin", "model.modalities.image.encoder",
     "not a key of model.encoders", False),
    ("a task prompt the model does not define", "datasets.refcoco.task_prompt", "brief_captoin",
     "datasets.refcoco.task_prompt", "'brief_captoin' is not a key of model.task_prompts", False),
    ("a region placeholder in a holistic modality's prompt", "model.modalities.pointcloud.prompt",
     "what is <region>?", "model.modalities.pointcloud.prompt", "has no region (region: null)", False),
    ("a mask kind on a dataset of boxes", "model.modalities.image_region.region", "mask2d",
     "model.modalities.image_region.region", "carry no region_mask", False),
    ("two placeholders in a caption template", "model.task_prompts.brief_caption", "<region> and <region>",
     "model.task_prompts.brief_caption", "caption samples have one region", False),
]


@pytest.mark.parametrize("form", ["yaml", "options"])
@pytest.mark.parametrize("what,key,value,named,phrase,training", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_a_mistake_stops_the_run_before_the_model_in_one_message(tmp_path, no_model, form, what, key, value, named,
                                                                 phrase, training):
    data = regionblip_world(tmp_path)
    value = value.format(tmp=tmp_path) if isinstance(value, str) else value
    options = []
    if form == "yaml":
        set_in(data, key, value)
    else:
        options = [f"{key}={yaml_value(value)}"]
    cfg_path = write_yaml(tmp_path / "run.yaml", data)
    with pytest.raises(ConfigError) as err:
        start(cfg_path, options, training=training)
    message = str(err.value)
    source = f"--options {options[0]}" if options else str(cfg_path)
    assert message.startswith(source), message
    assert named in message and phrase in message, message
    assert err.value.__cause__ is None  # one message: nothing chained behind it
    assert not (tmp_path / "out" / "config.yaml").exists()  # found before the resolved config is written


def test_a_failing_plugin_module_is_named_with_its_own_error(tmp_path, monkeypatch):
    (tmp_path / "broken_plugin.py").write_text("import math\nraise RuntimeError('plugin exploded')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = toy_run_config(tmp_path)
    for form, options in (("yaml", []), ("options", ["run.imports=[broken_plugin]"])):
        case = copy.deepcopy(data)
        if form == "yaml":
            case["run"]["imports"] = ["tests.toy_plugin", "broken_plugin"]
        cfg_path = write_yaml(tmp_path / f"{form}.yaml", case)
        sys.modules.pop("broken_plugin", None)
        with pytest.raises(ConfigError) as err:
            load_config(str(cfg_path), options)
        message = str(err.value)
        assert message.startswith(f"--options {options[0]}" if options else str(cfg_path)), message
        assert "'broken_plugin'" in message and "RuntimeError: plugin exploded" in message, message
        assert "broken_plugin.py:2" in message  # where it was raised
        assert err.value.__cause__ is None and isinstance(err.value.original, RuntimeError)


# ---- model.modalities.<name>: null ------------------------------------------------------------------------------
def test_null_removes_an_inherited_modality_and_its_heads(tmp_path):
    data = toy_run_config(tmp_path)
    del data["datasets"]["set_b"]
    cfg_path = write_yaml(tmp_path / "run.yaml", data)
    cfg = load_config(str(cfg_path), ["model.modalities.vec_b=null"])
    assert list(cfg.model.modalities) == ["vec_a"]
    model = MODELS.get(cfg.model_arch).from_config(cfg.model)
    assert "vec_b" not in model.heads and not any("vec_b" in k for k in model.trainable_state_dict())

    data["model"]["modalities"] = {"vec_b": None}  # the YAML form
    cfg = load_config(str(write_yaml(tmp_path / "yaml.yaml", data)))
    assert list(cfg.model.modalities) == ["vec_a"]


def test_a_dataset_of_a_removed_modality_is_refused_naming_the_removal(tmp_path):
    cfg_path = write_yaml(tmp_path / "run.yaml", toy_run_config(tmp_path))
    with pytest.raises(ConfigError) as err:
        load_config(str(cfg_path), ["model.modalities.vec_b=null"])
    message = str(err.value)
    assert "datasets.set_b.modality" in message and "removed by --options model.modalities.vec_b=null" in message
    assert "datasets.set_b: null" in message  # the fix
    cfg = load_config(str(cfg_path), ["model.modalities.vec_b=null", "datasets.set_b=null"])
    assert list(cfg.datasets) == ["set_a"]


def test_null_naming_no_modality_is_refused(tmp_path):
    cfg_path = write_yaml(tmp_path / "run.yaml", toy_run_config(tmp_path))
    with pytest.raises(ConfigError, match=r"--options model.modalities.vec_c=null: .*removes nothing.*vec_a"):
        load_config(str(cfg_path), ["model.modalities.vec_c=null"])


def test_parts_no_modality_uses_are_not_built(tmp_path):
    cfg = load_config(str(write_yaml(tmp_path / "run.yaml", regionblip_world(tmp_path))),
                      ["model.modalities.pointcloud=null", "model.modalities.pointcloud_region=null",
                       "datasets.objaverse_cap3d=null", "datasets.scanrefer=null"])
    used = without_unused_parts(cfg.model)
    assert set(used.encoders) == {"vision"} and set(used.qformers) == {"blip2"}
    assert {p.key for p in MODELS.get("regionblip").frozen_parts(cfg.model)} == {
        "model.encoders.vision", "model.qformers.blip2", "model.llm"}


# ---- base: inheritance -------------------------------------------------------------------------------------------
def test_base_chain_with_relative_paths_and_removal(tmp_path):
    common = tmp_path / "common"
    common.mkdir()
    write_yaml(common / "grand.yaml", toy_run_config(tmp_path))
    write_yaml(common / "parent.yaml", {"base": "grand.yaml", "run": {"max_epoch": 5, "seed": 3}})
    (tmp_path / "runs").mkdir()
    child = write_yaml(tmp_path / "runs" / "child.yaml", {
        "base": "../common/parent.yaml",
        "model": {"modalities": {"vec_b": None}},
        "datasets": {"set_b": None, "set_a": {"batch_size": 2}},
        "run": {"seed": 11},
    })
    cfg = load_config(str(child), ["run.max_epoch=7"])
    assert (cfg.run.max_epoch, cfg.run.seed) == (7, 11)  # --options over the child over the parent
    assert cfg.datasets["set_a"].batch_size == 2 and cfg.datasets["set_a"].size == 16  # grand's, kept
    assert list(cfg.datasets) == ["set_a"] and list(cfg.model.modalities) == ["vec_a"]
    assert cfg.source_of("run.seed") == str(child)
    assert cfg.source_of("datasets.set_a.size") == str(common / "grand.yaml")
    assert cfg.source_of("run.max_epoch") == "--options run.max_epoch=7"
    assert "base" not in cfg.yaml

    write_yaml(common / "parent.yaml", {"base": "grand.yaml", "run": {"max_epochz": 5}})
    with pytest.raises(ConfigError, match=r"parent\.yaml: unknown key 'run.max_epochz'"):  # blamed on its file
        load_config(str(child))


def test_base_cycle_and_missing_base_are_refused(tmp_path):
    write_yaml(tmp_path / "a.yaml", {"base": "b.yaml", **toy_run_config(tmp_path)})
    write_yaml(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match=r"b\.yaml: 'base' makes a cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(str(tmp_path / "a.yaml"))
    write_yaml(tmp_path / "c.yaml", {"base": "nowhere.yaml"})
    with pytest.raises(ConfigError, match=r"c\.yaml: bad value for 'base': .*nowhere\.yaml does not exist"):
        load_config(str(tmp_path / "c.yaml"))
    plain = write_yaml(tmp_path / "d.yaml", toy_run_config(tmp_path))
    with pytest.raises(ConfigError, match=r"--options base=a.yaml: 'base' is a key of a run YAML"):
        load_config(str(plain), ["base=a.yaml"])


# ---- the checkpoint's config ------------------------------------------------------------------------------------
def write_checkpoint(tmp_path: Path, data: dict, options: list[str]) -> Path:
    """A checkpoint as a run of (data, options) writes it: no tensors needed here, its config with fingerprints."""
    cfg = load_config(str(write_yaml(tmp_path / "train.yaml", data)), options)
    config = {**OmegaConf.to_container(cfg.yaml), "weight_fingerprints": weight_fingerprints(cfg)}
    path = tmp_path / "trained" / "checkpoint_00000010.pth"
    path.parent.mkdir(exist_ok=True)
    torch.save({"model": {}, "config": config}, path)
    return path


@pytest.fixture
def trained(tmp_path):
    """(run data without a checkpoint, the checkpoint of a run that read vit_a.pth for the frozen ViT)."""
    data = regionblip_world(tmp_path)
    set_in(data, "model.encoders.vision.allow_random_weights", False)
    world = tmp_path / "world"
    return data, write_checkpoint(tmp_path, data, [f"{VISION_WEIGHTS}={world / 'vit_a.pth'}"])


def test_another_frozen_weight_file_is_refused_naming_the_key(tmp_path, no_model, trained):
    data, ckpt = trained
    other = f"{VISION_WEIGHTS}={tmp_path / 'world' / 'vit_b.pth'}"
    cfg_path = write_yaml(tmp_path / "eval.yaml", data)
    with pytest.raises(ConfigError) as err:
        start(cfg_path, [f"run.load_ckpt_path={ckpt}", other])
    message = str(err.value)
    assert VISION_WEIGHTS in message and "vit_a.pth" in message and "vit_b.pth" in message, message
    assert f"set by --options {other}" in message and "run.allow_config_change=true" in message

    # the same path, but the file was replaced since the checkpoint was written
    same_path = f"{VISION_WEIGHTS}={tmp_path / 'world' / 'vit_a.pth'}"
    original = (tmp_path / "world" / "vit_a.pth").read_bytes()
    (tmp_path / "world" / "vit_a.pth").write_bytes(b"retrained" * 100)
    with pytest.raises(ConfigError, match=r"the file changed since the checkpoint was written"):
        start(cfg_path, [f"run.load_ckpt_path={ckpt}", same_path])
    (tmp_path / "world" / "vit_a.pth").write_bytes(original)

    # a copy of the same file elsewhere is the same weights
    moved = tmp_path / "copy_of_vit_a.pth"
    moved.write_bytes((tmp_path / "world" / "vit_a.pth").read_bytes())
    with pytest.raises(ModelBuilt):
        start(cfg_path, [f"run.load_ckpt_path={ckpt}", f"{VISION_WEIGHTS}={moved}"])


def test_a_changed_setting_is_refused_and_allowed_knowingly_with_a_warning(tmp_path, no_model, trained):
    data, ckpt = trained
    cfg_path = write_yaml(tmp_path / "eval.yaml", data)
    options = [f"run.load_ckpt_path={ckpt}", f"{VISION_WEIGHTS}={tmp_path / 'world' / 'vit_a.pth'}",
               "model.num_query_tokens=4"]
    with pytest.raises(ConfigError, match=r"model.num_query_tokens: 8 -> 4 \(set by --options model.num_query"):
        start(cfg_path, options)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("lavis.common.checkpoint_compat")
    logger.addHandler(handler)
    try:
        with pytest.raises(ModelBuilt):  # goes on to build the model
            start(cfg_path, [*options, "run.allow_config_change=true", f"run.output_dir={tmp_path / 'out2'}"])
    finally:
        logger.removeHandler(handler)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert any("model.num_query_tokens: 8 -> 4" in w for w in warnings), warnings
    # settings that change nothing a checkpoint holds are free at evaluation: beams, resolution
    with pytest.raises(ModelBuilt):
        start(cfg_path, [*options[:2], "model.generation.num_beams=1", "model.encoders.vision.params.img_size=48",
                         f"run.output_dir={tmp_path / 'out3'}"])


def test_the_checkpoint_supplies_a_frozen_path_left_unset(tmp_path, no_model, trained):
    data, ckpt = trained
    cfg_path = write_yaml(tmp_path / "eval.yaml", data)
    with pytest.raises(ConfigError, match=r"model.encoders.vision: set model.encoders.vision.params.checkpoint"):
        start(cfg_path, [])  # no file for the frozen ViT, and no checkpoint to take it from
    cfg = load_config(str(cfg_path), [f"run.load_ckpt_path={ckpt.parent}"])  # a run folder: its latest
    with pytest.raises(ModelBuilt):
        set_up_run(cfg, str(cfg_path))
    assert cfg.model.encoders["vision"].params["checkpoint_path"] == str(tmp_path / "world" / "vit_a.pth")
    assert OmegaConf.select(cfg.yaml, VISION_WEIGHTS) == str(tmp_path / "world" / "vit_a.pth")
    # left out on purpose (null): not supplied, so the frozen ViT has no weights
    with pytest.raises(ConfigError, match=r"model.encoders.vision: set"):
        start(cfg_path, [f"run.load_ckpt_path={ckpt}", f"{VISION_WEIGHTS}=null",
                         f"run.output_dir={tmp_path / 'out2'}"])


# ---- the command line -------------------------------------------------------------------------------------------
def test_a_config_error_is_one_message_without_traceback_unless_debug(tmp_path):
    cfg_path = write_yaml(tmp_path / "run.yaml", toy_run_config(tmp_path))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("LAVIS_DEBUG", None)
    command = [sys.executable, str(REPO / "train.py"), "--cfg-path", str(cfg_path), "--options", "run.max_epochs=2"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("config error:") == 1, done.stderr
    assert "config error: --options run.max_epochs=2: unknown key 'run.max_epochs'" in done.stderr
    debug = subprocess.run([*command, "--debug"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "config error:" in debug.stderr
