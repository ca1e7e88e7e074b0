"""`histoldm train-vae`: train or fine-tune a KL autoencoder (f = 4) on a patch store."""

from __future__ import annotations

import argparse
from typing import Any

from histoldm.commands._common import add_command, resolve_config


def register(sub: Any) -> None:
    add_command(sub, "train-vae", "Train or fine-tune a KL autoencoder (f=4) on a patch store; reports PSNR/SSIM on held-out patches.",
                "histoldm train-vae work/store --out work/vae --init kl-f4 --steps 20000", run,
                config="histoldm.train.vae:TrainVAEConfig", positional="store")


def run(args: argparse.Namespace) -> int:
    from histoldm.train.vae import TrainVAEConfig, run_train_vae

    result = run_train_vae(resolve_config(args, TrainVAEConfig))
    print(f"autoencoder in {result.autoencoder}: held-out PSNR {result.psnr:.2f} dB, SSIM {result.ssim:.4f}")
    return 0
