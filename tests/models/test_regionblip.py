"""RegionBLIP at tiny size with random weights: which tensors train, adapter independence, PaFE, BLIP-2 loading,
generation, checkpoints and the reference-checkpoint converter. Offline; the assets are written once per module."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

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


def test_frozen_parts(model):
    assert not any(p.requires_grad for p in model.encoders.parameters())
    base = [n for n, p in model.qformers["blip2"].named_parameters() if ".lora_" not in n]
    assert base and not any(dict(model.qformers["blip2"].named_parameters())[n].requires_grad for n in base)
    assert all(p.requires_grad for p in model.qformers["point"].parameters())  # `frozen: false` in the YAML
    assert not any(p.requires_grad for n, p in model.llm.named_parameters() if ".lora_" not in n)
    model.train()
    assert not model.encoders.training and not model.qformers["blip2"].training and model.qformers["point"].training
    model.eval()


def test_adapters_are_independent(assets):
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


def test_pafe_makes_the_region_matter(model):
    batch = make_batch(model, "image_region")
    other = dict(batch, region_geometry=batch["region_geometry"].flip(0))
    assert not torch.allclose(query_outputs(model, batch), query_outputs(model, other))
    # the holistic modality has no PaFE: the same images with other boxes give the same outputs
    plain, plain_other = dict(batch, modality="image"), dict(other, modality="image")
    assert torch.equal(query_outputs(model, plain), query_outputs(model, plain_other))


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
    with pytest.raises(KeyError, match="box9d"):
        build(data)


def synthetic_blip2_state(model: RegionBLIP) -> dict[str, torch.Tensor]:
    """A LAVIS BLIP-2 (OPT) state dict at the tiny sizes: visual_encoder.*, ln_vision.*, Qformer.*, query_tokens,
    opt_proj.*, with values unlike the model's."""
    gen = torch.Generator().manual_seed(7)
    state = {k: torch.randn(v.shape, generator=gen) for k, v in model.encoders["vision"].state_dict().items()}
    fresh = type(model.qformers["blip2"])(model.cfg.qformers["blip2"].config)
    state.update({f"Qformer.{k}": torch.randn(v.shape, generator=gen) for k, v in fresh.state_dict().items()})
    hidden, width = model.cfg.num_query_tokens, model.cfg.qformers["blip2"].config.hidden_size
    state["query_tokens"] = torch.randn(1, hidden, width, generator=gen)
    state["opt_proj.weight"] = torch.randn(model.llm.hidden_size, width, generator=gen)
    state["opt_proj.bias"] = torch.randn(model.llm.hidden_size, generator=gen)
    return state


def blip2_config(assets, path: Path) -> dict:
    data = tiny_model_dict(assets)
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
    assert loaded.blip2_report == {"encoders.vision": [], "qformers.blip2": [], "heads.image": [],
                                   "heads.image_region": []}
    vit_key = next(k for k in state if k.startswith("visual_encoder.blocks.0.") and k.endswith("weight"))
    assert torch.equal(loaded.encoders["vision"].state_dict()[vit_key], state[vit_key])
    key = "bert.encoder.layer.0.attention.self.query.base_layer.weight"
    assert torch.equal(dict(loaded.qformers["blip2"].named_parameters())[key],
                       state["Qformer.bert.encoder.layer.0.attention.self.query.weight"])
    for name in ("image", "image_region"):
        assert torch.equal(loaded.heads[name].queries, state["query_tokens"])
        assert torch.equal(loaded.heads[name].llm_proj.weight, state["opt_proj.weight"])
    # BLIP-2's own image path is frozen and has no adapter; the region modality trains
    assert not loaded.heads["image"].queries.requires_grad and not loaded.heads["image"].llm_proj.weight.requires_grad
    assert loaded.heads["image_region"].queries.requires_grad
    assert not any(".lora_A.image." in n for n, _ in loaded.named_parameters())
    out = loaded(make_batch(loaded, "image"))
    assert all(torch.isfinite(v) for v in out.losses.values())


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
    assert set(short) == {"qformer_text_ids", "qformer_text_mask", "llm_target_ids", "llm_target_mask"}
    assert short["qformer_text_ids"].shape[1] < long["qformer_text_ids"].shape[1]
    assert long["llm_target_mask"][0, -1] == 0  # right padded


