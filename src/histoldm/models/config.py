"""The convert-ldm stage's config: typed, described, torch-free (the CLI builds its options from it)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from histoldm.config import StrictModel


class ConvertConfig(StrictModel):
    """`histoldm convert-ldm`: a CompVis latent-diffusion checkpoint -> a model bundle."""

    checkpoint: Path = Field(description="CompVis/Lightning .ckpt, plain state dict, or .safetensors")
    out: Path = Field(description="bundle folder to write")
    unet_preset: str = Field("pathldm", description="UNet preset the weights belong to")
    autoencoder_preset: str = Field("vq-f4", description="VQ autoencoder preset")
    text_encoder_config: Path | None = Field(
        None, description="CLIPTextConfig JSON (default: read off the checkpoint's shapes)"
    )
    text_mode: str = Field("pathldm", description="long-caption encoding the bundle records for sampling")
    max_length: int = Field(154, description="caption tokens the bundle records for sampling, BOS/EOS included")
    sample_size: int = Field(64, description="latent height/width the UNet was trained at (not stored in the weights)")
    ema: bool = Field(False, description="convert the EMA copy of the UNet (model_ema.*) instead of the raw weights")
