"""`histoldm train`: train the latent diffusion UNet from the latent and text caches."""

from __future__ import annotations

import argparse
from typing import Any

from histoldm.commands._common import add_command, add_config_options


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "train",
        "Train the latent diffusion UNet (CPU, one GPU, or several via `accelerate launch` / `torchrun`); re-running resumes.",
        "histoldm train --config configs/histoldm.yaml --set data.latents=work/latents --resume latest",
    )
    add_config_options(p)
    p.add_argument("--resume", help="auto (default: resume this run if it has a checkpoint) | latest | none | PATH")
    p.add_argument("--init-from", help="start the UNet from a model bundle, run folder or CompVis checkpoint (model.init_from; ignored on resume)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from histoldm.config import dump_config
    from histoldm.commands._common import resolve_config
    from histoldm.train.trainer import TrainConfig, run_train

    flags = {"resume": args.resume} | ({"model": {"init_from": args.init_from}} if args.init_from else {})
    cfg = resolve_config(args, TrainConfig, flags)
    if args.dry_run:
        print(dump_config(cfg), end="")
        return 0
    result = run_train(cfg)
    peak = result.peak_memory["allocated_gib"]
    img_s = f"{result.img_s:.1f}" if result.img_s is not None else "n/a"
    memory = f"peak GPU memory {peak:.2f} GiB" if peak is not None else "CPU: no GPU memory to measure"
    print(f"trained {result.steps} steps in {result.run_dir} ({img_s} img/s, {memory}); model: {result.bundle}")
    return 0
