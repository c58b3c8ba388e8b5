"""Convert a reference RegionBLIP release checkpoint (mightyzau/RegionBLIP, e.g. regionblip_opt-2.7b.pth, saved by
the LAVIS runner) into this framework's trainable-tensor checkpoint `{"model": {name: tensor}}`, loadable with
`run.load_ckpt_path`, and write beside it the `--options` that make this framework compute what the reference did.

Mapping (reference name -> ours); <m> is a reference modality suffix, mapped by MODALITIES (img -> image, ...):
    Qformer.<path>.lora_{A,B}_<m>          qformers.blip2.<path>.lora_{A,B}.<modality>.weight
    Qformer_pc.<path>.lora_{A,B}_<m>       qformers.point.<path>.lora_{A,B}.<modality>.weight
    Qformer_pc.<path>.{weight,bias}        qformers.point.<path>[.base_layer].{weight,bias}  (trainable point Q-Former)
    {opt,t5}_model.<path>.lora_{A,B}_<m>   llm.model.<path>.lora_{A,B}.<modality>.weight
    query_tokens_<m>                       heads.<modality>.queries
    {opt,t5}_proj_<m>.*                    heads.<modality>.llm_proj.*
    stage1_proj_<m>.*                      heads.<modality>.vision_proj.*
    stage1_proj_text.*, temp               itc_text.text_proj.*, itc_text.temp   (model.shared_itc_text_head: true)
    <m>_itm_head.*                         heads.<modality>.itm_head.*
    <m>_posembed.{0,2}.*                   heads.<modality>.pafe.mlp.{0,2}.*
    reg_<m>.*                              heads.<modality>.reg_head.*
    pc_adapter.*                           encoder_adapters.point.*             (model.encoders.point.width_adapter)
Every other key of the reference's layout is dropped with its reason, reported by module:
  * an adapter of a modality its module never serves: the reference's LoRA Linear holds all four adapters in every
    adapted layer, so `Qformer.*.lora_*_pc` (point clouds use `Qformer_pc`) and `Qformer_pc.*.lora_*_img*` exist;
  * BLIP-2's own image path (`--blip2-image-modality image`, as `freeze_blip2_pretrain`): its queries, LLM projection
    and LoRA come from the BLIP-2 file here (no adapter). A non-zero LoRA B of it means the reference trained that
    adapter: a warning, and `--blip2-image-modality ''` keeps them (for a config whose image modality has
    `lora: true`). Its ITC / ITM heads (`stage1_proj_img`, `img_itm_head`), which no stage-2 BLIP-2 file holds,
    are kept: they train here too;
  * tied aliases (`cls.predictions.decoder.*` of both Q-Formers, `opt_model.lm_head.weight`): checked equal to the
    tensor they are tied to where the file holds that tensor (a frozen module's is not saved: then unchecked);
  * buffers (`bert.embeddings.position_ids`; the point encoder's BatchNorm statistics, which come with its weights
    from the Point-BERT file);
  * frozen weights (visual_encoder, ln_vision, point_encoder, the BLIP-2 Q-Former, the LLM), in a full state dict:
    they come from the pretrained files named in the YAML.
A key of no known layout is reported as unknown (nothing raises).

Usage: python tools/convert_regionblip_checkpoint.py regionblip_opt-2.7b.pth out.pth
  writes out.pth and out.pth.options; then e.g.
  python evaluate.py --cfg-path configs/eval/regionblip_opt2.7b_refcoco.yaml \
      --options run.load_ckpt_path=out.pth $(cat out.pth.options) <weight paths>
The file is read with weights_only=True: a checkpoint is data, never code.
"""

from __future__ import annotations

import argparse
import pickle
import re
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

import torch

from lavis.models.regionblip.model import BLIP2_CAPTION_HEADS  # what a BLIP-2 image path takes from the BLIP-2 file

MODALITIES = {"img": "image", "img_region": "image_region", "pc": "pointcloud", "pc_region": "pointcloud_region"}
QFORMERS = {"Qformer": "qformers.blip2", "Qformer_pc": "qformers.point"}
LLMS = {"opt_model": "llm.model", "t5_model": "llm.model"}
TRAINABLE_QFORMERS = {"Qformer_pc": "qformers.point"}
LORA_TARGETS = ("query", "value")  # Linears our Q-Former LoRA wraps (their base weight gains `.base_layer`)
ENCODER_ADAPTERS = {"pc_adapter": ("encoder_adapters.point", "point")}
SHARED_TEXT_HEAD = {"stage1_proj_text": "itc_text.text_proj", "temp": "itc_text.temp"}
FROZEN_MODULES = ("visual_encoder", "ln_vision", "point_encoder", "Qformer", "opt_model", "t5_model")
# Non-parameter entries LAVIS saves: module -> {alias: the tensor it is tied to}; and buffers
_BERT_TIED = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
              "cls.predictions.decoder.bias": "cls.predictions.bias"}
TIED = {"Qformer": _BERT_TIED, "Qformer_pc": _BERT_TIED,
        "opt_model": {"lm_head.weight": "model.decoder.embed_tokens.weight"}}  # FlanT5's head is not tied
