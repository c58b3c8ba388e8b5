"""RegionBLIP at tiny size with random weights: which tensors train, adapter independence, PaFE, BLIP-2 loading,
generation, checkpoints and the reference-checkpoint converter. Offline; the assets are written once per module."""

from __future__ import annotations

import importlib.util
import re
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import lavis.models.eva_vit  # noqa: F401  (registers eva_vit)
import lavis.models.pointbert  # noqa: F401  (registers pointbert)
import lavis.models.regionblip  # noqa: F401  (registers regionblip, box2d, box3d_corners)
from lavis.common.config import CONFIG_ROOT
from lavis.common.config_schema import ConfigError, config_from_dict
from lavis.common.registry import MODELS, REGION_KINDS
from lavis.models import lora
from lavis.models.regionblip import losses as L
from lavis.models.regionblip.config import RegionBLIPConfig, validate
from lavis.models.regionblip.model import RegionBLIP
from lavis.models.regionblip.region import register_region_kind
from lavis.models.tiny_assets import write_tiny_assets

TEXTS = ["a red car on the street", "a dog on the left of the sofa", "a small white table", "a cat on a couch"]
GEOMETRY = {"image": 4, "image_region": 4, "pointcloud": 24, "pointcloud_region": 24}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_tiny_assets(tmp_path_factory.mktemp("tiny_assets"))



def tiny_model_dict(assets, family: str = "opt") -> dict:
    data = OmegaConf.to_container(OmegaConf.load(CONFIG_ROOT / RegionBLIP.DEFAULT_CONFIGS["tiny"]))["model"]
    for entry in data["qformers"].values():
        entry["config"]["tokenizer_path"] = str(assets.bert_tokenizer)
    data["llm"]["family"] = family
    data["llm"]["path"] = str(assets.opt if family == "opt" else assets.t5)
    return data


def build(data: dict, seed: int = 0) -> RegionBLIP:
    torch.manual_seed(seed)
    model = RegionBLIP.from_config(config_from_dict(RegionBLIPConfig, data, "model"))
    return model.eval()


def make_batch(model: RegionBLIP, modality: str, *, seed: int = 0, geometry_dim: int | None = None, n: int = 4):
    gen = torch.Generator().manual_seed(seed)
    texts = TEXTS[:n]
    batch = {
        "modality": modality,
        "image": torch.randn(n, 3, 32, 32, generator=gen),
        "points": torch.randn(n, 64, 3, generator=gen),
        "region_geometry": torch.rand(n, geometry_dim or GEOMETRY[modality], generator=gen),
        "text_input": texts,
    }
    batch.update(model.text_tokenizer(texts, modality))
    return batch


def owned_by(model: RegionBLIP, modality: str) -> set[str]:
    """The trainable tensors a batch of `modality` may touch: its heads, its adapters, its encoder's width adapter,
    and the base weights of its Q-Former when that one is not frozen."""
    m = model.cfg.modalities[modality]
    qformer_trains = not model.cfg.qformers[m.qformer].frozen
    names = set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_lora = ".lora_A." in name or ".lora_B." in name
        if (
            name.startswith(f"heads.{modality}.")
            or (is_lora and f".{modality}." in name and (name.startswith(f"qformers.{m.qformer}.") or
                                                         name.startswith("llm.")))
            or name.startswith(f"encoder_adapters.{m.encoder}.")
            or (qformer_trains and name.startswith(f"qformers.{m.qformer}.") and not is_lora)
        ):
            names.add(name)
    return names


@pytest.fixture(scope="module")
def model(assets):
    return build(tiny_model_dict(assets))


def query_outputs(model: RegionBLIP, batch: dict) -> torch.Tensor:
    with torch.no_grad(), model._adapter_scope(batch["modality"]):
        return model.extract(batch).query_outputs


@pytest.mark.parametrize("modality", ["image", "image_region", "pointcloud", "pointcloud_region"])
def test_forward_backward_touches_exactly_the_modality_tensors(model, modality):
    model.zero_grad(set_to_none=True)
    out = model(make_batch(model, modality))
    assert set(out.losses) == set(model.loss_weights(modality))
    assert all(torch.isfinite(v) for v in out.losses.values()), out.losses
    sum(model.loss_weights(modality)[k] * v for k, v in out.losses.items()).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == owned_by(model, modality)
    assert not any(n.startswith("encoders.") for n in with_grad)
    others = [m for m in model.cfg.modalities if m != modality]
    assert not any(n.startswith(f"heads.{o}.") or f".{o}.weight" in n for n in with_grad for o in others)
    model.zero_grad(set_to_none=True)


