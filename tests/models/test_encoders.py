"""Frozen encoders at tiny sizes: EVA ViT (timm) with LAVIS weights, Point-BERT with ULIP weights, FPS / KNN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lavis.common.registry import ENCODERS
from lavis.models.eva_vit import EvaViT, EvaViTConfig
from lavis.models.pointbert.encoder import PointBert, PointBertConfig
from lavis.models.pointbert.sampling import farthest_point_sample, group_points, knn_indices


def tiny_eva(**overrides) -> EvaViTConfig:
    return EvaViTConfig(**{"img_size": 32, "patch_size": 8, "width": 32, "depth": 2, "num_heads": 2,
                           "mlp_dim": 64, **overrides})


def tiny_pointbert(**overrides) -> PointBertConfig:
    return PointBertConfig(**{"num_groups": 16, "group_size": 8, "group_embed_dim": 48, "width": 32, "depth": 2,
                              "num_heads": 2, **overrides})


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial values everywhere, including tensors that initialise to 0 or 1 (q/v bias, norms, BN stats)."""
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in module.state_dict().items():
        if not tensor.is_floating_point():
            continue
        if name.endswith("running_var"):
            tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
        else:
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.2)
    return module.eval()


def lavis_eva_reference(state: dict, images: torch.Tensor, patch: int, heads: int) -> torch.Tensor:
    """LAVIS's EVA ViT-g + ln_vision written out from LAVIS-named tensors: q and v biases with a zero k bias,
    scale head_dim^-0.5, exact GELU, LayerNorm eps 1e-6 inside the ViT and 1e-5 in ln_vision."""

    def w(key):
        return state["visual_encoder." + key]

    x = F.conv2d(images, w("patch_embed.proj.weight"), w("patch_embed.proj.bias"), stride=patch)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([w("cls_token").expand(len(x), -1, -1), x], dim=1) + w("pos_embed")
    batch, tokens, width = x.shape
    i = 0
    while f"visual_encoder.blocks.{i}.norm1.weight" in state:
        def b(key, i=i):
            return w(f"blocks.{i}.{key}")

        h = F.layer_norm(x, (width,), b("norm1.weight"), b("norm1.bias"), 1e-6)
        qkv_bias = torch.cat([b("attn.q_bias"), torch.zeros_like(b("attn.q_bias")), b("attn.v_bias")])
        qkv = F.linear(h, b("attn.qkv.weight"), qkv_bias).reshape(batch, tokens, 3, heads, width // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (q * (width // heads) ** -0.5) @ k.transpose(-2, -1)
        h = (attn.softmax(-1) @ v).transpose(1, 2).reshape(batch, tokens, width)
        x = x + F.linear(h, b("attn.proj.weight"), b("attn.proj.bias"))
        h = F.layer_norm(x, (width,), b("norm2.weight"), b("norm2.bias"), 1e-6)
        h = F.gelu(F.linear(h, b("mlp.fc1.weight"), b("mlp.fc1.bias")))
        x = x + F.linear(h, b("mlp.fc2.weight"), b("mlp.fc2.bias"))
        i += 1
    return F.layer_norm(x, (width,), state["ln_vision.weight"], state["ln_vision.bias"], 1e-5)


def save_lavis_blip2(encoder: EvaViT, path, extra_blocks: int = 0) -> None:
    """A BLIP-2-like file: {"model": {visual_encoder.*, ln_vision.*, other modules' tensors}}."""
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    for i in range(extra_blocks):  # the 40th block of eva_vit_g.pth that BLIP-2 does not use
        for k, v in list(state.items()):
            if k.startswith("visual_encoder.blocks.0."):
                state[k.replace("blocks.0.", f"blocks.{encoder.depth + i}.")] = torch.randn_like(v)
    state["query_tokens"] = torch.randn(1, 4, 8)
    state["Qformer.bert.embeddings.word_embeddings.weight"] = torch.randn(10, 8)
    torch.save({"model": state, "epoch": 1}, path)


# ---------------------------------------------------------------- EVA ViT


def test_eva_is_registered_and_returns_all_tokens():
    assert ENCODERS.get("eva_vit") is EvaViT
    encoder = EvaViT.from_config(tiny_eva()).eval()
    out = encoder(torch.randn(2, 3, 32, 32))
    assert encoder.num_features == 32
    assert out.shape == (2, 1 + 4 * 4, 32)
    assert {"visual_encoder.pos_embed", "visual_encoder.cls_token"} <= encoder.no_weight_decay()


def test_eva_full_size_dimensions_match_vit_g():
    block = EvaViT(EvaViTConfig(depth=1)).visual_encoder.blocks[0]
    assert block.mlp.fc1.out_features == 6144  # float mlp_ratio must not round to 6143
    assert block.attn.qkv.weight.shape == (3 * 1408, 1408)


def test_eva_computes_what_lavis_computes():
    source = randomize_(EvaViT(tiny_eva()), seed=0)
    state = source.state_dict()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(source(images), lavis_eva_reference(state, images, patch=8, heads=2))


def test_eva_loads_lavis_blip2_checkpoint(tmp_path):
    source = randomize_(EvaViT(tiny_eva()), seed=0)
    save_lavis_blip2(source, tmp_path / "blip2.pth", extra_blocks=1)
    loaded = EvaViT.from_config(tiny_eva(checkpoint_path=str(tmp_path / "blip2.pth"))).eval()
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0, msg=key)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), source(images), rtol=0, atol=0)


