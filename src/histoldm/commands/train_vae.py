"""`histoldm train-vae`: train or fine-tune a KL autoencoder (f = 4) on a patch store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from histoldm.commands._common import add_command, add_config_options


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "train-vae",
        "Train or fine-tune a KL autoencoder (f=4) on a patch store; reports PSNR/SSIM on held-out patches.",
        "histoldm train-vae work/store --out work/vae --init kl-f4 --steps 20000",
    )
    p.add_argument("store", type=Path, nargs="?", help="patch store folder (with patches.parquet)")
    p.add_argument("--out", type=Path, help="output folder (autoencoder/ + metrics.json + manifest.json)")
    p.add_argument("--init", help="start from: a KL preset (random) or an AutoencoderKL folder / hub id")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--image-size", type=int, help="resize patches to this many pixels first (default: as stored)")
    p.add_argument("--split", type=Path, help="split.json: train on its train cases, report PSNR/SSIM on the others "
                                              "(default: hold out whole cases with at least holdout_patches patches)")
    add_config_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from histoldm.commands._common import resolve_config
    from histoldm.train.vae import TrainVAEConfig, run_train_vae

    flags = {"store": args.store, "out": args.out, "init": args.init, "steps": args.steps, "batch_size": args.batch_size, "image_size": args.image_size,
             "split": args.split}
    result = run_train_vae(resolve_config(args, TrainVAEConfig, flags))
    print(f"autoencoder in {result.autoencoder}: held-out PSNR {result.psnr:.2f} dB, SSIM {result.ssim:.4f}")
    return 0