def test_a_shared_itc_text_head_serves_every_modality(assets):
    model = build({**tiny_model_dict(assets), "shared_itc_text_head": True})
    assert all(h.text_proj is None and h.temp is None for h in model.heads.values())
    for modality in ("image_region", "pointcloud"):
        model.zero_grad(set_to_none=True)
        out = model(make_batch(model, modality))
        (out.losses["itc"] + out.losses["llm"]).backward()
        assert model.itc_text.text_proj.weight.grad is not None and model.itc_text.temp.grad is not None, modality
    assert {n for n in model.trainable_state_dict() if "text_proj" in n or n.endswith("temp")} == {
        "itc_text.text_proj.weight", "itc_text.text_proj.bias", "itc_text.temp"}


def test_frozen_parts(model):
    assert not any(p.requires_grad for p in model.encoders.parameters())
    base = [n for n, p in model.qformers["blip2"].named_parameters() if ".lora_" not in n]
    assert base and not any(dict(model.qformers["blip2"].named_parameters())[n].requires_grad for n in base)
    assert all(p.requires_grad for p in model.qformers["point"].parameters())  # `frozen: false` in the YAML
    assert not any(p.requires_grad for n, p in model.llm.named_parameters() if ".lora_" not in n)
    model.train()
    assert not model.encoders.training and not model.qformers["blip2"].training and model.qformers["point"].training
    model.eval()


def test_adapters_are_independent(assets, one_thread):
    model = build(tiny_model_dict(assets))
    with torch.no_grad():  # non-zero B, so that every adapter changes its modality's outputs
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(std=0.5)
    batch_a, batch_b = make_batch(model, "image_region"), make_batch(model, "image")
    before_a, before_b = query_outputs(model, batch_a), query_outputs(model, batch_b)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.05)
    out = model(batch_a)
    sum(out.losses.values()).backward()
    optimizer.step()
    assert not torch.equal(query_outputs(model, batch_a), before_a)
    assert torch.equal(query_outputs(model, batch_b), before_b)


def test_zero_init_lora_keeps_the_plain_blip2_path(model):
    batch = make_batch(model, "image")
    with_adapter = query_outputs(model, batch)
    qformer = model.qformers["blip2"]
    with torch.no_grad(), lora.active_adapter(qformer, None):
        tokens = model.encoders["vision"](batch["image"])
        queries = model.heads["image"].queries.expand(4, -1, -1)
        mask = torch.ones(tokens.shape[:2])
        plain = qformer(query_embeds=queries, encoder_hidden_states=tokens, encoder_attention_mask=mask)
    assert torch.equal(with_adapter, plain)


@pytest.mark.parametrize("modality", ["image_region", "pointcloud_region"])  # box2d, box3d_corners
def test_pafe_makes_the_region_matter(assets, model, modality):
    batch = make_batch(model, modality)
    other = dict(batch, region_geometry=batch["region_geometry"].flip(0))  # every sample gets another box
    assert not torch.allclose(query_outputs(model, batch), query_outputs(model, other))
    # PaFE off as configs/train/*_no_pafe.yaml turns it off: the same modality with `region: null` (and no REG)
    data = tiny_model_dict(assets)
    data["modalities"][modality].update(region=None, losses={**data["modalities"][modality]["losses"], "reg": 0})
    no_pafe = build(data)
    assert no_pafe.heads[modality].pafe is None
    assert torch.equal(query_outputs(no_pafe, batch), query_outputs(no_pafe, other))


