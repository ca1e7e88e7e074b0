"""`histoldm convert-ldm`: a PathLDM (CompVis/Lightning) checkpoint -> a checked model bundle."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from histoldm.commands._common import add_command, add_config_options, resolve_config


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "convert-ldm",
        "Convert a CompVis latent-diffusion checkpoint (PathLDM's release) into a model bundle, checking every tensor.",
        "histoldm convert-ldm pathldm_plip.ckpt --out models/pathldm-plip",
    )
    p.add_argument("checkpoint", type=Path, help="CompVis/Lightning .ckpt, plain state dict, or .safetensors")
    p.add_argument("--out", type=Path, help="bundle folder to write")
    p.add_argument("--unet-preset", help="UNet preset the weights belong to (default pathldm)")
    p.add_argument("--autoencoder-preset", help="VQ autoencoder preset (default vq-f4)")
    p.add_argument("--text-encoder-config", type=Path, help="CLIPTextConfig JSON (default: read off the checkpoint)")
    p.add_argument("--sample-size", type=int, help="latent size the UNet was trained at (default 64)")
    p.add_argument("--ema", action="store_true", default=None, help="convert the EMA copy of the UNet (model_ema.*)")
    add_config_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from histoldm.models.convert import ConvertConfig, run_convert

    cfg = resolve_config(
        args,
        ConvertConfig,
        dict(
            checkpoint=args.checkpoint, out=args.out, unet_preset=args.unet_preset, autoencoder_preset=args.autoencoder_preset,
            text_encoder_config=args.text_encoder_config, sample_size=args.sample_size, ema=args.ema,
        ),  # fmt: skip
    )
    result = run_convert(cfg)
    counts = ", ".join(f"{comp} {c['tensors']} tensors / {c['parameters'] / 1e6:.2f}M" for comp, c in result.converted.items())
    print(f"bundle {result.bundle}: {counts}; {result.skipped} checkpoint entries skipped (see {result.report})")
    for reason, n in result.skipped_by_reason.items():
        print(f"  skipped {n}: {reason}")
    return 0
