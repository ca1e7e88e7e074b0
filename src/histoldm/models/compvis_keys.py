"""Parameter names: ours (diffusers / transformers) -> CompVis latent-diffusion, derived from structure.

The mapping is computed per key of OUR model (a meta-device instance, so nothing is allocated):
each diffusers name is parsed into (block, index, layer) and rebuilt in CompVis numbering. The
converter reads the table in both directions, so import and export come from one set of rules.

CompVis UNet numbering (openaimodel.UNetModel, n = res blocks per level, L levels):
  input_blocks.0.0                   conv_in
  input_blocks.{1+l(n+1)+j}.0 / .1   level l, resblock j / its spatial transformer
  input_blocks.{1+l(n+1)+n}.0.op     level l downsample (all levels but the last)
  middle_block.0 / .1 / .2           resblock, spatial transformer, resblock
  output_blocks.{u(n+1)+j}.0 / .1    up level u (u=0 deepest), resblock j / transformer
  output_blocks.{u(n+1)+n}.{1|2}.conv upsample (after the transformer when there is one)
Resblock layers: in_layers.0/2, emb_layers.1, out_layers.0/3, skip_connection = diffusers
norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut. A SpatialTransformer (norm, proj_in,
transformer_blocks.0.{norm1-3, attn1, attn2, ff}, proj_out) has diffusers' Transformer2DModel names;
old LDM's proj_in/out are 1x1 convs, as in diffusers with use_linear_projection=False.

CompVis VQ autoencoder (taming Encoder/Decoder): down.{i}.block.{j}, down.{i}.downsample.conv,
mid.block_1 / attn_1 / block_2, norm_out; the decoder's up.{i} is numbered from the highest
resolution, diffusers' up_blocks from the lowest. Mid attention q/k/v/proj_out are 1x1 convs
(C, C, 1, 1) where diffusers has linear layers (C, C): the only tensors that change shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_FIXED = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VQ_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VQ_FIXED = {"conv_norm_out": "norm_out"}


def _resnet(rest: str) -> str:
    layer, param = rest.rsplit(".", 1)
    return f"{_RESNET[layer]}.{param}"


def unet_to_compvis(key: str, layers_per_block: int, up_has_attention: list[bool]) -> str:
    """diffusers UNet2DConditionModel key -> CompVis openaimodel key (no `model.diffusion_model.` prefix)."""
    n = layers_per_block
    head, _, param = key.rpartition(".")
    if head in _UNET_FIXED:
        return f"{_UNET_FIXED[head]}.{param}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = 1 + level * (n + 1) + j
        return f"input_blocks.{block}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{block}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
        return f"input_blocks.{1 + int(m[1]) * (n + 1) + n}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        if m[1] == "attentions":
            return f"middle_block.1.{m[3]}"
        return f"middle_block.{2 * int(m[2])}.{_resnet(m[3])}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        up, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = up * (n + 1) + j
        return f"output_blocks.{block}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{block}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
        up = int(m[1])
        return f"output_blocks.{up * (n + 1) + n}.{2 if up_has_attention[up] else 1}.conv.{m[2]}"
    raise KeyError(f"no CompVis name rule for UNet parameter {key}")


def vq_to_compvis(key: str, num_levels: int) -> str:
    """diffusers VQModel key -> CompVis VQModel key (no `first_stage_model.` prefix)."""
    if m := re.fullmatch(r"(encoder|decoder)\.(.+)", key):
        part, rest = m[1], m[2]
        head, _, param = rest.rpartition(".")
        if head in _VQ_FIXED:
            return f"{part}.{_VQ_FIXED[head]}.{param}"
        if m2 := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", rest):
            return f"{part}.mid.block_{int(m2[1]) + 1}.{_vq_resnet(m2[2])}"
        if m2 := re.fullmatch(r"mid_block\.attentions\.0\.(.+)\.(\w+)", rest):
            return f"{part}.mid.attn_1.{_VQ_ATTN[m2[1]]}.{m2[2]}"
        if m2 := re.fullmatch(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
            level = int(m2[2]) if m2[1] == "down" else num_levels - 1 - int(m2[2])
            return f"{part}.{m2[1]}.{level}.block.{m2[3]}.{_vq_resnet(m2[4])}"
        if m2 := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", rest):
            return f"{part}.down.{m2[1]}.downsample.conv.{m2[2]}"
        if m2 := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", rest):
            return f"{part}.up.{num_levels - 1 - int(m2[1])}.upsample.conv.{m2[2]}"
        if head in ("conv_in", "conv_out"):
            return key
        raise KeyError(f"no CompVis name rule for autoencoder parameter {key}")
    if key.rpartition(".")[0] in ("quant_conv", "post_quant_conv", "quantize.embedding"):
        return key
    raise KeyError(f"no CompVis name rule for autoencoder parameter {key}")


def _vq_resnet(rest: str) -> str:
    return rest.replace("conv_shortcut", "nin_shortcut")


def is_conv1x1_in_compvis(key: str) -> bool:
    """True for our linear weights that CompVis stores as 1x1 conv kernels (VQ mid attention)."""
    return bool(re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight", key))


def unet_names(keys: Iterable[str], layers_per_block: int, up_block_types: Iterable[str]) -> dict[str, str]:
    up_attn = ["CrossAttn" in t for t in up_block_types]
    return {k: unet_to_compvis(k, layers_per_block, up_attn) for k in keys}


def vq_names(keys: Iterable[str], num_levels: int) -> dict[str, str]:
    return {k: vq_to_compvis(k, num_levels) for k in keys}