def test_eva_loads_raw_eva_vit_g_file_without_ln_vision(tmp_path):
    source = randomize_(EvaViT(tiny_eva()), seed=0)
    raw = {k.removeprefix("visual_encoder."): v for k, v in source.state_dict().items() if k.startswith("visual_")}
    torch.save(raw, tmp_path / "eva_vit_g.pth")
    loaded = EvaViT.from_config(tiny_eva(checkpoint_path=str(tmp_path / "eva_vit_g.pth")))
    for key, value in source.visual_encoder.state_dict().items():
        torch.testing.assert_close(loaded.visual_encoder.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_eva_missing_vit_tensor_is_an_error(tmp_path):
    state = EvaViT(tiny_eva()).state_dict()
    del state["visual_encoder.blocks.1.mlp.fc2.weight"]
    torch.save({"model": state}, tmp_path / "partial.pth")
    with pytest.raises(KeyError, match="blocks.1.mlp.fc2.weight"):
        EvaViT.from_config(tiny_eva(checkpoint_path=str(tmp_path / "partial.pth")))


def test_eva_weights_from_one_grid_run_at_another(tmp_path):
    source = randomize_(EvaViT(tiny_eva(img_size=32)), seed=0)  # 4x4 patches
    save_lavis_blip2(source, tmp_path / "blip2.pth")
    at_48 = EvaViT.from_config(tiny_eva(img_size=48, checkpoint_path=str(tmp_path / "blip2.pth"))).eval()
    assert at_48.visual_encoder.pos_embed.shape == (1, 1 + 6 * 6, 32)
    # LAVIS's interpolate_pos_embed: the CLS position kept, the grid resized bicubically (align_corners=False)
    old = source.visual_encoder.pos_embed.detach()
    grid = F.interpolate(old[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2), size=(6, 6), mode="bicubic",
                         align_corners=False)
    expected = torch.cat([old[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 36, 32)], dim=1)
    torch.testing.assert_close(at_48.visual_encoder.pos_embed.detach(), expected)
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert at_48(images).shape == (2, 37, 32)
        # resizing the built encoder (evaluation at 364 in the paper) interpolates the same way
        source.set_input_size(48)
        assert source.img_size == 48
        torch.testing.assert_close(source(images), at_48(images))
        source.set_input_size(32)
        assert source(torch.randn(1, 3, 32, 32)).shape == (1, 17, 32)


def test_eva_shape_mismatch_names_the_key(tmp_path):
    save_lavis_blip2(EvaViT(tiny_eva(mlp_dim=64)), tmp_path / "blip2.pth")
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.fc1\.weight"):
        EvaViT.from_config(tiny_eva(mlp_dim=48, checkpoint_path=str(tmp_path / "blip2.pth")))


def test_eva_grad_checkpointing_changes_nothing_but_memory():
    encoder = randomize_(EvaViT(tiny_eva()), seed=0)
    images = torch.randn(2, 3, 32, 32)
    results = []
    for enable in (False, True):
        encoder.set_grad_checkpointing(enable)
        x = images.clone().requires_grad_(True)
        out = encoder(x)
        out.square().sum().backward()
        results.append((out.detach(), x.grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


# ---------------------------------------------------------------- sampling


def naive_fps(xyz: torch.Tensor, n: int) -> list[int]:
    chosen = [0]
    while len(chosen) < n:
        dist = [min(float((p - xyz[c]).square().sum()) for c in chosen) for p in xyz]
        chosen.append(max(range(len(xyz)), key=lambda i: dist[i]))
    return chosen


def test_fps_picks_far_apart_points():
    # a cluster at 0, a pair at 4, a pair at 10 on the x axis
    xs = torch.tensor([0.0, 0.1, 0.2, 4.0, 4.1, 10.0, 9.9])
    line = torch.stack([xs, torch.zeros(7), torch.zeros(7)], dim=-1)
    perm = torch.tensor([6, 2, 0, 4, 1, 3, 5])
    batch = torch.stack([line, line[perm]])
    idx = farthest_point_sample(batch, 3)
    assert idx[0].tolist() == [0, 5, 4]  # 0, then x=10, then x=4.1 (4.0 is 0.1 closer to the cluster at 0)
    assert batch[1, idx[1], 0].tolist() == pytest.approx([9.9, 0.0, 4.1])  # 4.1 is 0.1 farther from 0 than 4.0


def test_fps_matches_naive_reference():
    xyz = torch.randn(3, 50, 3, generator=torch.Generator().manual_seed(0))
    idx = farthest_point_sample(xyz, 12)
    for b in range(3):
        assert idx[b].tolist() == naive_fps(xyz[b], 12)


def test_knn_returns_true_nearest_neighbours_in_fp32_under_autocast():
    gen = torch.Generator().manual_seed(0)
    points, queries = torch.randn(2, 200, 3, generator=gen), torch.randn(2, 7, 3, generator=gen)
    brute = (queries[:, :, None] - points[:, None]).square().sum(-1)  # [B, Q, P], no matmul expansion
    expected = brute.argsort(dim=-1)[..., :5]
    torch.testing.assert_close(knn_indices(points, queries, 5), expected, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(knn_indices(points, queries, 5), expected, rtol=0, atol=0)


def test_groups_are_centred_and_carry_colours():
    gen = torch.Generator().manual_seed(0)
    points = torch.cat([torch.randn(2, 64, 3, generator=gen), torch.rand(2, 64, 3, generator=gen)], dim=-1)
    groups, centres = group_points(points, num_groups=8, group_size=4)
    assert groups.shape == (2, 8, 4, 6) and centres.shape == (2, 8, 3)
    # the centre is its own nearest neighbour: first member sits at the origin, with the centre's colour
    assert groups[..., 0, :3].abs().max() == 0
    for b in range(2):
        for g in range(8):
            absolute = groups[b, g, :, :3] + centres[b, g]
            member = (points[b, None, :, :3] - absolute[:, None]).abs().sum(-1).argmin(-1)
            torch.testing.assert_close(points[b, member, 3:], groups[b, g, :, 3:])


# ---------------------------------------------------------------- Point-BERT


def ulip_key_names(depth: int) -> set[str]:
    """The Point-BERT tensor names in ULIP's `point_encoder` (models/pointbert/point_encoder.py, dvae.Encoder)."""
    names = {"cls_token", "cls_pos", "reduce_dim.weight", "reduce_dim.bias", "norm.weight", "norm.bias"}
    names |= {f"pos_embed.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    for conv in ("first_conv", "second_conv"):
        names |= {f"encoder.{conv}.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")}
        names |= {f"encoder.{conv}.1.{p}" for p in ("weight", "bias", "running_mean", "running_var",
                                                       "num_batches_tracked")}
    for i in range(depth):
        block = f"blocks.blocks.{i}."
        names |= {block + k for k in ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.proj.weight",
                                      "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight",
                                      "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")}
    return names


def test_pointbert_is_registered_and_returns_cls_plus_groups():
    assert ENCODERS.get("pointbert") is PointBert
    encoder = PointBert.from_config(tiny_pointbert()).eval()
    assert encoder.num_features == 32
    assert encoder(torch.randn(2, 64, 3)).shape == (2, 1 + 16, 32)
    assert set(encoder.state_dict()) == ulip_key_names(depth=2)
    with pytest.raises(ValueError, match="expected points"):
        encoder(torch.randn(2, 64, 6))


def point_bert_reference(state: dict, points: torch.Tensor, groups: int, size: int, heads: int) -> torch.Tensor:
    """ULIP's PointTransformer written out from its tensor names: BatchNorm with running stats, max-pooled
    mini-PointNet, position embedding added before every block, no qkv bias, LayerNorm eps 1e-5."""
    grouped, centres = group_points(points, groups, size)
    batch = points.shape[0]

    def conv(x, name):  # Conv1d(k=1) -> BN -> ReLU -> Conv1d(k=1)
        x = F.conv1d(x, state[f"{name}.0.weight"], state[f"{name}.0.bias"])
        x = F.batch_norm(x, state[f"{name}.1.running_mean"], state[f"{name}.1.running_var"],
                         state[f"{name}.1.weight"], state[f"{name}.1.bias"], training=False, eps=1e-5)
        return F.conv1d(F.relu(x), state[f"{name}.3.weight"], state[f"{name}.3.bias"])

    x = conv(grouped.flatten(0, 1).transpose(1, 2), "encoder.first_conv")
    x = torch.cat([x.max(2, keepdim=True).values.expand_as(x), x], dim=1)
    x = conv(x, "encoder.second_conv").max(2).values.reshape(batch, groups, -1)
    x = F.linear(x, state["reduce_dim.weight"], state["reduce_dim.bias"])
    width = x.shape[-1]
    x = torch.cat([state["cls_token"].expand(batch, -1, -1), x], dim=1)
    pos = F.linear(F.gelu(F.linear(centres, state["pos_embed.0.weight"], state["pos_embed.0.bias"])),
                   state["pos_embed.2.weight"], state["pos_embed.2.bias"])
    pos = torch.cat([state["cls_pos"].expand(batch, -1, -1), pos], dim=1)
    i = 0
    while f"blocks.blocks.{i}.norm1.weight" in state:
        def b(key, i=i):
            return state[f"blocks.blocks.{i}.{key}"]

        x = x + pos
        h = F.layer_norm(x, (width,), b("norm1.weight"), b("norm1.bias"), 1e-5)
        q, k, v = F.linear(h, b("attn.qkv.weight")).reshape(batch, -1, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        h = (((q @ k.transpose(-2, -1)) * (width // heads) ** -0.5).softmax(-1) @ v).transpose(1, 2).flatten(2)
        x = x + F.linear(h, b("attn.proj.weight"), b("attn.proj.bias"))
        h = F.layer_norm(x, (width,), b("norm2.weight"), b("norm2.bias"), 1e-5)
        h = F.gelu(F.linear(h, b("mlp.fc1.weight"), b("mlp.fc1.bias")))
        x = x + F.linear(h, b("mlp.fc2.weight"), b("mlp.fc2.bias"))
        i += 1
    return F.layer_norm(x, (width,), state["norm.weight"], state["norm.bias"], 1e-5)


@pytest.mark.parametrize("in_channels", [3, 6])
def test_pointbert_computes_what_ulip_computes(in_channels):
    encoder = randomize_(PointBert(tiny_pointbert(in_channels=in_channels)), seed=0)
    points = torch.randn(2, 64, in_channels)
    with torch.no_grad():
        expected = point_bert_reference(encoder.state_dict(), points, groups=16, size=8, heads=2)
        torch.testing.assert_close(encoder(points), expected)


@pytest.mark.parametrize("layout", ["ulip", "point_bert", "bare"])
def test_pointbert_loads_reference_checkpoints(tmp_path, layout):
    source = randomize_(PointBert(tiny_pointbert()), seed=0)
    own = source.state_dict()
    if layout == "ulip":  # ULIP's torch.save({"state_dict": model.state_dict(), ...}) under DDP
        state = {f"module.point_encoder.{k}": v for k, v in own.items()}
        state |= {"module.pc_projection": torch.randn(32, 8), "module.logit_scale": torch.tensor(1.0)}
        blob = {"state_dict": state, "epoch": 3}
    elif layout == "point_bert":  # Point-BERT fine-tuned: {"base_model": {"module.<name>": ...}} plus a head
        blob = {"base_model": {f"module.{k}": v for k, v in own.items()} | {"module.cls_head_finetune.0.weight":
                                                                          torch.randn(4, 4)}}
    else:
        blob = own
    torch.save(blob, tmp_path / "point.pth")
    loaded = PointBert.from_config(tiny_pointbert(checkpoint_path=str(tmp_path / "point.pth"))).eval()
    points = torch.randn(2, 64, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(points), source(points), rtol=0, atol=0)


def test_pointbert_colour_encoder_from_regionblip_reference(tmp_path):
    """The reference keeps a 3-channel `encoder` and a 6-channel `encoder_color`; in_channels 6 takes the latter."""
    source = randomize_(PointBert(tiny_pointbert(in_channels=6)), seed=0)
    xyz_only = randomize_(PointBert(tiny_pointbert(in_channels=3)), seed=1)
    state = {f"point_encoder.{k}": v for k, v in source.state_dict().items()}
    state = {k.replace("point_encoder.encoder.", "point_encoder.encoder_color."): v for k, v in state.items()}
    state |= {f"point_encoder.{k}": v for k, v in xyz_only.encoder.state_dict(prefix="encoder.").items()}
    torch.save(state, tmp_path / "regionblip_pc.pth")
    loaded = PointBert.from_config(tiny_pointbert(in_channels=6, checkpoint_path=str(tmp_path / "regionblip_pc.pth")))
    points = torch.randn(2, 64, 6)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(points), source(points), rtol=0, atol=0)


def test_pointbert_shape_mismatch_names_the_key(tmp_path):
    torch.save(PointBert(tiny_pointbert(in_channels=3)).state_dict(), tmp_path / "xyz.pth")
    with pytest.raises(ValueError, match=r"encoder\.first_conv\.0\.weight"):
        PointBert.from_config(tiny_pointbert(in_channels=6, checkpoint_path=str(tmp_path / "xyz.pth")))


def test_pointbert_colours_change_the_tokens():
    encoder = randomize_(PointBert(tiny_pointbert(in_channels=6)), seed=0)
    xyz = torch.randn(2, 64, 3)
    red, blue = torch.zeros(2, 64, 3), torch.zeros(2, 64, 3)
    red[..., 0], blue[..., 2] = 1.0, 1.0
    with torch.no_grad():
        out_red = encoder(torch.cat([xyz, red], dim=-1))
        torch.testing.assert_close(encoder(torch.cat([xyz, red], dim=-1)), out_red)
        assert (encoder(torch.cat([xyz, blue], dim=-1)) - out_red).abs().max() > 1e-3


def test_pointbert_grad_checkpointing_changes_nothing_but_memory():
    encoder = randomize_(PointBert(tiny_pointbert()), seed=0)
    points = torch.randn(2, 64, 3)
    results = []
    for enable in (False, True):
        encoder.set_grad_checkpointing(enable)
        x = points.clone().requires_grad_(True)
        out = encoder(x)
        out.square().sum().backward()
        results.append((out.detach(), x.grad))
    assert results[0][1].abs().sum() > 0
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
