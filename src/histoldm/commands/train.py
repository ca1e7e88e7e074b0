"""`histoldm train`: train the latent diffusion UNet from the latent and text caches."""

from __future__ import annotations

import argparse
from typing import Any

from histoldm.commands._common import add_command, add_dry_run, printed_dry_run, resolve_config


def register(sub: Any) -> None:
    add_dry_run(add_command(sub, "train", "Train the latent diffusion UNet (CPU, one GPU, or several via `accelerate launch` / `torchrun`); re-running resumes.",
                            "histoldm train --config configs/histoldm.yaml --set data.latents=work/latents --resume latest", run,
                            config="histoldm.train.trainer:TrainConfig", nested={"--init-from": "model.init_from"}))


def run(args: argparse.Namespace) -> int:
    from histoldm.train.trainer import TrainConfig, run_train

    cfg = resolve_config(args, TrainConfig)
    if printed_dry_run(args, cfg):
        return 0
    result = run_train(cfg)
    peak = result.peak_memory["allocated_gib"]
    img_s = f"{result.img_s:.1f}" if result.img_s is not None else "n/a"
    memory = f"peak GPU memory {peak:.2f} GiB" if peak is not None else "CPU: no GPU memory to measure"
    print(f"trained {result.steps} steps in {result.run_dir} ({img_s} img/s, {memory}); model: {result.bundle}")
    return 0
