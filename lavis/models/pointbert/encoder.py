"""Point-BERT point-cloud encoder (the transformer of ULIP / Point-BERT), registered as encoder `pointbert`.

Points [B, P, 3 or 6] -> farthest-point centres and KNN groups (`sampling.py`) -> mini-PointNet per group
(`encoder`) -> `reduce_dim` to the transformer width -> CLS token + groups, with the centres' learned position
embedding (and `cls_pos`) added before every block -> `norm`. Output: all tokens [B, 1 + num_groups, width].

Module names are those of the reference implementations, so a file loads by stripping a prefix. Accepted
(`checkpoint_filter`), after unwrapping a `state_dict` / `base_model` / `model` entry and a leading `module.`:
  * ULIP / ULIP-2 files: `point_encoder.*` (other ULIP tensors such as `pc_projection` are ignored);
  * Point-BERT files: `base_model.*` (fine-tuned) or `transformer_q.*` (pre-trained);
  * a bare encoder state dict (no prefix).
For `in_channels: 6` the RegionBLIP reference stores its colour group embedding as `encoder_color.*`; that is
taken instead of `encoder.*` when present. Keys that are not this encoder's (classifier heads, dVAE,
momentum encoder) are reported as unexpected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from lavis.common.checkpoint_io import load_into, read_state_dict
from lavis.common.registry import ENCODERS
from lavis.models.pointbert.sampling import check_fps_backend, group_indices, group_points, require_triton

_WRAPPER_KEYS = ("state_dict", "base_model", "model")
_ENCODER_PREFIXES = ("point_encoder.", "base_model.", "transformer_q.")


@dataclass
class PointBertConfig:
    in_channels: int = 3  # 3: xyz; 6: xyz + rgb (grouping uses xyz, the group embedding sees all channels)
    num_groups: int = 512
    group_size: int = 32
    group_embed_dim: int = 256  # width of the mini-PointNet output before reduce_dim
    width: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    checkpoint_path: Optional[str] = None
    grad_checkpointing: bool = False
    # farthest-point sampling: "torch" (per-centre Python loop) or "triton" (opt-in fused kernel on CUDA, falls
    # back to torch elsewhere; not yet timed on a GPU, hence not the default). See sampling.py.
    fps_backend: str = "torch"


class GroupEmbedding(nn.Module):
    """Mini-PointNet: groups [B, G, K, C] -> one vector per group [B, G, out_dim] (shared MLP, max-pool twice)."""

    def __init__(self, in_channels: int, out_dim: int):
        super().__init__()
        self.out_dim = out_dim
        self.first_conv = nn.Sequential(
            nn.Conv1d(in_channels, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True), nn.Conv1d(128, 256, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Conv1d(512, out_dim, 1)
        )

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        batch, num_groups, group_size, channels = groups.shape
        x = self.first_conv(groups.reshape(batch * num_groups, group_size, channels).transpose(1, 2))
        pooled = x.max(dim=2, keepdim=True).values
        x = self.second_conv(torch.cat([pooled.expand(-1, -1, group_size), x], dim=1))
        return x.max(dim=2).values.reshape(batch, num_groups, self.out_dim)


class TransformerEncoder(nn.Module):
    """Pre-norm blocks; Point-BERT adds the position embedding to the input of every block, not only the first."""

    def __init__(self, width: int, depth: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(width, num_heads, mlp_ratio=mlp_ratio, qkv_bias=False, norm_layer=nn.LayerNorm) for _ in range(depth)
        )
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x + pos, use_reentrant=False)
            else:
                x = block(x + pos)
        return x


def checkpoint_filter(state: dict, encoder: PointBert) -> dict[str, torch.Tensor]:
    """Map a ULIP / Point-BERT / bare state dict onto `encoder`'s names (see module docstring)."""
    for wrapper in _WRAPPER_KEYS:
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    state = {k.removeprefix("module."): v for k, v in state.items()}
    prefix = next((p for p in _ENCODER_PREFIXES if any(k.startswith(p) for k in state)), "")
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if encoder.in_channels != 3 and any(k.startswith("encoder_color.") for k in state):
        state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
        state = {("encoder." + k.removeprefix("encoder_color.") if k.startswith("encoder_color.") else k): v
                 for k, v in state.items()}
    return state


