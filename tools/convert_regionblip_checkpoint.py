"""Convert a reference RegionBLIP release checkpoint (mightyzau/RegionBLIP, e.g. regionblip_opt-2.7b.pth) into this
framework's trainable-tensor checkpoint `{"model": {name: tensor}}`, loadable with `load_trainable_state_dict`.

Mapping (reference name -> ours); <m> is a reference modality suffix, mapped by MODALITIES (img -> image, ...):
    Qformer.<path>.lora_{A,B}_<m>          qformers.blip2.<path>.lora_{A,B}.<modality>.weight
    Qformer_pc.<path>.lora_{A,B}_<m>       qformers.point.<path>.lora_{A,B}.<modality>.weight
    Qformer_pc.<path>.{weight,bias}        qformers.point.<path>[.base_layer].{weight,bias}  (trainable point Q-Former)
    {opt,t5}_model.<path>.lora_{A,B}_<m>   llm.model.<path>.lora_{A,B}.<modality>.weight
    query_tokens_<m>                       heads.<modality>.queries
    {opt,t5}_proj_<m>.*                    heads.<modality>.llm_proj.*
    stage1_proj_<m>.*                      heads.<modality>.vision_proj.*
    stage1_proj_text.*                     heads.<every modality with one>.text_proj.*   (shared in the reference)
    temp                                   heads.<every modality with one>.temp          (shared in the reference)
    <m>_itm_head.*                         heads.<modality>.itm_head.*
    <m>_posembed.{0,2}.*                   heads.<modality>.pafe.mlp.{0,2}.*
    reg_<m>.*                              heads.<modality>.reg_head.*
    pc_adapter.*                           encoder_adapters.point.*
Frozen parts (visual_encoder, ln_vision, point_encoder, the BLIP-2 Q-Former's base weights, the LLM) are not part of
our checkpoint: they come from the pretrained files named in the YAML, and are reported as unmapped.
With `--blip2-image-modality image` (the default, as `freeze_blip2_pretrain`), that modality's queries, LLM projection
and LoRA tensors are dropped too: our config keeps them frozen (BLIP-2's own) and gives it no adapter.

Usage: python tools/convert_regionblip_checkpoint.py regionblip_opt-2.7b.pth out.pth
The file is read with weights_only=True: a checkpoint is data, never code.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

MODALITIES = {"img": "image", "img_region": "image_region", "pc": "pointcloud", "pc_region": "pointcloud_region"}
QFORMERS = {"Qformer": "qformers.blip2", "Qformer_pc": "qformers.point"}
LLMS = {"opt_model": "llm.model", "t5_model": "llm.model"}
TRAINABLE_QFORMERS = {"Qformer_pc": "qformers.point"}
LORA_TARGETS = ("query", "value")  # Linears our Q-Former LoRA wraps (their base weight gains `.base_layer`)
ENCODER_ADAPTERS = {"pc_adapter": "encoder_adapters.point"}
SHARED_HEADS = {"stage1_proj_text": "text_proj", "temp": "temp"}
TIED = ("cls.predictions.decoder.weight", "bert.embeddings.position_ids")  # tied to word embeddings / a buffer

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


def _shared_targets(state: dict[str, torch.Tensor]) -> list[str]:
    """Modalities that have an ITC head in the reference file (they get the shared text projection / temperature)."""
    return [MODALITIES[m] for m in MODALITIES if f"stage1_proj_{m}.weight" in state]


def _map_one(key: str, value: torch.Tensor, shared_to: list[str]) -> dict[str, torch.Tensor]:
    lora = _LORA.match(key)
    if lora:
        owner = QFORMERS.get(lora["owner"]) or LLMS.get(lora["owner"])
        if owner is None:
            return {}
        return {f"{owner}.{lora['path']}.lora_{lora['ab']}.{MODALITIES[lora['m']]}.weight": value}
    for pattern, part in _HEAD_RULES:
        found = pattern.match(key)
        if found:
            tail = found.groupdict().get("tail")
            return {f"heads.{MODALITIES[found['m']]}.{part}" + (f".{tail}" if tail else ""): value}
    head, _, tail = key.partition(".")
    if head in SHARED_HEADS:
        suffix = f".{tail}" if tail else ""
        return {f"heads.{m}.{SHARED_HEADS[head]}{suffix}": value.clone() for m in shared_to}
    if head in ENCODER_ADAPTERS:
        return {f"{ENCODER_ADAPTERS[head]}.{tail}": value}
    if head in TRAINABLE_QFORMERS and tail not in TIED:
        module, _, leaf = tail.rpartition(".")
        if module.rsplit(".", 1)[-1] in LORA_TARGETS:
            module += ".base_layer"
        return {f"{TRAINABLE_QFORMERS[head]}.{module}.{leaf}": value}
    return {}


def convert_state_dict(
    state: dict[str, torch.Tensor], blip2_image_modality: str = "image"
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(our trainable tensors, reference keys left unmapped)."""
    shared_to = _shared_targets(state)
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        mapped = _map_one(key, value, shared_to)
        if blip2_image_modality:
            frozen = (f"heads.{blip2_image_modality}.queries", f"heads.{blip2_image_modality}.llm_proj.")
            mapped = {k: v for k, v in mapped.items()
                      if not k.startswith(frozen) and f".{blip2_image_modality}.weight" not in k}
        if mapped:
            out.update(mapped)
        else:
            unmapped.append(key)
    return out, unmapped


def convert_file(src: str | Path, dst: str | Path, blip2_image_modality: str = "image"):
    obj = torch.load(src, map_location="cpu", weights_only=True)
    state = obj["model"] if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else obj
    converted, unmapped = convert_state_dict(state, blip2_image_modality)
    torch.save({"model": converted}, dst)
    return converted, unmapped


def _report(converted: dict, unmapped: list[str]) -> None:
    groups: dict[str, int] = {}
    for key in unmapped:
        top = key.split(".")[0]
        groups[top] = groups.get(top, 0) + 1
    print(f"mapped {len(converted)} tensors")
    print(f"unmapped {len(unmapped)} reference tensors (frozen parts come from the pretrained files), by module:")
    for top, count in sorted(groups.items()):
        print(f"  {top:40s} {count}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="reference RegionBLIP checkpoint (.pth)")
    parser.add_argument("dst", help="output: this framework's trainable-tensor checkpoint")
    parser.add_argument("--blip2-image-modality", default="image",
                        help="modality kept as BLIP-2's frozen image path (its queries/projection/LoRA dropped); "
                             "'' keeps everything")
    args = parser.parse_args(argv)
    converted, unmapped = convert_file(args.src, args.dst, args.blip2_image_modality)
    _report(converted, unmapped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