def test_itm_negatives_never_pick_the_positive():
    torch.manual_seed(0)
    sim = torch.randn(6, 6) + 50 * torch.eye(6)  # the positive dominates the softmax
    positives = torch.arange(6)
    draws = torch.stack([L.sample_hard_negatives(sim, positives) for _ in range(300)])
    assert not (draws == positives).any()
    assert {int(i) for i in draws[:, 0]} == {1, 2, 3, 4, 5}  # every other sample can be drawn


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


def reference_style(model: RegionBLIP) -> dict[str, torch.Tensor]:
    """Our trainable tensors renamed as the reference release names them (one shared text projection and
    temperature, `lora_A_img` suffixes, `Qformer_pc` for the point Q-Former, LoRA-wrapped Linears unwrapped)."""
    short = {"image": "img", "image_region": "img_region", "pointcloud": "pc", "pointcloud_region": "pc_region"}
    out = {}
    for name, value in model.trainable_state_dict().items():
        value = value.clone()
        parts = name.split(".")
        if ".lora_" in name:
            qformer_or_llm = {"blip2": "Qformer", "point": "Qformer_pc"}.get(parts[1]) if parts[0] == "qformers" \
                else "opt_model"
            path = ".".join(parts[2:parts.index(parts[-3])]) if parts[0] == "qformers" else ".".join(parts[2:-3])
            out[f"{qformer_or_llm}.{path}.{parts[-3]}_{short[parts[-2]]}"] = value
        elif parts[0] == "qformers":
            out["Qformer_pc." + ".".join(parts[2:]).replace(".base_layer.", ".")] = value
        elif parts[0] == "encoder_adapters":
            out[f"pc_adapter.{parts[-1]}"] = value
        else:
            m, part = short[parts[1]], parts[2]
            tail = ".".join(parts[3:])
            out[{
                "queries": f"query_tokens_{m}", "temp": "temp", "llm_proj": f"opt_proj_{m}.{tail}",
                "vision_proj": f"stage1_proj_{m}.{tail}", "text_proj": f"stage1_proj_text.{tail}",
                "itm_head": f"{m}_itm_head.{tail}", "reg_head": f"reg_{m}.{tail}",
                "pafe": f"{m}_posembed.{'.'.join(parts[4:])}",
            }[part]] = value
    out["visual_encoder.cls_token"] = torch.zeros(1)  # frozen parts the converter leaves out
    return out


def test_converter_maps_a_reference_checkpoint(assets, tmp_path):
    data = tiny_model_dict(assets)
    for m in data["modalities"].values():  # the reference shares one text projection and one temperature
        m["losses"].pop("itm", None)
    model = build(data)
    with torch.no_grad():
        shared_text = {k: v.clone() for k, v in model.heads["image"].text_proj.state_dict().items()}
        for heads in model.heads.values():
            heads.text_proj.load_state_dict(shared_text)
            heads.temp.copy_(model.heads["image"].temp)
    torch.save({"model": reference_style(model)}, tmp_path / "ref.pth")
    convert = _converter()
    converted, unmapped = convert.convert_file(tmp_path / "ref.pth", tmp_path / "ours.pth", blip2_image_modality="")
    assert unmapped == ["visual_encoder.cls_token"]
    other = build(data, seed=3)
    other.load_trainable_state_dict(torch.load(tmp_path / "ours.pth", weights_only=True)["model"])
    for name, value in model.trainable_state_dict().items():
        assert torch.equal(dict(other.named_parameters())[name], value), name
    assert len(converted) == len(model.trainable_state_dict())


def test_opt_loss_on_caption_logits_equals_full_sequence_loss(model):
    """The LLM loss computes logits only at caption positions; it equals transformers' own loss over the whole
    sequence with the soft prompt and the prompt masked out of the labels."""
    batch = make_batch(model, "image")
    llm = model.llm
    torch.manual_seed(0)
    soft_prompt = torch.randn(batch["llm_target_ids"].shape[0], 3, llm.hidden_size)
    prompt_ids = model.prompt_ids["image"]
    with lora.active_adapter(llm.model, None):
        ours = llm.loss(soft_prompt, prompt_ids, batch["llm_target_ids"], batch["llm_target_mask"])
        embeds, mask = llm._inputs(soft_prompt, prompt_ids)
        labels = batch["llm_target_ids"].masked_fill(batch["llm_target_mask"] == 0, -100)
        reference = llm.model(
            inputs_embeds=torch.cat([embeds, llm._embed(batch["llm_target_ids"])], dim=1),
            attention_mask=torch.cat([mask, batch["llm_target_mask"]], dim=1),
            labels=torch.cat([torch.full(mask.shape, -100, dtype=labels.dtype), labels], dim=1),
        ).loss
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