@ENCODERS.register("pointbert")
class PointBert(nn.Module):
    """Points [B, P, in_channels] -> tokens [B, 1 + num_groups, width], CLS first."""

    Config: ClassVar[type] = PointBertConfig

    def __init__(self, cfg: PointBertConfig):
        super().__init__()
        if cfg.in_channels < 3:
            raise ValueError(f"in_channels must include xyz (>= 3), got {cfg.in_channels}")
        check_fps_backend(cfg.fps_backend, "pointbert")
        if cfg.fps_backend == "triton":
            require_triton()  # fail at build time, not at the first CUDA forward
        self.fps_backend = cfg.fps_backend
        self.in_channels = cfg.in_channels
        self.num_groups = cfg.num_groups
        self.group_size = cfg.group_size
        self.num_features = cfg.width
        self.encoder = GroupEmbedding(cfg.in_channels, cfg.group_embed_dim)
        self.reduce_dim = nn.Linear(cfg.group_embed_dim, cfg.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, cfg.width))
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, cfg.width))
        self.blocks = TransformerEncoder(cfg.width, cfg.depth, cfg.num_heads, cfg.mlp_ratio)
        self.norm = nn.LayerNorm(cfg.width)
        self.set_grad_checkpointing(cfg.grad_checkpointing)

    @classmethod
    def from_config(cls, cfg: PointBertConfig) -> PointBert:
        encoder = cls(cfg)
        if cfg.checkpoint_path:
            missing, _ = encoder.load_pretrained(read_state_dict(cfg.checkpoint_path, key=None), cfg.checkpoint_path)
            missing = [k for k in missing if not k.endswith("num_batches_tracked")]  # unused by a frozen encoder
            if missing:
                raise KeyError(f"{cfg.checkpoint_path}: Point-BERT tensors missing from the file: {missing[:10]}")
        return encoder

    def load_pretrained(self, state: dict, where: str) -> tuple[list[str], list[str]]:
        """Load any accepted format (see module docstring); returns (missing, unexpected) in this module's names."""
        return load_into(self, checkpoint_filter(state, self), where)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.blocks.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "cls_pos"}

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        if points.shape[-1] != self.in_channels:
            raise ValueError(f"expected points [B, P, {self.in_channels}], got {tuple(points.shape)}")
        groups, centres = group_points(points, self.num_groups, self.group_size, self.fps_backend)
        tokens = self.reduce_dim(self.encoder(groups))
        batch = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(batch, -1, -1), self.pos_embed(centres)], dim=1)
        return self.norm(self.blocks(x, pos))

    @torch.no_grad()
    def region_token_mask(self, points: torch.Tensor, region_mask: torch.Tensor,
                          region_sample: torch.Tensor) -> torch.Tensor:
        """Point masks [R, P] of regions (of clouds [B, P, C]; `region_sample` [R] names each one's cloud) -> the
        tokens [R, 1 + num_groups] each region's queries may attend to: every group holding a point of the set, and
        CLS. The groups are recomputed as forward forms them (FPS and kNN are deterministic), so a cached encoder
        output can be masked too as long as the batch has its points."""
        if region_mask.shape[-1] != points.shape[1]:
            raise ValueError(f"region_mask covers {region_mask.shape[-1]} points but the clouds have "
                             f"{points.shape[1]}: masks must be over the processed points")
        index, _ = group_indices(points, self.num_groups, self.group_size, self.fps_backend)  # [B, G, K]
        per_region = index[region_sample].flatten(1)  # [R, G * K]
        covered = region_mask.gather(1, per_region).view(-1, self.num_groups, self.group_size).any(-1)
        cls = torch.ones(region_mask.shape[0], 1, dtype=torch.bool, device=region_mask.device)
        return torch.cat([cls, covered], dim=1)
