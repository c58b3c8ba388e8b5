"""Check this framework against the reference RegionBLIP on a golden kit (../shared/reference/README.md): build our
model from the kit's files alone, convert and load its release checkpoint, run each modality's batch twice (from the
raw inputs through our processors, and from the tensors the reference fed its model) and compare with the
reference's outputs.

    python tools/check_reference_kit.py --kit ../shared/reference

Prints, per modality and input path, the max abs difference of every quantity (encoder tokens, query embeddings,
query outputs, each loss, the regression output, the LLM labels) and whether the greedy ids are identical. Exit
status 0 only when every difference is <= --tolerance (1e-4) and every id matches.

Sizes come from the kit's files: the weight shapes, the Q-Former's BERT config.json and the release's own config.
Three sizes are stored in no weight file (the ViT's and Point-BERT's head counts and Point-BERT's group size); each is
the one value that reproduces the reference's encoder tokens of the batch's first sample (no other candidate may come
within the tolerance), searched over the head counts that divide the width and the group sizes up to the cloud's
size, and reported as such (or fixed with --vit-heads / --point-heads / --group-size); the other samples then check
the fit independently. Where the reference draws at random, the kit's recorded draws are fed in: the farthest-point
start (as a roll of the cloud, `roll_to_start`) and the ITM negatives.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

import lavis.models.eva_vit  # noqa: F401  (registers eva_vit)
import lavis.models.pointbert  # noqa: F401  (registers pointbert)
import lavis.models.regionblip  # noqa: F401  (registers regionblip and the region kinds)
from lavis.common.config_schema import config_from_dict
from lavis.common.registry import ENCODERS
from lavis.datasets.datasets.refcoco import load_image_and_box
from lavis.models.regionblip import losses as L
from lavis.models.regionblip.config import RegionBLIPConfig
from lavis.models.regionblip.model import RegionBLIP
from lavis.processors.image_processors import BoxImageConfig, BoxImageProcessor, load_rgb_image
from lavis.processors.point_processors import PointCloudProcessor, PointCloudProcessorConfig, roll_to_start
from lavis.processors.region_kinds import corner_layout
from lavis.processors.text_processors import CaptionConfig, CaptionProcessor

TOLERANCE = 1e-4
REFERENCE_LORA_ALPHA = 1.0  # lora_modals.py: a constant of the reference's LoRA Linear, in no file
REFERENCE_MEAN = (0.48145466, 0.4578275, 0.40821073)  # BlipImageEvalProcessor
REFERENCE_STD = (0.26862954, 0.26130258, 0.27577711)
# the reference's loss names -> ours
LOSSES = {"loss_itc": "itc", "loss_itm": "itm", "loss_lm": "itg", "loss_llm": "llm", "loss_reg": "reg"}
REPO = Path(__file__).resolve().parents[1]


def _converter():
    path = REPO / "tools" / "convert_regionblip_checkpoint.py"
    spec = importlib.util.spec_from_file_location("convert_regionblip", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Kit:
    root: Path
    blip2: dict[str, torch.Tensor]
    pointbert: dict[str, torch.Tensor]
    release: dict[str, Any]
    inputs: dict[str, Any]
    outputs: dict[str, Any]

    @classmethod
    def read(cls, root: Path) -> Kit:
        def load(name: str):
            path = root / name
            if not path.is_file():
                raise SystemExit(f"{path}: missing; a kit holds {', '.join(KIT_FILES)} (../shared/reference/README.md)")
            return torch.load(path, map_location="cpu", weights_only=True)

        blip2, pointbert = load("blip2_tiny.pth")["model"], load("pointbert_tiny.pth")["base_model"]
        return cls(root, blip2, pointbert, load("release_tiny.pth"), load("inputs.pt"), load("outputs.pt"))


KIT_FILES = ("blip2_tiny.pth", "pointbert_tiny.pth", "release_tiny.pth", "inputs.pt", "outputs.pt", "opt_tiny/",
             "bert_tokenizer/")


# ---- sizes ------------------------------------------------------------------------------------------------------
def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    """How many `pattern.format(i)` prefixes exist for i = 0, 1, ..."""
    i = 0
    while any(k.startswith(pattern.format(i)) for k in state):
        i += 1
    return i


def vit_params(kit: Kit) -> dict[str, Any]:
    vit = _strip(kit.blip2, "visual_encoder.")
    width, _, patch, _ = vit["patch_embed.proj.weight"].shape
    grid = math.isqrt(vit["pos_embed"].shape[1] - 1)
    return {"img_size": grid * patch, "patch_size": patch, "width": width, "depth": _count(vit, "blocks.{}."),
            "mlp_dim": vit["blocks.0.mlp.fc1.weight"].shape[0]}


def point_params(kit: Kit) -> dict[str, Any]:
    prefix = next(k for k in kit.pointbert if k.endswith("cls_token"))[: -len("cls_token")]
    pb = _strip(kit.pointbert, prefix)
    width = pb["cls_token"].shape[-1]
    return {"in_channels": pb["encoder.first_conv.0.weight"].shape[1], "width": width,
            "group_embed_dim": pb["encoder.second_conv.3.weight"].shape[0], "depth": _count(pb, "blocks.blocks.{}."),
            "mlp_ratio": pb["blocks.blocks.0.mlp.fc1.weight"].shape[0] / width,
            "num_groups": kit.outputs["pointcloud"]["encoder_tokens"].shape[1] - 1}


def qformer_config(kit: Kit) -> dict[str, Any]:
    bert = json.loads((kit.root / "bert_tokenizer" / "config.json").read_text())
    layers = sorted({int(k.split(".")[4]) for k in kit.blip2 if ".crossattention." in k})
    freq = layers[1] - layers[0] if len(layers) > 1 else bert["num_hidden_layers"]
    cross_key = kit.blip2[f"Qformer.bert.encoder.layer.{layers[0]}.crossattention.self.key.weight"]
    return {"vocab_size": bert["vocab_size"], "hidden_size": bert["hidden_size"],
            "num_layers": bert["num_hidden_layers"], "num_heads": bert["num_attention_heads"],
            "intermediate_size": bert["intermediate_size"], "cross_attention_freq": freq,
            "encoder_width": cross_key.shape[1],
            "max_position_embeddings": bert["max_position_embeddings"], "layer_norm_eps": bert["layer_norm_eps"],
            "tokenizer_path": str(kit.root / "bert_tokenizer"), "bert_init_path": str(kit.root / "bert_tokenizer")}


def model_dict(kit: Kit, vit: dict, point: dict, options: list[str]) -> dict[str, Any]:
    """Our model config for the kit: the release's switches (../shared/reference/README.md), then the converter's
    options, as a user passes them."""
    release, ref_cfg = kit.release["model"], kit.release["config"]["model"]
    rank = release[next(k for k in release if k.endswith("lora_A_img_region"))].shape[0]
    lora = {"rank": rank, "alpha": REFERENCE_LORA_ALPHA, "dropout": 0.0}
    constants = kit.inputs["_constants"]
    region = {"image_region": "box2d", "pointcloud_region": "box3d_corners"}
    # the reference's terms: ITM for images only (`modal_name == 'image'`), REG for regions
    reg = ref_cfg["aux_regloss_weight"] if ref_cfg["enable_aux_regloss"] else 0.0
    losses = {"image": {"itc": 1, "itm": 1, "itg": 1, "llm": 1},
              "image_region": {"itc": 1, "itg": 1, "llm": 1, "reg": reg},
              "pointcloud": {"itc": 1, "itg": 1, "llm": 1},
              "pointcloud_region": {"itc": 1, "itg": 1, "llm": 1, "reg": reg}}
    data = {
        "num_query_tokens": kit.blip2["query_tokens"].shape[1],
        "pafe_hidden": release["img_region_posembed.0.weight"].shape[0],
        "embed_dim": ref_cfg["embed_dim"],
        "max_text_len": ref_cfg["max_txt_len"],
        "freeze_blip2_pretrain": ref_cfg["freeze_blip2_pretrain"],
        "blip2_checkpoint_path": str(kit.root / "blip2_tiny.pth"),
        "encoders": {
            "vision": {"name": "eva_vit", "input_key": "image", "init_from_blip2": True, "params": vit},
            "point": {"name": "pointbert", "input_key": "points",
                      "params": {**point, "checkpoint_path": str(kit.root / "pointbert_tiny.pth")}},
        },
        "qformers": {"blip2": {"frozen": True, "init_from_blip2": True, "config": qformer_config(kit)},
                     "point": {"frozen": False, "config": qformer_config(kit)}},
        "llm": {"family": "opt", "path": str(kit.root / "opt_tiny"), "dtype": "float32"},
        "lora": {"qformer": {"target_modules": ["query", "value"], **lora},
                 "llm": {"target_modules": ["q_proj", "v_proj"], **lora}},
        "modalities": {
            name: {"encoder": "vision" if name.startswith("image") else "point",
                   "qformer": "blip2" if name.startswith("image") else "point",
                   "region": region.get(name), "losses": losses[name], "prompt": constants["prompt"],
                   **({"lora": False, "init_from_blip2": True} if name == "image" else {})}
            for name in losses
        },
        "generation": {"num_beams": constants["gen_num_beams"], "max_new_tokens": constants["gen_max_length"],
                       "min_new_tokens": constants["gen_min_length"]},
    }
    merged = OmegaConf.merge(OmegaConf.create({"model": data}), OmegaConf.from_dotlist(options))
    return OmegaConf.to_container(merged)["model"]


# ---- the head counts and group size no file stores ---------------------------------------------------------------
def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _closest(candidates: list[dict], run: Callable[[dict], torch.Tensor], want: torch.Tensor, what: str,
             flag: str) -> tuple[dict, float]:
    """The one candidate whose output on sample 0 is the reference's (within tolerance, every other one off by more):
    the other samples then check it independently."""
    diffs = []
    for params in candidates:
        with torch.no_grad():
            got = run(params)
        diffs.append((got[:1] - want[:1]).abs().max().item() if got.shape == want.shape else math.inf)
    order = sorted(range(len(candidates)), key=diffs.__getitem__)
    best = order[0]
    if diffs[best] > TOLERANCE or any(diffs[i] <= TOLERANCE for i in order[1:]):
        within = [candidates[i] for i in order if diffs[i] <= TOLERANCE]
        raise SystemExit(f"cannot tell the {what} from the kit: {len(within)} candidates reproduce the reference's "
                         f"encoder tokens within {TOLERANCE:g} (best off by {diffs[best]:.2e}); give it with {flag}")
    return candidates[best], diffs[best]


def search_vit(kit: Kit, params: dict, heads: int | None) -> tuple[dict, str]:
    vit_state = {k: v for k, v in kit.blip2.items() if k.startswith(("visual_encoder.", "ln_vision."))}
    cls = ENCODERS.get("eva_vit")

    def run(p: dict) -> torch.Tensor:
        encoder = cls.from_config(cls.Config(**p)).eval()
        encoder.load_pretrained(vit_state, "blip2_tiny.pth")
        return encoder(kit.inputs["image"]["image"])

    candidates = [{**params, "num_heads": h} for h in ([heads] if heads else _divisors(params["width"]))]
    best, diff = _closest(candidates, run, kit.outputs["image"]["encoder_tokens"], "ViT head count", "--vit-heads")
    how = "given" if heads else "the only fit"
    return best, f"ViT heads {best['num_heads']} ({how}, sample 0: max abs diff {diff:.2e})"


def search_point(kit: Kit, params: dict, heads: int | None, group_size: int | None) -> tuple[dict, str]:
    cls = ENCODERS.get("pointbert")
    release = kit.release["model"]
    adapter = torch.nn.Linear(*release["pc_adapter.weight"].shape[::-1])
    adapter.load_state_dict({"weight": release["pc_adapter.weight"], "bias": release["pc_adapter.bias"]})
    ref = kit.inputs["pointcloud"]
    points = _rolled(ref["pointcloud"], ref["fps_start_index"])

    built: dict[int, torch.nn.Module] = {}  # one encoder per head count; the group size is only read in forward

    def run(p: dict) -> torch.Tensor:
        if p["num_heads"] not in built:
            config = cls.Config(**p, checkpoint_path=str(kit.root / "pointbert_tiny.pth"))
            built[p["num_heads"]] = cls.from_config(config).eval()
        encoder = built[p["num_heads"]]
        encoder.group_size = p["group_size"]
        return adapter(encoder(points))

    sizes = [group_size] if group_size else range(1, points.shape[1] + 1)
    head_counts = [heads] if heads else _divisors(params["width"])
    candidates = [{**params, "num_heads": h, "group_size": k} for h in head_counts for k in sizes]
    best, diff = _closest(candidates, run, kit.outputs["pointcloud"]["encoder_tokens"],
                          "Point-BERT head count and group size", "--point-heads and --group-size")
    how = "given" if heads and group_size else "the only fit"
    found = f"Point-BERT heads {best['num_heads']}, group size {best['group_size']}"
    return best, f"{found} ({how}, sample 0: max abs diff {diff:.2e})"


# ---- batches ----------------------------------------------------------------------------------------------------
def _rolled(clouds: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """[B, N, C] clouds, each rolled so that its recorded FPS start comes first."""
    return torch.stack([roll_to_start(c, int(s)) for c, s in zip(clouds, starts)])


def _texts(model: RegionBLIP, texts: list[str], modality: str) -> dict[str, torch.Tensor]:
    return model.text_tokenizer(list(texts), modality)


def reference_batch(model: RegionBLIP, ref: dict, modality: str) -> dict[str, Any]:
    """The tensors the reference fed its model, in our batch keys; its OPT ids start with the prompt's </s>, which
    our layout keeps as the first target (bos_target_with_empty_prompt) or in the prompt."""
    tokenizer = model.text_tokenizer
    template = model.instruction_template(modality)
    size = ref["opt_input_ids"].shape[0]
    prompt, has_text = tokenizer.layout([template] * size, [template.count(model.cfg.region_token)] * size,
                                        bos_in_prompt=not tokenizer.bos_target)
    start = 0 if tokenizer.bos_target and not has_text[0] else 1
    batch = {"modality": modality, **prompt,
             "qformer_text_ids": ref["qformer_input_ids"], "qformer_text_mask": ref["qformer_attention_mask"],
             "llm_target_ids": ref["opt_input_ids"][:, start:], "llm_target_mask": ref["opt_attention_mask"][:, start:]}
    if modality.startswith("image"):
        batch["image"] = ref["image"]
    if modality == "image_region":
        batch["region_geometry"] = ref["box"]
    if modality == "pointcloud":
        batch["points"] = _rolled(ref["pointcloud"], ref["fps_start_index"])
    if modality == "pointcloud_region":
        batch["points"] = _rolled(ref["point_clouds"], ref["fps_start_index"])
        batch["region_geometry"] = ref["refer_box_corners"].flatten(1)
    return batch


def raw_batch(model: RegionBLIP, ref: dict, modality: str) -> dict[str, Any]:
    """The kit's raw inputs through this framework's own processors, set as the reference's data pipeline."""
    size = model.encoders["vision"].img_size
    captions = CaptionProcessor(CaptionConfig())
    texts = [captions(t) for t in ref["raw_caption"]]
    batch: dict[str, Any] = {"modality": modality, **_texts(model, texts, modality)}
    if modality.startswith("image"):
        config = BoxImageConfig(image_size=size, mean=list(REFERENCE_MEAN), std=list(REFERENCE_STD),
                                truncate_box_pixels=True)
        images = BoxImageProcessor(config)
        pixels, boxes = [], []
        for i, array in enumerate(ref["raw_image_uint8_hwc"]):
            encoded = io.BytesIO()
            Image.fromarray(np.asarray(array)).save(encoded, format="PNG")  # the reference read PNG copies
            if modality == "image_region":  # RefCOCO's reader: the box checked, then the reference's rounding
                image, box = load_image_and_box(encoded.getvalue(), ref["raw_bbox_xywh"][i].tolist(), config, str(i))
            else:
                image, box = load_rgb_image(encoded.getvalue()), None
            image, region = images(image, box)
            pixels.append(image)
            boxes.append(region)
        batch["image"] = torch.stack(pixels)
        if modality == "image_region":
            batch["region_geometry"] = torch.stack(boxes)
    if modality == "pointcloud":
        cloud = ref["raw_xyz"]
        points = PointCloudProcessor(PointCloudProcessorConfig(num_points=cloud.shape[1], sampling="stride"))
        batch["points"] = _rolled(torch.stack([points(c)[0] for c in cloud]), ref["fps_start_index"])
    if modality == "pointcloud_region":
        vertices = ref["raw_vertices_xyzrgb"]
        layout = corner_layout(model.cfg.modalities[modality].region)
        points = PointCloudProcessor(PointCloudProcessorConfig(num_points=vertices.shape[1], sampling="stride",
                                                               normalize=False))
        clouds, corners = [], []
        for i, cloud in enumerate(vertices):
            xyz, moved = points(cloud.numpy(), layout(ref["box_center"][i], ref["box_size"][i])[None])
            clouds.append(xyz)
            corners.append(moved[0].flatten())
        batch["points"] = _rolled(torch.stack(clouds), ref["fps_start_index"])
        batch["region_geometry"] = torch.stack(corners)
    return batch