def test_a_new_region_kind_and_modality_need_no_code(assets):
    if "sphere_test" not in REGION_KINDS:
        register_region_kind("sphere_test", 4, "centre (x, y, z) and radius, normalised")
    data = tiny_model_dict(assets)
    data["modalities"]["pointcloud_sphere"] = {
        "encoder": "point", "qformer": "point", "region": "sphere_test", "losses": {"itc": 1, "llm": 1, "reg": 0.5},
    }
    model = build(data)
    out = model(make_batch(model, "pointcloud_sphere", geometry_dim=4))
    assert set(out.losses) == {"itc", "llm", "reg"}
    sum(out.losses.values()).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    # no ITG: the trainable point Q-Former's LM head gets no gradient, everything else it owns does
    assert with_grad <= owned_by(model, "pointcloud_sphere")
    own = {n for n, p in model.named_parameters() if p.requires_grad and (
        n.startswith("heads.pointcloud_sphere.") or ".pointcloud_sphere.weight" in n)}
    assert own and own <= with_grad
    assert "heads.pointcloud_sphere.pafe.mlp.0.weight" in with_grad
    assert model.heads["pointcloud_sphere"].pafe.mlp[0].in_features == 4


def test_config_errors_name_the_block(assets):
    data = tiny_model_dict(assets)
    data["encoders"]["vision"]["params"]["widht"] = 8
    with pytest.raises(ConfigError, match="model.encoders.vision.params"):
        build(data)
    data = tiny_model_dict(assets)
    data["modalities"]["image"]["losses"]["itx"] = 1
    with pytest.raises(ConfigError, match="unknown term"):
        build(data)
    data = tiny_model_dict(assets)
    data["modalities"]["image"]["region"] = "box9d"
    with pytest.raises(ConfigError, match="model.modalities.image.region: unknown region kind 'box9d'"):
        build(data)


def synthetic_blip2_state(model: RegionBLIP) -> dict[str, torch.Tensor]:
    """A LAVIS BLIP-2 (OPT, stage 1 + 2) state dict at the tiny sizes: visual_encoder.*, ln_vision.*, Qformer.*,
    query_tokens, opt_proj.*, vision_proj.*, text_proj.*, itm_head.*, temp, with values unlike the model's."""
    gen = torch.Generator().manual_seed(7)
    state = {k: torch.randn(v.shape, generator=gen) for k, v in model.encoders["vision"].state_dict().items()}
    fresh = type(model.qformers["blip2"])(model.cfg.qformers["blip2"].config)
    state.update({f"Qformer.{k}": torch.randn(v.shape, generator=gen) for k, v in fresh.state_dict().items()})
    hidden, width = model.cfg.num_query_tokens, model.cfg.qformers["blip2"].config.hidden_size
    state["query_tokens"] = torch.randn(1, hidden, width, generator=gen)
    for name, out in (("opt_proj", model.llm.hidden_size), ("vision_proj", model.cfg.embed_dim),
                      ("text_proj", model.cfg.embed_dim), ("itm_head", 2)):
        state[f"{name}.weight"] = torch.randn(out, width, generator=gen)
        state[f"{name}.bias"] = torch.randn(out, generator=gen)
    state["temp"] = torch.tensor(0.05)  # LAVIS: a 0-d parameter
    return state


def blip2_config(assets, path: Path, data: dict | None = None) -> dict:
    data = data or tiny_model_dict(assets)
    data["blip2_checkpoint_path"] = str(path)
    data["encoders"]["vision"]["init_from_blip2"] = True
    data["qformers"]["blip2"]["init_from_blip2"] = True
    data["modalities"]["image"].update(init_from_blip2=True, lora=False)
    data["modalities"]["image_region"]["init_from_blip2"] = True
    return data


