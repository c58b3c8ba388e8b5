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
LAVIS saves the non-parameter entries of the state dict too: of the trainable point Q-Former these are the tied
aliases `cls.predictions.decoder.{weight,bias}` (of `bert.embeddings.word_embeddings.weight` and
`cls.predictions.bias`, which carry the values) and the `bert.embeddings.position_ids` buffer (our Q-Former computes
positions); they are skipped, after checking that each alias equals the tensor it is tied to.
With `--blip2-image-modality image` (the default, as `freeze_blip2_pretrain`), every tensor of that modality (queries,
projections, ITC / ITM heads, its copy of the shared text projection and temperature, LoRA) is dropped: our config
keeps BLIP-2's own path frozen, with no adapter, so those tensors come from the BLIP-2 file. Dropping a LoRA B that is
not zero changes the image path (the reference then trained the image adapter): the converter warns, and
`--blip2-image-modality ''` keeps them (for a config whose image modality has `lora: true` and
`freeze_blip2_pretrain: false`).

Usage: python tools/convert_regionblip_checkpoint.py regionblip_opt-2.7b.pth out.pth
The file is read with weights_only=True: a checkpoint is data, never code.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

import torch

MODALITIES = {"img": "image", "img_region": "image_region", "pc": "pointcloud", "pc_region": "pointcloud_region"}
QFORMERS = {"Qformer": "qformers.blip2", "Qformer_pc": "qformers.point"}
LLMS = {"opt_model": "llm.model", "t5_model": "llm.model"}
TRAINABLE_QFORMERS = {"Qformer_pc": "qformers.point"}
LORA_TARGETS = ("query", "value")  # Linears our Q-Former LoRA wraps (their base weight gains `.base_layer`)
ENCODER_ADAPTERS = {"pc_adapter": "encoder_adapters.point"}
SHARED_HEADS = {"stage1_proj_text": "text_proj", "temp": "temp"}
# Non-parameter entries LAVIS saves for a trainable Q-Former: alias -> the tensor it is tied to, and BERT's buffer
TIED = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias"}
BUFFERS = ("bert.embeddings.position_ids",)

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
    if head in TRAINABLE_QFORMERS:
        module, _, leaf = tail.rpartition(".")
        if module.rsplit(".", 1)[-1] in LORA_TARGETS:
            module += ".base_layer"
        return {f"{TRAINABLE_QFORMERS[head]}.{module}.{leaf}": value}
    return {}


class Conversion(NamedTuple):
    converted: dict[str, torch.Tensor]  # our trainable tensors
    unmapped: list[str]  # reference keys of frozen parts (they come from the pretrained files)
    dropped: list[str]  # reference keys of BLIP-2's frozen image path (they come from the BLIP-2 file)


def _is_tied_entry(key: str, state: dict[str, torch.Tensor]) -> bool:
    """Whether `key` is a tied alias or buffer of a trainable Q-Former (nothing of ours); an alias that differs from
    its tensor is an error, since skipping it would then lose a value."""
    head, _, tail = key.partition(".")
    if head not in TRAINABLE_QFORMERS or (tail not in TIED and tail not in BUFFERS):
        return False
    owner = f"{head}.{TIED[tail]}" if tail in TIED else None
    if owner in state and not torch.equal(state[owner], state[key]):
        raise ValueError(f"{key} differs from {owner}, the tensor it is tied to: the file is not a tied LAVIS save")
    return True


def convert_state_dict(state: dict[str, torch.Tensor], blip2_image_modality: str = "image") -> Conversion:
    """A reference state dict -> our trainable tensors; `blip2_image_modality` ('' for none) names the modality
    whose tensors are dropped because our config keeps it as BLIP-2's frozen path."""
    shared_to = _shared_targets(state)
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    dropped: list[str] = []
    for key, value in state.items():
        if _is_tied_entry(key, state):
            continue
        mapped = _map_one(key, value, shared_to)
        if blip2_image_modality:
            kept = {k: v for k, v in mapped.items() if not _owned_by(k, blip2_image_modality)}
            if mapped and not kept:
                dropped.append(key)
                continue
            mapped = kept
        if mapped:
            out.update(mapped)
        else:
            unmapped.append(key)
    _warn_if_trained_adapter(state, dropped, blip2_image_modality)
    return Conversion(out, unmapped, dropped)


def _owned_by(name: str, modality: str) -> bool:
    """Whether our tensor `name` is one of `modality`'s heads or LoRA tensors."""
    return name.startswith(f"heads.{modality}.") or any(f".lora_{ab}.{modality}." in name for ab in "AB")


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


def convert_file(src: str | Path, dst: str | Path, blip2_image_modality: str = "image") -> Conversion:
    obj = torch.load(src, map_location="cpu", weights_only=True)
    state = obj["model"] if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else obj
    result = convert_state_dict(state, blip2_image_modality)
    torch.save({"model": result.converted}, dst)
    return result


def _report(result: Conversion) -> None:
    groups: dict[str, int] = {}
    for key in result.unmapped:
        top = key.split(".")[0]
        groups[top] = groups.get(top, 0) + 1
    print(f"mapped {len(result.converted)} tensors")
    if result.dropped:
        print(f"dropped {len(result.dropped)} tensors of BLIP-2's frozen image path (they come from the BLIP-2 file)")
    print(f"unmapped {len(result.unmapped)} reference tensors (frozen parts come from the pretrained files), "
          "by module:")
    for top, count in sorted(groups.items()):
        print(f"  {top:40s} {count}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="reference RegionBLIP checkpoint (.pth)")
    parser.add_argument("dst", help="output: this framework's trainable-tensor checkpoint")
    parser.add_argument("--blip2-image-modality", default="image",
                        help="modality kept as BLIP-2's frozen image path (its heads and LoRA dropped); "
                             "'' keeps everything")
    args = parser.parse_args(argv)
    _report(convert_file(args.src, args.dst, args.blip2_image_modality))
    return 0


if __name__ == "__main__":
    sys.exit(main())