BUFFER_LEAVES = ("position_ids", "running_mean", "running_var", "num_batches_tracked")

_M = "|".join(sorted(MODALITIES, key=len, reverse=True))  # longest first: img_region before img
_LORA = re.compile(rf"^(?P<owner>\w+?)\.(?P<path>.+)\.lora_(?P<ab>[AB])_(?P<m>{_M})$")
_HEAD_RULES = [
    (re.compile(rf"^query_tokens_(?P<m>{_M})$"), "queries"),
    (re.compile(rf"^(?:opt|t5)_proj_(?P<m>{_M})\.(?P<tail>.+)$"), "llm_proj"),
    (re.compile(rf"^stage1_proj_(?P<m>{_M})\.(?P<tail>.+)$"), "vision_proj"),
    (re.compile(rf"^(?P<m>{_M})_itm_head\.(?P<tail>.+)$"), "itm_head"),
    (re.compile(rf"^(?P<m>{_M})_posembed\.(?P<tail>[02]\..+)$"), "pafe.mlp"),
    (re.compile(rf"^reg_(?P<m>{_M})\.(?P<tail>.+)$"), "reg_head"),
]

NEVER_SERVED = "adapter of a modality this module never serves"
BLIP2_PATH = "BLIP-2's own image path (from the BLIP-2 file)"
TIED_ALIAS = "tied alias"
BUFFER = "buffer"
FROZEN = "frozen weights (from the pretrained files)"
UNKNOWN = "unknown key"


class Conversion(NamedTuple):
    converted: dict[str, torch.Tensor]  # our trainable tensors
    dropped: dict[str, list[str]]  # reason -> reference keys
    options: list[str]  # `--options` entries that make this framework compute what the reference computed

    @property
    def unmapped(self) -> list[str]:
        return sorted(k for keys in self.dropped.values() for k in keys)


def served_modalities(state: dict[str, torch.Tensor]) -> dict[str, set[str]]:
    """Reference module -> the modality suffixes it serves: with a `Qformer_pc` in the file (the released
    `enable_pointcloud_qformer: True`) point clouds use it and images `Qformer`; without, `Qformer` serves all."""
    has_pc_qformer = any(k.startswith("Qformer_pc.") for k in state)
    images, points = {"img", "img_region"}, {"pc", "pc_region"}
    served = {"Qformer": images if has_pc_qformer else images | points, "Qformer_pc": points}
    served.update({llm: images | points for llm in LLMS})
    return served


def _map_lora(lora: re.Match, value, served) -> tuple[dict[str, torch.Tensor], str]:
    owner = QFORMERS.get(lora["owner"]) or LLMS.get(lora["owner"])
    if owner is None:
        return {}, UNKNOWN
    if lora["m"] not in served.get(lora["owner"], ()):
        return {}, NEVER_SERVED
    return {f"{owner}.{lora['path']}.lora_{lora['ab']}.{MODALITIES[lora['m']]}.weight": value}, ""


def _map_one(key: str, value: torch.Tensor, served: dict[str, set[str]]) -> tuple[dict[str, torch.Tensor], str]:
    """(our tensors, '') or ({}, the reason the key is dropped)."""
    lora = _LORA.match(key)
    if lora:
        return _map_lora(lora, value, served)
    for pattern, part in _HEAD_RULES:
        found = pattern.match(key)
        if found:
            tail = found.groupdict().get("tail")
            return {f"heads.{MODALITIES[found['m']]}.{part}" + (f".{tail}" if tail else ""): value}, ""
    head, _, tail = key.partition(".")
    if head in SHARED_TEXT_HEAD:
        return {SHARED_TEXT_HEAD[head] + (f".{tail}" if tail else ""): value}, ""
    if head in ENCODER_ADAPTERS:
        return {f"{ENCODER_ADAPTERS[head][0]}.{tail}": value}, ""
    if tail.rsplit(".", 1)[-1] in BUFFER_LEAVES:
        return {}, BUFFER
    if head in TRAINABLE_QFORMERS:
        module, _, leaf = tail.rpartition(".")
        if module.rsplit(".", 1)[-1] in LORA_TARGETS:
            module += ".base_layer"
        return {f"{TRAINABLE_QFORMERS[head]}.{module}.{leaf}": value}, ""
    return {}, FROZEN if head in FROZEN_MODULES else UNKNOWN


def _tied_alias(key: str, state: dict[str, torch.Tensor]) -> bool:
    """Whether `key` is a tied alias (nothing of ours); one that differs from its tensor is an error, since dropping
    it would then lose a value."""
    head, _, tail = key.partition(".")
    if tail not in TIED.get(head, {}):
        return False
    owner = f"{head}.{TIED[head][tail]}"
    if owner in state and not torch.equal(state[owner], state[key]):
        raise ValueError(f"{key} differs from {owner}, the tensor it is tied to: the file is not a tied LAVIS save")
    return True


def _owned_by_blip2_path(name: str, modality: str) -> bool:
    """Whether our tensor `name` is what a BLIP-2 image path `modality` takes from the BLIP-2 file (or has none of:
    an adapter)."""
    caption_head = any(name.startswith(f"heads.{modality}.{h}") for h in BLIP2_CAPTION_HEADS)
    return caption_head or any(f".lora_{ab}.{modality}." in name for ab in "AB")