def test_blip2_checkpoint_loads_and_freezes_the_image_path(assets, model, tmp_path):
    state = synthetic_blip2_state(model)
    torch.save({"model": state}, tmp_path / "blip2.pth")
    loaded = build(blip2_config(assets, tmp_path / "blip2.pth"))
    parts = {"encoders.vision": [], "qformers.blip2": [], "heads.image": [], "heads.image_region": []}
    assert loaded.blip2_report == parts
    assert loaded.blip2_load.missing == parts and loaded.blip2_load.unexpected == parts
    assert loaded.blip2_load.unused == {}
    vit_key = next(k for k in state if k.startswith("visual_encoder.blocks.0.") and k.endswith("weight"))
    assert torch.equal(loaded.encoders["vision"].state_dict()[vit_key], state[vit_key])
    key = "bert.encoder.layer.0.attention.self.query.base_layer.weight"
    assert torch.equal(dict(loaded.qformers["blip2"].named_parameters())[key],
                       state["Qformer.bert.encoder.layer.0.attention.self.query.weight"])
    for name in ("image", "image_region"):  # image_region has ITC but no ITM: no itm_head to fill
        heads = loaded.heads[name]
        assert torch.equal(heads.queries, state["query_tokens"])
        for part in ("llm_proj", "vision_proj", "text_proj"):
            assert torch.equal(getattr(heads, part).weight, state[f"{part.replace('llm', 'opt')}.weight"]), part
            assert torch.equal(getattr(heads, part).bias, state[f"{part.replace('llm', 'opt')}.bias"]), part
        assert torch.equal(heads.temp, state["temp"])
    assert torch.equal(loaded.heads["image"].itm_head.weight, state["itm_head.weight"])
    # BLIP-2's own image path is frozen and has no adapter; the region modality trains
    assert not any(p.requires_grad for p in loaded.heads["image"].parameters())
    assert loaded.heads["image_region"].queries.requires_grad
    assert not any(".lora_A.image." in n for n, _ in loaded.named_parameters())
    out = loaded(make_batch(loaded, "image"))
    assert all(torch.isfinite(v) for v in out.losses.values())


def test_blip2_loading_reports_unexpected_and_unused_keys(assets, model, tmp_path):
    state = synthetic_blip2_state(model)
    state["t5_proj.weight"], state["t5_proj.bias"] = torch.zeros(5, 32), torch.zeros(5)  # another LLM family's
    state["Qformer.bert.encoder.layer.0.attention.self.extra.weight"] = torch.zeros(2)
    torch.save({"model": state}, tmp_path / "blip2.pth")
    loaded = build(blip2_config(assets, tmp_path / "blip2.pth"))
    assert loaded.blip2_load.unused == {"t5_proj": ["t5_proj.bias", "t5_proj.weight"]}
    assert loaded.blip2_load.unexpected["qformers.blip2"] == ["bert.encoder.layer.0.attention.self.extra.weight"]
    assert not any(loaded.blip2_load.missing.values())


@pytest.mark.parametrize("absent", ["query_tokens", "opt_proj.weight"])
def test_a_frozen_blip2_path_needs_its_queries_and_projection(assets, model, tmp_path, absent):
    state = synthetic_blip2_state(model)
    del state[absent]
    path = tmp_path / "blip2.pth"
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}.*modality 'image'.*'{re.escape(absent)}'"):
        build(blip2_config(assets, path))
    # a path that trains may start without them: they are only reported
    data = blip2_config(assets, path)
    data["freeze_blip2_pretrain"] = False
    ours = {"query_tokens": "queries", "opt_proj.weight": "llm_proj.weight"}[absent]
    assert build(data).blip2_report["heads.image"] == [ours]


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_blip2_pretrain_keeps_the_whole_image_path(assets, model, tmp_path, freeze):
    """freeze_blip2_pretrain keeps every tensor of BLIP-2's own image path (queries, LLM and ITC projections,
    temperature, ITM head) as loaded, so the path stays BLIP-2's function; without it they all train."""
    torch.save({"model": synthetic_blip2_state(model)}, tmp_path / "blip2.pth")
    data = blip2_config(assets, tmp_path / "blip2.pth")
    data["freeze_blip2_pretrain"] = freeze
    # the PaFE-off ablation's region modality (region: null, its own adapter) is a new modality: it trains either way
    losses = data["modalities"]["image_region"]["losses"]
    data["modalities"]["image_region"].update(region=None, losses={**losses, "reg": 0})
    loaded = build(data)
    image = dict(loaded.heads["image"].named_parameters())
    linears = ("llm_proj", "vision_proj", "text_proj", "itm_head")
    assert set(image) == {"queries", "temp"} | {f"{part}.{leaf}" for part in linears for leaf in ("weight", "bias")}
    assert all(p.requires_grad != freeze for p in image.values())
    assert any(k.startswith("heads.image.") for k in loaded.trainable_state_dict()) != freeze
    assert all(p.requires_grad for p in loaded.heads["image_region"].parameters())
    loaded.train()
    if freeze:
        with pytest.raises(ValueError, match="freeze_blip2_pretrain"):
            loaded(make_batch(loaded, "image"))
    else:
        out = loaded(make_batch(loaded, "image"))
        sum(out.losses.values()).backward()
        assert {n for n, p in loaded.named_parameters() if p.grad is not None} == {f"heads.image.{n}" for n in image}


