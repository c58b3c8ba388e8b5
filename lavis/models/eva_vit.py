"""EVA-CLIP ViT-g/14, the frozen image encoder of BLIP-2, built on timm's `Eva` (fused attention).

BLIP-2 keeps 39 of the 40 blocks, drops the final norm and head, and follows the ViT with its own `ln_vision`
LayerNorm; both live in this module, so the output is the token sequence the Q-Former attends to.

Accepted weight files (see `checkpoint_filter`):
  * LAVIS BLIP-2 checkpoints: `visual_encoder.*` and `ln_vision.*` are taken, every other key is ignored;
  * the raw `eva_vit_g.pth` (keys without a prefix) and EVA-CLIP files (`visual.` prefix).
timm's fused-qkv EVA attention uses the same parameter names as LAVIS (`attn.qkv.weight`, `attn.q_bias`,
`attn.v_bias`, the k bias being a zero buffer), so mapping is a prefix change; blocks beyond `depth` are dropped and
the position embedding is resampled when the file's grid differs from the configured `img_size`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.eva import Eva
from torch import nn

from lavis.common.checkpoint_io import load_into, read_state_dict
from lavis.common.registry import ENCODERS

log = logging.getLogger(__name__)

# Prefixes that mark the ViT's tensors inside a larger file, tried in order.
_VIT_PREFIXES = ("visual_encoder.", "visual.")


@dataclass
class EvaViTConfig:
    img_size: int = 224
    patch_size: int = 14
    width: int = 1408
    depth: int = 39
    num_heads: int = 16
    mlp_dim: int = 6144
    checkpoint_path: Optional[str] = None
    grad_checkpointing: bool = False


def _resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int]) -> torch.Tensor:
    """[1, 1 + h*w, C] -> [1, 1 + H*W, C]; bicubic without antialias, as LAVIS's `interpolate_pos_embed`."""
    old_side = math.isqrt(pos_embed.shape[1] - 1)
    if old_side * old_side != pos_embed.shape[1] - 1:
        raise ValueError(f"pos_embed with {pos_embed.shape[1]} tokens is not 1 + a square grid")
    if (old_side, old_side) == tuple(new_grid):
        return pos_embed
    log.info("resampling pos_embed from %dx%d to %dx%d", old_side, old_side, *new_grid)
    return resample_abs_pos_embed(
        pos_embed, new_size=list(new_grid), old_size=[old_side, old_side], num_prefix_tokens=1, antialias=False
    )


def checkpoint_filter(state: dict[str, torch.Tensor], encoder: EvaViT) -> dict[str, torch.Tensor]:
    """Map a LAVIS / EVA-CLIP / raw ViT-g state dict onto `encoder`'s names (`visual_encoder.*`, `ln_vision.*`)."""
    prefix = next((p for p in _VIT_PREFIXES if any(k.startswith(p) for k in state)), "")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("ln_vision."):
            out[key] = value
            continue
        if prefix and not key.startswith(prefix):
            continue  # another module's tensor in a whole-model file
        name = key[len(prefix):]
        if name.startswith("blocks.") and int(name.split(".")[1]) >= encoder.depth:
            continue  # BLIP-2 uses the first `depth` blocks only
        if name == "pos_embed":
            value = _resample_pos_embed(value, encoder.visual_encoder.patch_embed.grid_size)
        out["visual_encoder." + name] = value
    return out


@ENCODERS.register("eva_vit")
class EvaViT(nn.Module):
    """Images [B, 3, H, W] (normalised) -> tokens [B, 1 + (H/patch)*(W/patch), width], CLS first, after ln_vision."""

    Config: ClassVar[type] = EvaViTConfig

    def __init__(self, cfg: EvaViTConfig):
        super().__init__()
        self.depth = cfg.depth
        self.num_features = cfg.width
        self.visual_encoder = Eva(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            num_classes=0,
            global_pool="",
            embed_dim=cfg.width,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            # timm takes int(width * ratio); the half unit keeps float rounding from giving mlp_dim - 1
            mlp_ratio=(cfg.mlp_dim + 0.5) / cfg.width,
            qkv_bias=True,
            qkv_fused=True,
        )
        # BLIP-2 drops the final norm; set after construction because timm's argument for it changed across versions
        self.visual_encoder.norm = nn.Identity()
        self.visual_encoder.fc_norm = nn.Identity()
        self.ln_vision = nn.LayerNorm(cfg.width)  # eps 1e-5 as in LAVIS; the ViT's own norms use 1e-6
        self.set_grad_checkpointing(cfg.grad_checkpointing)

    @classmethod
    def from_config(cls, cfg: EvaViTConfig) -> EvaViT:
        encoder = cls(cfg)
        if cfg.checkpoint_path:
            missing, _ = encoder.load_pretrained(read_state_dict(cfg.checkpoint_path), where=cfg.checkpoint_path)
            # eva_vit_g.pth has no ln_vision: BLIP-2's checkpoint brings it, loaded later through load_pretrained
            vit_missing = [k for k in missing if not k.startswith("ln_vision.")]
            if vit_missing:
                raise KeyError(f"{cfg.checkpoint_path}: ViT tensors missing from the file: {vit_missing[:10]}")
        return encoder

    def load_pretrained(self, state: dict[str, torch.Tensor], where: str) -> tuple[list[str], list[str]]:
        """Load any accepted format (see module docstring); returns (missing, unexpected) in this module's names."""
        return load_into(self, checkpoint_filter(state, self), where)

    @property
    def img_size(self) -> int:
        return self.visual_encoder.patch_embed.img_size[0]

    def set_input_size(self, img_size: int) -> None:
        """Run the built encoder at another square resolution (e.g. 364 for evaluation); resamples pos_embed."""
        vit = self.visual_encoder
        vit.patch_embed.set_input_size(img_size=(img_size, img_size))
        resampled = _resample_pos_embed(vit.pos_embed.detach(), vit.patch_embed.grid_size)
        vit.pos_embed = nn.Parameter(resampled, requires_grad=vit.pos_embed.requires_grad)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual_encoder.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        return {"visual_encoder.pos_embed", "visual_encoder.cls_token"}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.ln_vision(self.visual_encoder.forward_features(images))

    def region_token_mask(self, images: torch.Tensor, region_mask: torch.Tensor,
                          region_sample: torch.Tensor) -> torch.Tensor:
        """Pixel masks [R, H, W] of regions (of images [B, 3, H, W]; `region_sample` [R] names each one's image) ->
        the tokens [R, 1 + grid] each region's queries may attend to: every patch holding a pixel of the mask, and
        CLS (the image summary, context for a small region). Any pixel counts, so a non-empty mask always keeps a
        patch, and a mask over the whole image keeps every token: a box's attention."""
        patch = self.visual_encoder.patch_embed.patch_size
        if region_mask.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"region_mask is {tuple(region_mask.shape[-2:])} pixels but the images are "
                             f"{tuple(images.shape[-2:])}: masks must be at the processed image's resolution")
        patches = torch.nn.functional.max_pool2d(region_mask[:, None].float(), kernel_size=patch, stride=patch)
        cls = torch.ones(region_mask.shape[0], 1, dtype=torch.bool, device=region_mask.device)
        return torch.cat([cls, patches.flatten(1) > 0], dim=1)
