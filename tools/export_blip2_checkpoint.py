"""Write a trained image modality of a RegionBLIP run as a LAVIS BLIP-2 checkpoint, the file a later run names in
`model.blip2_checkpoint_path` (with `init_from_blip2`) to start from it, frozen, as RegionBLIP starts from BLIP-2:

    python tools/export_blip2_checkpoint.py --run output/demo/stage1 --out data/demo/assets/blip2_tiny.pth \
        [--modality image]

The run directory holds the run's `config.yaml` and `checkpoint_*.pth` (the latest is taken). The file holds
`{"model": {...}}` with the keys of LAVIS's Blip2OPT / Blip2T5: `visual_encoder.*`, `ln_vision.*`, `Qformer.*`,
`query_tokens`, `opt_proj.*` (or `t5_proj.*`), `vision_proj.*`, `text_proj.*`, `itm_head.*`, `temp`.
The modality must have no LoRA (BLIP-2's image path trains the Q-Former itself); its Q-Former must hold no adapter.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import lavis  # noqa: F401  (registers the built-in models)
from lavis.common.checkpoint import latest_checkpoint
from lavis.common.checkpoint_compat import Purpose
from lavis.common.config import add_debug_flag, load_config, report_config_errors
from lavis.common.preflight import load_for_inference
from lavis.common.registry import MODELS
from lavis.models import lora
from lavis.models.llm import LLMFamily


def blip2_state(model, modality: str) -> dict[str, torch.Tensor]:
    """The LAVIS BLIP-2 state dict of `modality`'s path through `model` (a RegionBLIP)."""
    m = model.cfg.modalities[modality]
    if m.lora or m.region is not None:
        raise ValueError(f"modality '{modality}' has LoRA or a region: only a plain image path is a BLIP-2")
    qformer = model.qformers[m.qformer]
    if lora.adapter_names_in(qformer):
        raise ValueError(f"Q-Former '{m.qformer}' holds LoRA adapters {lora.adapter_names_in(qformer)}; export a run "
                         "whose Q-Former has none")
    state = {f"Qformer.{k}": v for k, v in qformer.state_dict().items()}
    state.update(model.encoders[m.encoder].state_dict())  # visual_encoder.*, ln_vision.*
    llm_proj = "opt_proj" if LLMFamily(model.cfg.llm.family) is LLMFamily.opt else "t5_proj"
    heads = model.heads[modality]
    renames = {"queries": "query_tokens", "llm_proj.": f"{llm_proj}.", "temp": "temp"}
    for key, value in heads.state_dict().items():
        for src, dst in renames.items():
            if key == src or (src.endswith(".") and key.startswith(src)):
                key = dst + key[len(src):]
                break
        state[key] = value.reshape([]) if key == "temp" else value
    if model.itc_text is not None:  # shared_itc_text_head: BLIP-2's text_proj.* and temp are the shared ones
        state.update({k: v.reshape([]) if k == "temp" else v for k, v in model.itc_text.state_dict().items()})
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="a training run directory (config.yaml + checkpoints)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--modality", default="image")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    ckpt = latest_checkpoint(args.run)
    if ckpt is None:
        parser.error(f"{args.run} holds no checkpoint_*.pth")
    cfg = load_config(str(args.run / "config.yaml"))
    if args.modality not in cfg.model.modalities:
        parser.error(f"--modality {args.modality} is not one of {list(cfg.model.modalities)}")
    # the run's config.yaml against the config its checkpoint holds (a later run may have overwritten it), and the
    # frozen weights, before the model is built
    state = load_for_inference(cfg, str(ckpt), "--run", "the command line", Purpose.export)
    model = MODELS.get(cfg.model_arch).from_config(cfg.model)
    model.load_trainable_state_dict(state["model"])
    state = blip2_state(model, args.modality)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, args.out)
    print(f"wrote {args.out}: {len(state)} tensors of modality '{args.modality}' from {ckpt}")


if __name__ == "__main__":
    report_config_errors(main)