def test_blip2_shape_mismatch_names_the_key(assets, model, tmp_path):
    state = synthetic_blip2_state(model)
    state["opt_proj.weight"] = torch.zeros(3, 3)
    torch.save({"model": state}, tmp_path / "blip2.pth")
    with pytest.raises(ValueError, match="llm_proj.weight"):
        build(blip2_config(assets, tmp_path / "blip2.pth"))


@pytest.mark.parametrize("family", ["opt", "t5"])
def test_generation_returns_one_string_per_sample(assets, family):
    data = tiny_model_dict(assets, family)
    if family == "t5":
        data["lora"]["llm"]["target_modules"] = ["q", "v"]
        data["modalities"]["image_region"]["prefix"] = "a photo of"
    model = build(data)
    for modality in ("image_region", "pointcloud"):
        captions = model.generate(make_batch(model, modality, n=3))
        assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
    assert len(model.generate(make_batch(model, "image", n=2), num_beams=1, max_new_tokens=3)) == 2
    with pytest.raises(TypeError):
        model.generate(make_batch(model, "image", n=2), beams=3)
    out = model(make_batch(model, "image_region"))
    assert torch.isfinite(out.losses["llm"])


def test_text_tokenizer_pads_dynamically_and_pickles(model):
    import pickle

    tok = pickle.loads(pickle.dumps(model.text_tokenizer))
    short, long = tok(["a cat"], "image"), tok(["a cat", "a small white table next to the bed"], "image")
    assert set(short) == {"qformer_text_ids", "qformer_text_mask", "llm_target_ids", "llm_target_mask",
                          "llm_prompt_ids", "llm_prompt_mask", "llm_region_slots"}
    assert short["qformer_text_ids"].shape[1] < long["qformer_text_ids"].shape[1]
    assert long["llm_target_mask"][0, -1] == 0  # right padded


def test_itm_negatives_never_pick_the_positive():
    torch.manual_seed(0)
    sim = torch.randn(6, 6) + 50 * torch.eye(6)  # the positive dominates the softmax
    positives = torch.arange(6)
    draws = torch.stack([L.sample_hard_negatives(sim, positives) for _ in range(300)])
    assert not (draws == positives).any()
    assert {int(i) for i in draws[:, 0]} == {1, 2, 3, 4, 5}  # every other sample can be drawn


def test_itm_negatives_of_non_finite_similarities_are_drawn_uniformly():
    sim = torch.randn(4, 4)
    sim[1, 2], sim[3] = float("nan"), float("inf")
    draws = torch.stack([L.sample_hard_negatives(sim, torch.arange(4)) for _ in range(200)])
    assert not (draws == torch.arange(4)).any()
    assert {int(i) for i in draws[:, 3]} == {0, 1, 2}  # the inf row: any negative


def test_itm_of_a_lone_sample_or_a_corrupt_input_does_not_raise(model):
    """A last batch of one, or a NaN image, gives the image modality finite-or-skippable losses, not an error."""
    lone = make_batch(model, "image", n=1)
    assert model(lone).losses["itm"] == 0
    corrupt = make_batch(model, "image", n=2)
    corrupt["image"][0] = float("nan")
    losses = model(corrupt).losses
    assert not torch.isfinite(losses["itc"])  # the runner's non-finite check skips and counts this step


def test_trainable_state_dict_round_trips(assets):
    model, other = build(tiny_model_dict(assets)), build(tiny_model_dict(assets))  # same frozen encoders
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    state = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    batch = make_batch(model, "pointcloud_region")
    assert not torch.allclose(query_outputs(other, batch), query_outputs(model, batch))
    other.load_trainable_state_dict(state)
    assert torch.equal(query_outputs(other, batch), query_outputs(model, batch))
    with pytest.raises(KeyError):
        other.load_trainable_state_dict({k: v for k, v in state.items() if "heads.image." not in k})


