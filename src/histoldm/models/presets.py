"""UNet and autoencoder presets, expressed as diffusers constructor arguments.

`pathldm` is PathLDM's UNet exactly (CompVis openaimodel: 192 channels, mult 1-2-3-5, one head per
attention layer; 400.92M parameters with context 512). `pathldm-h64` differs only in using
64-channel heads (3, 6, 9, 15 heads), which lets SDPA use flash kernels. `small`, `tiny` and `tiny-mid`
are for CPU demos and tests; `tiny-mid` (the demo's) is `tiny` with cross-attention in the middle block only:
0.6-0.7x the training step, and with a cosine lr the demo's condition adherence holds (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from typing import Any

from histoldm.errors import UserError

_DOWN4 = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
_UP4 = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")

UNET_PRESETS: dict[str, dict[str, Any]] = {
    "pathldm": dict(
        block_out_channels=(192, 384, 576, 960),
        layers_per_block=2,
        down_block_types=_DOWN4,
        up_block_types=_UP4,
        attention_head_dim=1,  # diffusers reads this as the number of heads: one head per layer
        flip_sin_to_cos=True,
        freq_shift=0,
    ),
    "pathldm-h64": dict(
        block_out_channels=(192, 384, 576, 960),
        layers_per_block=2,
        down_block_types=_DOWN4,
        up_block_types=_UP4,
        attention_head_dim=(3, 6, 9, 15),  # heads per block: 64 channels each
        flip_sin_to_cos=True,
        freq_shift=0,
    ),
    "small": dict(
        block_out_channels=(64, 128, 192),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(1, 2, 3),
        norm_num_groups=32,
        flip_sin_to_cos=True,
        freq_shift=0,
    ),
    "tiny": dict(
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(1, 2),
        norm_num_groups=8,
        flip_sin_to_cos=True,
        freq_shift=0,
    ),
}
# tiny with cross-attention in the middle block only (one transformer block instead of four): the demo's
UNET_PRESETS["tiny-mid"] = dict(
    UNET_PRESETS["tiny"], down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2
)

AUTOENCODER_PRESETS: dict[str, dict[str, Any]] = {
    # PathLDM's first stage: CompVis vq-f4 (fine-tuned on TCGA-BRCA). Latents 3x64x64 at 256 px.
    "vq-f4": dict(
        kind="vq",
        in_channels=3,
        out_channels=3,
        latent_channels=3,
        num_vq_embeddings=8192,
        block_out_channels=(128, 256, 512),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=2,
        scaling_factor=1.0,
    ),
    "vq-f4-tiny": dict(  # same layout as vq-f4 at toy width, for tests and CPU demos
        kind="vq",
        in_channels=3,
        out_channels=3,
        latent_channels=3,
        num_vq_embeddings=64,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=16,
        scaling_factor=1.0,
    ),
    "kl-f4": dict(
        kind="kl",
        in_channels=3,
        out_channels=3,
        latent_channels=3,
        block_out_channels=(128, 256, 512),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=2,
    ),
    "kl-f4-tiny": dict(
        kind="kl",
        in_channels=3,
        out_channels=3,
        latent_channels=3,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=16,
    ),
}
# kl-f4-tiny with 32 channels at the middle resolution too (0.74x its training step): the demo's
AUTOENCODER_PRESETS["kl-f4-lite"] = dict(AUTOENCODER_PRESETS["kl-f4-tiny"], block_out_channels=(32, 32, 64))


def unet_kwargs(preset: str, *, context_dim: int, latent_channels: int = 3, sample_size: int = 64) -> dict[str, Any]:
    if preset not in UNET_PRESETS:
        raise UserError(f"unknown UNet preset '{preset}' (choose from {', '.join(UNET_PRESETS)})")
    return dict(
        UNET_PRESETS[preset],
        sample_size=sample_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        cross_attention_dim=context_dim,
    )


def build_unet(preset: str, *, context_dim: int, latent_channels: int = 3, sample_size: int = 64):
    """A randomly initialised diffusers UNet2DConditionModel for the preset."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        **unet_kwargs(preset, context_dim=context_dim, latent_channels=latent_channels, sample_size=sample_size)
    )


def build_autoencoder(preset: str):
    """A randomly initialised diffusers VQModel or AutoencoderKL for the preset."""
    from diffusers import AutoencoderKL, VQModel

    if preset not in AUTOENCODER_PRESETS:
        raise UserError(f"unknown autoencoder preset '{preset}' (choose from {', '.join(AUTOENCODER_PRESETS)})")
    kwargs = dict(AUTOENCODER_PRESETS[preset])
    kind = kwargs.pop("kind")
    return VQModel(**kwargs) if kind == "vq" else AutoencoderKL(**kwargs)
