"""Regions of any shape in free-form instructions: the placeholder layout for OPT and T5, the LLM loss on answers
only, batches whose samples hold different numbers of regions, mask regions against box regions, and the config
rules of templates. Tiny models with random weights."""

from __future__ import annotations

import pytest
import torch

from lavis.common.config_schema import ConfigError, config_from_dict
from lavis.datasets.loaders import Collator
from lavis.models import lora
from lavis.models.llm import IGNORE_INDEX
from lavis.models.prompt_layout import PromptLayout
from lavis.models.regionblip.config import RegionBLIPConfig, validate
from tests.models.test_regionblip import assets, build, tiny_model_dict  # noqa: F401  (assets: a fixture)

Q = 8  # the tiny flavour's num_query_tokens


def _family_dict(assets, family):  # noqa: F811
    data = tiny_model_dict(assets, family)
    if family == "t5":
        data["lora"]["llm"]["target_modules"] = ["q", "v"]
    return data


@pytest.fixture(scope="module", params=["opt", "t5"])
def family_model(request, assets):  # noqa: F811
    data = _family_dict(assets, request.param)
    data["modalities"]["image_region"]["losses"] = {"llm": 1}
    data["modalities"]["pointcloud_region"]["losses"] = {"llm": 1, "reg": 1}
    return build(data)


def _image_item(k: int, seed: int, instruction: str | None, answer: str) -> dict:
    gen = torch.Generator().manual_seed(seed)
    item = {"sample_id": f"s{seed}", "image": torch.randn(3, 32, 32, generator=gen),
            "region_geometry": torch.rand(k, 4, generator=gen).sort(dim=1).values, "text_input": answer}
    if instruction is not None:
        item["instruction"] = instruction
    return item


MIXED = [(1, "What colour is <region>?", "red"),
         (2, "Is <region> left of <region>?", "yes"),
         (3, "Which is larger, <region>, <region> or <region>?", "the second one")]


def _mixed_batch(model) -> dict:
    items = [_image_item(k, i, text, answer) for i, (k, text, answer) in enumerate(MIXED)]
    return Collator("image_region", model.text_tokenizer)(items)


# ---- the layout ---------------------------------------------------------------------------------------------------
def test_opt_layout_puts_slots_at_the_placeholders_and_pads_left(assets):  # noqa: F811
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(assets.opt))
    layout = PromptLayout(tok, "opt", "<region>", 3)
    out, has_text = layout(["Is <region> left of <region>?", "<region>"], [2, 1])
    ids, mask, slots = out["llm_prompt_ids"], out["llm_prompt_mask"], out["llm_region_slots"]
    words = [tok(t, add_special_tokens=False).input_ids for t in ("Is ", " left of ", "?")]
    first = [tok.bos_token_id, *words[0], *[-1] * 3, *words[1], *[-1] * 3, *words[2]]
    width = len(first)
    assert ids.shape == (2, width) and has_text == [True, False]
    row0 = ids[0].tolist()
    expected_slots0 = [i for i, v in enumerate(first) if v == -1]
    assert slots[:6].tolist() == expected_slots0  # sample 0: its two regions in placeholder order
    assert [v for i, v in enumerate(row0) if i not in expected_slots0] == [v for v in first if v != -1]
    # sample 1: "<region>" alone is RegionBLIP's layout [region slots | </s>], left padded to the width
    assert mask[1].tolist() == [0] * (width - 4) + [1] * 4
    assert ids[1, -1] == tok.bos_token_id
    assert slots[6:].tolist() == [width + width - 4 + j for j in range(3)]
    with pytest.raises(ValueError, match="1 '<region>' placeholder"):
        layout(["What is <region>?"], [2])