def test_registered_flavours_validate(assets):
    """Every flavour's YAML fills the Config and passes every check once its `???` paths are set."""
    for flavour, rel in MODELS.get("regionblip").DEFAULT_CONFIGS.items():
        block = OmegaConf.create(OmegaConf.to_container(OmegaConf.load(CONFIG_ROOT / rel)["model"]))
        for key in OmegaConf.missing_keys(block):
            OmegaConf.update(block, key, "/some/path")
        cfg = config_from_dict(RegionBLIPConfig, block, f"model ({flavour})")
        encoder_cfgs = validate(cfg)
        assert set(cfg.modalities) == {"image", "image_region", "pointcloud", "pointcloud_region"}, flavour
        assert cfg.lora.qformer.rank in (4, 8) and cfg.generation.num_beams >= 1
        if flavour != "tiny":
            assert encoder_cfgs["vision"].width == 1408 and cfg.generation.min_new_tokens == 8
            # the text side that stage-2 BLIP-2 files lack comes from bert-base-uncased, in every Q-Former
            assert all(e.config.bert_init_path for e in cfg.qformers.values()), flavour


def _converter():
    spec = importlib.util.spec_from_file_location("convert_rb", REPO / "tools" / "convert_regionblip_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SHORT = {"image": "img", "image_region": "img_region", "pointcloud": "pc", "pointcloud_region": "pc_region"}


def _reference_leaf(rest: str) -> str:
    """`<path>.lora_A.<modality>.weight` -> `<path>.lora_A_<m>`; a LoRA-wrapped Linear's `base_layer` unwrapped."""
    lora_tensor = re.fullmatch(r"(.+)\.(lora_[AB])\.(\w+)\.weight", rest)
    if lora_tensor:
        return f"{lora_tensor[1]}.{lora_tensor[2]}_{SHORT[lora_tensor[3]]}"
    return rest.replace(".base_layer.", ".")


def reference_style(model: RegionBLIP, family: str = "opt") -> dict[str, torch.Tensor]:
    """The model saved as the reference release is: LAVIS saves the whole state dict minus the parameters that do not
    train, so tied aliases (cls.predictions.decoder.*, the LLM's tied embeddings) and buffers stay, and its BERT has a
    position_ids buffer ours lacks; with the reference's names (one shared text projection and temperature,
    `lora_A_img` suffixes, `Qformer_pc` for the point Q-Former, `{opt,t5}_model`, `{opt,t5}_proj_<m>`)."""
    params = dict(model.named_parameters())
    out = {}
    for name, value in model.state_dict().items():
        if name in params and not params[name].requires_grad:
            continue
        top, key, rest = name.split(".", 2) if name.count(".") >= 2 else (*name.split("."), "")
        value = value.clone()
        if top == "itc_text":
            out["temp" if key == "temp" else f"stage1_proj_text.{rest}"] = value
        elif top == "encoders":
            out[rest if key == "vision" else f"point_encoder.{rest}"] = value
        elif top == "qformers":
            out[f"{ {'blip2': 'Qformer', 'point': 'Qformer_pc'}[key]}.{_reference_leaf(rest)}"] = value
        elif top == "llm":
            out[f"{family}_model.{_reference_leaf(rest)}"] = value
        elif top == "encoder_adapters":
            out[f"pc_adapter.{rest}"] = value
        else:
            m, (part, _, tail) = SHORT[key], rest.partition(".")
            out[{
                "queries": f"query_tokens_{m}", "temp": "temp", "llm_proj": f"{family}_proj_{m}.{tail}",
                "vision_proj": f"stage1_proj_{m}.{tail}", "text_proj": f"stage1_proj_text.{tail}",
                "itm_head": f"{m}_itm_head.{tail}", "reg_head": f"reg_{m}.{tail}",
                "pafe": f"{m}_posembed.{tail.removeprefix('mlp.')}",
            }[part]] = value
    for qformer in ("Qformer", "Qformer_pc"):
        positions = model.cfg.qformers["blip2"].config.max_position_embeddings
        out[f"{qformer}.bert.embeddings.position_ids"] = torch.arange(positions)[None]
    return out


def reference_model(data: dict) -> RegionBLIP:
    """A model shaped as the reference (reference_config: one text projection and temperature for all)."""
    return build(data)


def reference_config(assets, family: str = "opt") -> dict:
    data = tiny_model_dict(assets, family)
    data["shared_itc_text_head"] = True
    if family == "t5":
        data["lora"]["llm"]["target_modules"] = ["q", "v"]  # the reference's T5 LoRA targets
    for name, m in data["modalities"].items():  # the reference's ITM head is the image's only
        if name != "image":
            m["losses"].pop("itm", None)
    return data


@pytest.mark.parametrize("family", ["opt", "t5"])
def test_converter_maps_a_reference_checkpoint(assets, tmp_path, family):
    data = reference_config(assets, family)
    model = reference_model(data)
    state = reference_style(model, family)
    assert {"Qformer_pc.cls.predictions.decoder.bias", "Qformer_pc.cls.predictions.decoder.weight",
            "Qformer_pc.bert.embeddings.position_ids", f"{family}_proj_img.weight"} <= set(state)
    torch.save({"model": state}, tmp_path / "ref.pth")
    convert = _converter()
    result = convert.convert_file(tmp_path / "ref.pth", tmp_path / "ours.pth", blip2_image_modality="")
    # only tied aliases and buffers are dropped; nothing of the trainable point Q-Former
    assert set(result.dropped) <= {convert.TIED_ALIAS, convert.BUFFER, convert.FROZEN}, result.dropped
    # T5's embeddings are tied to `shared` (frozen, not saved): the aliases are the LLM's frozen weights
    assert all(k.startswith(f"{family}_model.") for k in result.dropped.get(convert.FROZEN, []))
    assert not any("lora_" in k or k.startswith("Qformer_pc.bert.encoder") for k in result.unmapped)
    assert "model.shared_itc_text_head=true" in (tmp_path / "ours.pth.options").read_text().splitlines()
    other = build(data, seed=3)
    other.load_trainable_state_dict(torch.load(tmp_path / "ours.pth", weights_only=True)["model"])
    for name, value in model.trainable_state_dict().items():
        assert torch.equal(dict(other.named_parameters())[name], value), name


@pytest.mark.parametrize("trained_image_adapter", [False, True])
def test_converter_drops_the_blip2_image_path(assets, tmp_path, trained_image_adapter):
    """The default --blip2-image-modality image drops that modality's tensors (our config keeps BLIP-2's), and warns
    when its LoRA B is not zero: the reference then trained the image adapter, and dropping it changes the path."""
    data = reference_config(assets)
    model = reference_model(data)
    if trained_image_adapter:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".lora_B.image." in name:
                    p.normal_()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _converter().convert_state_dict(reference_style(model))
    assert any("lora_B_img" in str(w.message) for w in caught) == trained_image_adapter
    path = result.dropped[_converter().BLIP2_PATH]
    assert path and all(re.search(r"(_img$|^query_tokens_img$|^opt_proj_img\.)", k) for k in path), path
    # its ITC / ITM heads are kept: a stage-2 BLIP-2 file lacks them, so they train here as in the reference
    image = {k for k in result.converted if k.startswith("heads.image.") or ".image." in k}
    assert image == {f"heads.image.{p}.{leaf}" for p in ("vision_proj", "itm_head") for leaf in ("weight", "bias")}
    # the rest loads into a config whose image path is BLIP-2's (a stage-2 file), frozen and without an adapter
    stage2 = {k: v for k, v in synthetic_blip2_state(model).items()
              if not k.startswith(("vision_proj.", "text_proj.", "itm_head.", "temp"))}
    torch.save({"model": stage2}, tmp_path / "blip2.pth")
    ours = build(blip2_config(assets, tmp_path / "blip2.pth", reference_config(assets)))
    ours.load_trainable_state_dict(result.converted)


def test_a_checkpoint_of_the_other_itc_text_layout_is_refused_saying_which(assets):
    per_modality = build(tiny_model_dict(assets)).trainable_state_dict()
    shared = build({**tiny_model_dict(assets), "shared_itc_text_head": True})
    with pytest.raises(KeyError, match="set model.shared_itc_text_head=false"):
        shared.load_trainable_state_dict(per_modality)
    with pytest.raises(KeyError, match="set model.shared_itc_text_head=true"):
        build(tiny_model_dict(assets)).load_trainable_state_dict(shared.trainable_state_dict())


def test_converter_refuses_a_broken_tie():
    convert = _converter()
    bias = torch.randn(5)
    state = {"Qformer_pc.cls.predictions.bias": bias, "Qformer_pc.cls.predictions.decoder.bias": bias.clone()}
    assert set(convert.convert_state_dict(state, "").converted) == {"qformers.point.cls.predictions.bias"}
    state["Qformer_pc.cls.predictions.decoder.bias"] = bias + 1
    with pytest.raises(ValueError, match="decoder.bias"):
        convert.convert_state_dict(state, "")


def test_converter_refuses_a_pickle_naming_the_file(tmp_path, capsys):
    import pathlib

    src, dst = tmp_path / "release.pth", tmp_path / "out.pth"
    torch.save({"model": {"query_tokens_img_region": torch.zeros(1, 32, 768)}, "args": pathlib.PurePosixPath("x")},
               src)  # an object weights-only loading refuses: a pickle that could run code
    with pytest.raises(SystemExit) as refused:
        _converter().main([str(src), str(dst)])
    assert str(refused.value).startswith(f"error: {src}: refused: it pickles a Python object (pathlib.PurePosixPath)")
    assert "torch.save({'model': model.state_dict()}, path)" in str(refused.value)
    src.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as refused:
        _converter().main([str(src), str(dst)])
    assert str(refused.value).startswith(f"error: {src}: refused: it is no torch-saved state dict")
    assert not dst.exists() and capsys.readouterr().out == ""


class HostCopies(TorchDispatchMode):
    """Records every op that takes a host tensor and yields a tensor elsewhere: a host-to-device copy."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if any(t.device.type == "cpu" for t in inputs) and any(t.device.type != "cpu" for t in outputs):
            self.seen.append(str(func))
        return out


def test_step_tensors_live_on_the_model_device(assets):
    """The LLM input (instruction ids from the batch, region soft prompts spliced at their slots) and the ITM labels
    are built on the device without a copy from the host (the meta device stands in for a GPU)."""
    model = build(tiny_model_dict(assets))
    batch = make_batch(model, "image_region")
    model.to("meta")
    on_device = {k: v.to("meta") for k, v in batch.items() if torch.is_tensor(v)}
    rows = batch["region_geometry"].shape[0]
    with HostCopies() as copies:
        embeds, _ = model.llm.prompt_inputs(
            on_device["llm_prompt_ids"], on_device["llm_prompt_mask"], on_device["llm_region_slots"],
            torch.zeros(rows, model.cfg.num_query_tokens, model.llm.hidden_size, device="meta"))
        L.matching_loss(torch.zeros(6, 2, device="meta"), 2)
    assert embeds.device.type == "meta" and copies.seen == []


def test_opt_loss_on_caption_logits_equals_full_sequence_loss(model):
    """The LLM loss computes logits only at caption positions; it equals transformers' own loss over the whole
    sequence with the soft prompt and the prompt masked out of the labels."""
    batch = make_batch(model, "image")
    llm = model.llm
    torch.manual_seed(0)
    soft_prompt = torch.randn(batch["llm_target_ids"].shape[0], 3, llm.hidden_size)
    with lora.active_adapter(llm.model, None):
        embeds, mask = llm.prompt_inputs(batch["llm_prompt_ids"], batch["llm_prompt_mask"], batch["llm_region_slots"],
                                         None, lead=soft_prompt)
        ours = llm.loss(embeds, mask, batch["llm_target_ids"], batch["llm_target_mask"])
        labels = batch["llm_target_ids"].masked_fill(batch["llm_target_mask"] == 0, -100)
        reference = llm.model(
            inputs_embeds=torch.cat([embeds, llm._embed(batch["llm_target_ids"])], dim=1),
            attention_mask=torch.cat([mask, batch["llm_target_mask"]], dim=1),
            labels=torch.cat([torch.full(mask.shape, -100, dtype=labels.dtype), labels], dim=1),
        ).loss
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
