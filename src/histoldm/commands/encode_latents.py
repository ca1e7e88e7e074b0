"""`histoldm encode-latents`: encode every patch of a store once into a memory-mappable latent cache."""

from __future__ import annotations

import argparse
from typing import Any

from histoldm.commands._common import add_command, resolve_config


def register(sub: Any) -> None:
    add_command(sub, "encode-latents", "Encode a patch store with an autoencoder (preset, folder or hub id) into latent shards; resumable, shardable with accelerate launch.",
                "histoldm encode-latents work/store --vae work/vae/autoencoder --out work/latents", run,
                config="histoldm.train.latents:EncodeLatentsConfig", positional="store")


def run(args: argparse.Namespace) -> int:
    from histoldm.train.latents import EncodeLatentsConfig, run_encode_latents

    result = run_encode_latents(resolve_config(args, EncodeLatentsConfig))
    if result is None:  # a non-main process under accelerate launch
        return 0
    if result.shards_missing:
        print(f"{result.out}: {result.shards_missing} of {result.shards} shards not encoded (a process stopped); re-run to finish")
        return 1
    print(f"{result.latents} latents ({result.skipped} skipped) in {result.out}, scaling factor {result.scaling_factor:.5g}")
    return 0