def reference_options(state: dict[str, torch.Tensor], converted: dict[str, torch.Tensor]) -> list[str]:
    """The `--options` under which this framework computes what the reference computed with these weights."""
    options = []
    if any(k.startswith("itc_text.") for k in converted):
        options.append("model.shared_itc_text_head=true")  # one stage1_proj_text and temp for all modalities
    if any(k.startswith(("opt_model.", "opt_proj_")) for k in state):
        options.append("model.llm.bos_target_with_empty_prompt=true")  # LAVIS: OPT's </s> is a target
    for adapter, (_, encoder) in ENCODER_ADAPTERS.items():
        if f"{adapter}.weight" in state:
            options.append(f"model.encoders.{encoder}.width_adapter=true")  # held even at equal widths
    if "pc_region_posembed.0.weight" in state:  # PaFE and the regression head learnt the reference's corners
        options.append("model.modalities.pointcloud_region.region=box3d_corners_reference")
    return options


def convert_state_dict(state: dict[str, torch.Tensor], blip2_image_modality: str = "image") -> Conversion:
    """A reference state dict -> our trainable tensors; `blip2_image_modality` ('' for none) names the modality
    whose captioning tensors and adapters are dropped because our config keeps it as BLIP-2's frozen path."""
    served = served_modalities(state)
    out: dict[str, torch.Tensor] = {}
    dropped: dict[str, list[str]] = {}
    for key, value in state.items():
        if _tied_alias(key, state):
            dropped.setdefault(TIED_ALIAS, []).append(key)
            continue
        mapped, reason = _map_one(key, value, served)
        if mapped and blip2_image_modality and all(_owned_by_blip2_path(k, blip2_image_modality) for k in mapped):
            mapped, reason = {}, BLIP2_PATH
        if mapped:
            out.update(mapped)
        else:
            dropped.setdefault(reason, []).append(key)
    _warn_if_trained_adapter(state, dropped.get(BLIP2_PATH, []), blip2_image_modality)
    return Conversion(out, dropped, reference_options(state, out))


def _warn_if_trained_adapter(state: dict[str, torch.Tensor], dropped: list[str], modality: str) -> None:
    """A LoRA B of zero leaves its layer unchanged, so dropping it is exact; a non-zero one was trained."""
    trained = [k for k in dropped if (lora := _LORA.match(k)) and lora["ab"] == "B" and bool(state[k].any())]
    if trained:
        warnings.warn(
            f"{len(trained)} dropped LoRA B tensors are not zero (e.g. {trained[0]}): the reference trained the "
            f"adapter of '{modality}', and dropping it (as --blip2-image-modality {modality} does) changes that path. "
            "Pass --blip2-image-modality '' to keep it, for a config whose modality has lora: true and "
            "freeze_blip2_pretrain: false",
            stacklevel=3,
        )


def read_release(src: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict of a LAVIS-saved file ({"model": ...}) or a bare state dict, read as data."""
    try:
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # a pickle of Python objects, or no pickle at all
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f"it pickles a Python object ({found[1]})" if found else "it is no torch-saved state dict"
        raise ValueError(f"{src}: refused: {what}, and a checkpoint is read with weights_only=True, as data, never "
                         "code. Re-save it where it was made as torch.save({'model': model.state_dict()}, path) "
                         "(tensors only)") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"{src}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    state = obj["model"] if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else obj
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{src}: not a RegionBLIP checkpoint (expected {{'model': {{name: tensor}}}})")
    return state


def options_path(dst: str | Path) -> Path:
    return Path(f"{dst}.options")


def convert_file(src: str | Path, dst: str | Path, blip2_image_modality: str = "image") -> Conversion:
    result = convert_state_dict(read_release(src), blip2_image_modality)
    torch.save({"model": result.converted}, dst)
    options_path(dst).write_text("".join(f"{o}\n" for o in result.options))
    return result


def report(result: Conversion) -> str:
    lines = [f"mapped {len(result.converted)} tensors"]
    for reason, keys in sorted(result.dropped.items()):
        lines.append(f"dropped {len(keys)}: {reason}, by module:")
        groups: dict[str, int] = {}
        for key in keys:
            groups[key.split(".")[0]] = groups.get(key.split(".")[0], 0) + 1
        lines += [f"  {top:40s} {count}" for top, count in sorted(groups.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="reference RegionBLIP checkpoint (.pth)")
    parser.add_argument("dst", help="output: this framework's trainable-tensor checkpoint (and DST.options)")
    parser.add_argument("--blip2-image-modality", default="image",
                        help="modality kept as BLIP-2's frozen image path (its queries, LLM projection and LoRA "
                             "dropped); '' keeps everything")
    args = parser.parse_args(argv)
    try:
        result = convert_file(args.src, args.dst, args.blip2_image_modality)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(report(result))
    print(f"wrote {args.dst} and {options_path(args.dst)} (the reference's conventions, for --options):")
    print("  " + " ".join(result.options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
