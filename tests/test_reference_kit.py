"""Against the reference RegionBLIP itself: its golden kit (../shared/reference, made by running the reference code)
must be reproduced by tools/check_reference_kit.py, its release file must convert with every key accounted for,
and the check must see a convention that differs (it is not blind)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from lavis.common.config_schema import config_from_dict
from lavis.models.regionblip.config import RegionBLIPConfig
from lavis.models.regionblip.model import RegionBLIP

REPO = Path(__file__).resolve().parents[1]
KIT = REPO.parent / "shared" / "reference"

pytestmark = pytest.mark.skipif(not (KIT / "release_tiny.pth").is_file(),
                                reason=f"no reference kit at {KIT} (CI lays shared/ beside the repository)")


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def check():
    return _tool("check_reference_kit")


@pytest.fixture(scope="module")
def sizes(check):
    """(kit, ViT params, Point-BERT params), the searched head counts and group size included."""
    kit = check.Kit.read(KIT)
    vit, _ = check.search_vit(kit, check.vit_params(kit), None)
    point, _ = check.search_point(kit, check.point_params(kit), None, None)
    return kit, vit, point


def test_the_kit_is_reproduced(check, capsys):
    assert check.main(["--kit", str(KIT)]) == 0
    out = capsys.readouterr().out
    modalities = [m for m in torch.load(KIT / "outputs.pt", weights_only=True) if not m.startswith("_")]
    for modality in modalities:  # both input paths of every modality were compared
        assert f"{modality} (reference tensors)" in out and f"{modality} (raw inputs)" in out
    assert "BAD" not in out and "PASS" in out


def test_the_release_file_converts_with_every_key_accounted_for(tmp_path):
    convert = _tool("convert_regionblip_checkpoint")
    release = torch.load(KIT / "release_tiny.pth", weights_only=True)["model"]
    result = convert.convert_file(KIT / "release_tiny.pth", tmp_path / "ours.pth")
    dropped = [k for keys in result.dropped.values() for k in keys]
    assert len(result.converted) + len(dropped) == len(release)  # one key -> one tensor, or dropped
    assert convert.UNKNOWN not in result.dropped and convert.FROZEN not in result.dropped
    # the four adapters of every reference LoRA Linear: those of modalities a Q-Former never serves are dropped
    never = result.dropped[convert.NEVER_SERVED]
    assert any(k.startswith("Qformer.") and k.endswith("_pc") for k in never)
    assert any(k.startswith("Qformer_pc.") and k.endswith("_img_region") for k in never)
    assert all(k.startswith(("Qformer.", "Qformer_pc.")) for k in never)
    assert {k for k in release if "running_" in k or k.endswith("position_ids")} <= set(result.dropped[convert.BUFFER])
    assert (tmp_path / "ours.pth.options").read_text().splitlines() == result.options
    assert "model.modalities.pointcloud_region.region=box3d_corners_reference" in result.options
    text = convert.report(result)
    assert "never serves" in text and "point_encoder" in text  # the report names reasons and modules


@pytest.mark.parametrize("dropped_option, broken", [
    ("model.llm.bos_target_with_empty_prompt=true", "loss_llm"),
    ("model.modalities.pointcloud_region.region=box3d_corners_reference", "reg_pred"),
])
def test_a_convention_left_out_is_seen(check, sizes, tmp_path, dropped_option, broken):
    """Without one of the converter's options the reference's numbers are not reproduced, and the check says so."""
    kit, vit, point = sizes
    convert = _tool("convert_regionblip_checkpoint")
    result = convert.convert_file(KIT / "release_tiny.pth", tmp_path / "ours.pth")
    options = [o for o in result.options if o != dropped_option]
    model = RegionBLIP.from_config(config_from_dict(RegionBLIPConfig, check.model_dict(kit, vit, point, options),
                                                    "model")).eval()
    model.load_trainable_state_dict(result.converted)
    modality = "pointcloud_region"
    # the corners come from the region kind on the raw path only (the reference tensors hold its corners)
    make = check.raw_batch if broken == "reg_pred" else check.reference_batch
    rows = check.compare(check.run_modality(model, make(model, kit.inputs[modality], modality),
                                            kit.outputs[modality]), kit.outputs[modality])
    assert broken in {key for key, _, good in rows if not good}, rows