# ---- one run ----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def recorded_negatives(out: dict) -> Iterator[None]:
    """ITM draws its hard negatives at random: replay the reference's picks (first the image per text, then the
    text per image, the order our ITM draws them in)."""
    picks = [out[k] for k in ("itm_negative_image_index_per_text", "itm_negative_text_index_per_image") if k in out]
    original = L.sample_hard_negatives

    def replay(similarity: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        return picks.pop(0) if picks else original(similarity, positives)

    L.sample_hard_negatives = replay
    try:
        yield
    finally:
        L.sample_hard_negatives = original


@torch.no_grad()
def run_modality(model: RegionBLIP, batch: dict, ref_out: dict) -> dict[str, Any]:
    name = batch["modality"]
    with recorded_negatives(ref_out):
        losses = model(batch).losses
    with model._adapter_scope(name):
        feats = model.extract(batch)
    heads = model.heads[name]
    got: dict[str, Any] = {"encoder_tokens": feats.encoder_tokens, "query_embeds": feats.query_embeds,
                           "query_output": feats.query_outputs}
    weights = model.loss_weights(name)
    for theirs, ours in LOSSES.items():
        if theirs in ref_out["losses"] and (ours in losses or ref_out["losses"][theirs] != 0.0):
            got[theirs] = losses.get(ours, torch.tensor(0.0))
    got["loss"] = sum(weights[t] * v for t, v in losses.items())
    if heads.reg_head is not None:
        got["reg_pred"] = heads.reg_head(feats.query_outputs.mean(dim=1))
    prefix, _ = model.llm_inputs(name, feats, batch)
    got["llm_labels"] = model.llm.sequence_labels(prefix.shape[1], batch["llm_target_ids"], batch["llm_target_mask"])
    got["generated_ids"] = model.generate_ids(batch)
    return got


def compare(got: dict[str, Any], ref_out: dict) -> list[tuple[str, str, bool]]:
    """(quantity, difference, within tolerance) rows."""
    rows = []
    for key, value in got.items():
        want = ref_out["losses"][key] if key.startswith("loss") else ref_out[key]
        want = torch.as_tensor(want)
        if key in ("generated_ids", "llm_labels"):
            same = value.shape == want.shape and torch.equal(value.cpu(), want)
            rows.append((key, "identical" if same else f"differ: ours {value.tolist()} vs {want.tolist()}", same))
            continue
        if value.shape != want.shape:
            rows.append((key, f"shape {tuple(value.shape)} vs {tuple(want.shape)}", False))
            continue
        diff = (value.float().cpu() - want.float()).abs().max().item()
        rows.append((key, f"{diff:.2e}", diff <= TOLERANCE))
    return rows


def build_model(kit: Kit, args: argparse.Namespace, work: Path) -> tuple[RegionBLIP, list[str]]:
    notes = []
    vit, note = search_vit(kit, vit_params(kit), args.vit_heads)
    notes.append(note)
    point, note = search_point(kit, point_params(kit), args.point_heads, args.group_size)
    notes.append(note)
    convert = _converter()
    release_path = work / "release_converted.pth"
    result = convert.convert_file(kit.root / "release_tiny.pth", release_path)
    notes.append(convert.report(result))
    notes.append("options from the converter: " + " ".join(result.options))
    data = model_dict(kit, vit, point, result.options)
    torch.manual_seed(0)
    model = RegionBLIP.from_config(config_from_dict(RegionBLIPConfig, data, "model")).eval()
    model.load_trainable_state_dict(torch.load(release_path, weights_only=True)["model"])
    return model, notes


def main(argv: list[str] | None = None) -> int:
    global TOLERANCE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kit", required=True, type=Path, help="a reference kit directory (../shared/reference)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="max abs difference allowed")
    parser.add_argument("--vit-heads", type=int, help="the ViT's head count (default: searched)")
    parser.add_argument("--point-heads", type=int, help="Point-BERT's head count (default: searched)")
    parser.add_argument("--group-size", type=int, help="Point-BERT's points per group (default: searched)")
    args = parser.parse_args(argv)
    TOLERANCE = args.tolerance
    kit = Kit.read(args.kit)
    with tempfile.TemporaryDirectory() as work:
        model, notes = build_model(kit, args, Path(work))
    print("\n".join(notes))
    ok = True
    modalities = [m for m in kit.outputs if not m.startswith("_")]
    for modality in modalities:
        for path, make in (("reference tensors", reference_batch), ("raw inputs", raw_batch)):
            rows = compare(run_modality(model, make(model, kit.inputs[modality], modality), kit.outputs[modality]),
                           kit.outputs[modality])
            print(f"\n{modality} ({path})")
            for key, diff, good in rows:
                print(f"  {'ok ' if good else 'BAD'} {key:18s} {diff}")
                ok &= good
    print(f"\n{'PASS' if ok else 'FAIL'}: every difference <= {TOLERANCE:g} and identical ids" if ok else
          f"\nFAIL: some difference > {TOLERANCE:g} or ids differ (BAD rows above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
