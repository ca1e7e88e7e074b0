"""`histoldm encode-latents`: encode every patch of a store once into a memory-mappable latent cache."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from histoldm.commands._common import add_command, add_config_options


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "encode-latents",
        "Encode a patch store with an autoencoder (preset, folder or hub id) into latent shards; resumable, shardable with accelerate launch.",
        "histoldm encode-latents work/store --vae work/vae/autoencoder --out work/latents",
    )
    p.add_argument("store", type=Path, nargs="?", help="patch store folder (with patches.parquet)")
    p.add_argument("--vae", help="autoencoder: vq-f4 | kl-f4 | kl-f4-tiny | local folder | hub id")
    p.add_argument("--out", type=Path, help="output folder")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--image-size", type=int, help="resize patches to this many pixels before encoding (default: as stored)")
    add_config_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from histoldm.commands._common import resolve_config
    from histoldm.train.latents import EncodeLatentsConfig, run_encode_latents

    flags = {"store": args.store, "vae": args.vae, "out": args.out, "batch_size": args.batch_size, "device": args.device, "image_size": args.image_size}
    result = run_encode_latents(resolve_config(args, EncodeLatentsConfig, flags))
    if result is None:  # a non-main process under accelerate launch
        return 0
    if result.shards_missing:
        print(f"{result.out}: {result.shards_missing} of {result.shards} shards not encoded (a process stopped); re-run to finish")
        return 1
    print(f"{result.latents} latents ({result.skipped} skipped) in {result.out}, scaling factor {result.scaling_factor:.5g}")
    return 0