def test_t5_layout_closes_with_eos_and_pads_right(assets):  # noqa: F811
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(assets.t5))
    layout = PromptLayout(tok, "t5", "<region>", 2)
    out, _ = layout(["<region> a photo of", "Is <region> left of <region>?"], [1, 2])
    prefix = tok("a photo of", add_special_tokens=False).input_ids
    words = [tok(t, add_special_tokens=False).input_ids for t in ("Is ", " left of ", "?")]
    row0 = [tok.pad_token_id] * 2 + prefix + [tok.eos_token_id]  # slots hold the pad id until the model fills them
    row1 = [*words[0], *[tok.pad_token_id] * 2, *words[1], *[tok.pad_token_id] * 2, *words[2], tok.eos_token_id]
    width = max(len(row0), len(row1))
    ids, mask = out["llm_prompt_ids"], out["llm_prompt_mask"]
    for i, row in enumerate((row0, row1)):
        assert ids[i].tolist() == row + [tok.pad_token_id] * (width - len(row))
        assert mask[i].tolist() == [1] * len(row) + [0] * (width - len(row))
    slots1 = [width + i for i in range(len(words[0]), len(words[0]) + 2)]
    slots1 += [width + len(words[0]) + 2 + len(words[1]) + j for j in range(2)]
    assert out["llm_region_slots"].tolist() == [0, 1] + slots1


def test_region_soft_prompts_land_at_their_slots(family_model):
    model = family_model
    batch = _mixed_batch(model)
    rows = batch["region_geometry"].shape[0]
    assert rows == 6 and batch["region_counts"] == [1, 2, 3]
    assert batch["region_sample"].tolist() == [0, 1, 1, 2, 2, 2]
    soft = torch.randn(rows, Q, model.llm.hidden_size)
    embeds, mask = model.llm.prompt_inputs(batch["llm_prompt_ids"], batch["llm_prompt_mask"],
                                           batch["llm_region_slots"], soft)
    flat = embeds.flatten(0, 1)
    torch.testing.assert_close(flat[batch["llm_region_slots"]], soft.flatten(0, 1))
    others = torch.ones(flat.shape[0], dtype=torch.bool)
    others[batch["llm_region_slots"]] = False
    text = model.llm._embed(batch["llm_prompt_ids"]).flatten(0, 1)
    torch.testing.assert_close(flat[others], text[others])
    assert torch.equal(mask, batch["llm_prompt_mask"])


def test_llm_loss_is_on_the_answers_only(family_model):
    """The loss equals transformers' own loss with every prompt and slot position out of the labels."""
    model = family_model
    batch = _mixed_batch(model)
    llm = model.llm
    soft = torch.randn(batch["region_geometry"].shape[0], Q, llm.hidden_size)
    with lora.active_adapter(llm.model, None):
        embeds, mask = llm.prompt_inputs(batch["llm_prompt_ids"], batch["llm_prompt_mask"],
                                         batch["llm_region_slots"], soft)
        ours = llm.loss(embeds, mask, batch["llm_target_ids"], batch["llm_target_mask"])
        answers = batch["llm_target_ids"].masked_fill(batch["llm_target_mask"] == 0, IGNORE_INDEX)
        if llm.family.value == "opt":
            labels = torch.cat([torch.full(mask.shape, IGNORE_INDEX), answers], dim=1)
            full = torch.cat([mask, batch["llm_target_mask"]], dim=1)
            reference = llm.model(inputs_embeds=torch.cat([embeds, llm._embed(batch["llm_target_ids"])], dim=1),
                                  attention_mask=full, position_ids=(full.cumsum(1) * full - 1).clamp(min=0),
                                  labels=labels).loss
        else:
            reference = llm.model(inputs_embeds=embeds, attention_mask=mask, labels=answers,
                                  decoder_attention_mask=batch["llm_target_mask"]).loss
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


# ---- batches of mixed region counts ------------------------------------------------------------------------------
def test_mixed_region_counts_train_and_generate_like_one_sample_at_a_time(family_model):
    model = family_model
    batch = _mixed_batch(model)
    calls = []
    hook = model.encoders["vision"].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        model.train()
        out = model(batch)
        out.losses["llm"].backward()
        model.eval()
        assert calls == [3]  # once per image, not per region
        assert torch.isfinite(out.losses["llm"])
        pafe = model.heads["image_region"].pafe.mlp[0].weight
        assert pafe.grad is not None and pafe.grad.abs().sum() > 0
        model.zero_grad(set_to_none=True)
        with torch.no_grad():  # away from the near-uniform random init, so regions change the texts
            for p in model.llm.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        together = model.generate(batch)
        alone = []
        for i, (k, text, answer) in enumerate(MIXED):
            one = Collator("image_region", None)([_image_item(k, i, text, answer)])
            alone.append(model.generate(one)[0])
        assert together == alone
    finally:
        hook.remove()


def test_pairing_losses_refuse_multi_region_samples(assets):  # noqa: F811
    model = build(tiny_model_dict(assets))  # image_region trains itc, itg, llm, reg
    with pytest.raises(ValueError, match=r"losses \['itc', 'itg'\] pair one caption with one region"):
        model(_mixed_batch(model))


def test_whole_image_soft_prompt_leads_when_configured(assets):  # noqa: F811
    data = tiny_model_dict(assets)
    data["modalities"]["image_region"].update(losses={"llm": 1}, global_prompt=True)
    model = build(data)
    batch = _mixed_batch(model)
    with model._adapter_scope("image_region"):
        feats = model.extract(batch)
        embeds, mask = model.llm_inputs("image_region", feats, batch)
    assert feats.whole_outputs.shape == (3, Q, 32) and feats.query_outputs.shape == (6, Q, 32)
    assert embeds.shape[1] == Q + batch["llm_prompt_ids"].shape[1]
    lead = model.heads["image_region"].llm_proj(feats.whole_outputs)
    torch.testing.assert_close(embeds[:, :Q], lead)
    # the whole image's rows are the plain queries over every token
    plain = model.qformers["blip2"](query_embeds=model.heads["image_region"].plain_queries(3),
                                    encoder_hidden_states=model.encoders["vision"](batch["image"]),
                                    encoder_attention_mask=torch.ones(3, 17, dtype=torch.long))
    torch.testing.assert_close(feats.whole_outputs, plain, rtol=1e-5, atol=1e-6)
    assert model(batch).losses["llm"].isfinite()


# ---- regions of any shape ----------------------------------------------------------------------------------------
def _kind_pair(assets, mask_kind, box_kind, modality):  # noqa: F811
    """Two models with the same weights, the modality's region of `box_kind` in one and `mask_kind` in the other."""
    data = tiny_model_dict(assets)
    data["modalities"][modality]["region"] = box_kind
    boxed = build(data, seed=3)
    data["modalities"][modality]["region"] = mask_kind
    masked = build(data, seed=3)
    return boxed, masked


def test_an_image_mask_over_the_whole_image_is_its_box(assets):  # noqa: F811
    boxed, masked = _kind_pair(assets, "mask2d", "box2d", "image_region")
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 32, 32, generator=gen)
    geometry = torch.tensor([[0.1, 0.2, 0.6, 0.9], [0.0, 0.0, 1.0, 1.0]])
    batch = {"modality": "image_region", "image": images, "region_geometry": geometry}
    with boxed._adapter_scope("image_region"):
        box_feats = boxed.extract(batch)
    with masked._adapter_scope("image_region"):
        full = masked.extract({**batch, "region_mask": torch.ones(2, 32, 32, dtype=torch.bool)})
        part = torch.zeros(2, 32, 32, dtype=torch.bool)
        part[:, 8:16, 0:16] = True  # two patches of the 4 x 4 grid (patch 8): tokens 1 + 4 and 1 + 5
        cut = masked.extract({**batch, "region_mask": part})
    torch.testing.assert_close(full.query_outputs, box_feats.query_outputs)
    assert cut.encoder_mask[0].nonzero().flatten().tolist() == [0, 5, 6]  # CLS and the two patches
    assert not torch.allclose(cut.query_outputs, box_feats.query_outputs)


def test_a_point_set_of_every_point_is_its_box(assets):  # noqa: F811
    boxed, masked = _kind_pair(assets, "point_set", "box3d_corners", "pointcloud_region")
    gen = torch.Generator().manual_seed(1)
    points = torch.randn(2, 64, 3, generator=gen)
    batch = {"modality": "pointcloud_region", "points": points, "region_geometry": torch.rand(2, 24, generator=gen)}
    with boxed._adapter_scope("pointcloud_region"):
        box_feats = boxed.extract(batch)
    with masked._adapter_scope("pointcloud_region"):
        full = masked.extract({**batch, "region_mask": torch.ones(2, 64, dtype=torch.bool)})
        some = torch.zeros(2, 64, dtype=torch.bool)
        some[:, :5] = True
        cut = masked.extract({**batch, "region_mask": some})
    torch.testing.assert_close(full.query_outputs, box_feats.query_outputs)
    # a group is kept when one of its points is in the set
    from lavis.models.pointbert.sampling import group_indices

    index, _ = group_indices(points, 16, 8)
    expected = (index < 5).any(-1)
    assert torch.equal(cut.encoder_mask[:, 1:].bool(), expected) and cut.encoder_mask[:, 0].all()


# ---- templates in the config -------------------------------------------------------------------------------------
def test_templates_follow_the_modality(assets):  # noqa: F811
    data = tiny_model_dict(assets)
    data["task_prompts"] = {"brief": "Describe <region> briefly.", "plain": "A short caption:"}
    model = build(data)
    assert model.instruction_template("image_region") == "<region>"  # RegionBLIP: the region first, prompt ""
    assert model.instruction_template("image_region", "brief") == "Describe <region> briefly."
    assert model.instruction_template("image_region", "plain") == "<region>A short caption:"
    assert model.instruction_template("image", "plain") == "A short caption:"
    with pytest.raises(ConfigError, match="modality 'image' has no region"):
        model.instruction_template("image", "brief")
    with pytest.raises(ConfigError, match="task_prompt 'nope' is not a key of model.task_prompts"):
        model.instruction_template("image", "nope")
    bad = tiny_model_dict(assets)
    bad["modalities"]["image"]["prompt"] = "what is <region>?"
    with pytest.raises(ConfigError, match=r"model.modalities.image.prompt: modality 'image' has no region"):
        validate(config_from_dict(RegionBLIPConfig, bad, "model"))
    bad = tiny_model_dict(assets)
    bad["modalities"]["image"]["global_prompt"] = False
    with pytest.raises(ConfigError, match="without any soft prompt"):
        validate(config_from_dict(RegionBLIPConfig, bad, "model"))


def test_samples_sharing_an_image_encode_it_once(family_model):
    """`input_index`: three one-region samples over two images give what the images repeated per sample give."""
    model = family_model
    gen = torch.Generator().manual_seed(5)
    images = torch.randn(2, 3, 32, 32, generator=gen)
    geometry = torch.rand(3, 4, generator=gen).sort(dim=1).values
    index = torch.tensor([0, 0, 1])
    shared = {"modality": "image_region", "image": images, "input_index": index, "region_geometry": geometry}
    repeated = {"modality": "image_region", "image": images[index], "region_geometry": geometry}
    calls = []
    hook = model.encoders["vision"].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        assert model.generate(shared) == model.generate(repeated)
    finally:
        hook.remove()
    assert calls == [2, 3]


def test_a_holistic_modality_ignores_the_regions_its_items_carry(assets):  # noqa: F811
    """The PaFE-off ablation: a region: null modality trained on RefCOCO's items, which carry their boxes."""
    data = tiny_model_dict(assets)
    data["modalities"]["image_region"].update(region=None, losses={"itc": 1, "itg": 1, "llm": 1})
    model = build(data)
    items = [_image_item(1, i, None, "a red circle") for i in range(3)]
    batch = Collator("image_region", model.text_tokenizer, instruction=model.instruction_template("image_region"))(
        items)
    assert batch["region_counts"] == [1, 1, 1] and batch["llm_region_slots"].numel() == 0
    assert torch.isfinite(model(batch).losses["llm"])
    assert len(model.generate(batch)) == 3
