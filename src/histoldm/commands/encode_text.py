"""`histoldm encode-text`: embed every unique caption once into a text-embedding cache."""

from __future__ import annotations

import argparse
from typing import Any

from histoldm.commands._common import add_command, resolve_config


def register(sub: Any) -> None:
    add_command(sub, "encode-text", "Encode each unique caption once with a frozen text encoder (cache for training and sampling); shardable with accelerate launch.",
                "histoldm encode-text captions.parquet --text-encoder vinid/plip --mode pathldm --max-length 154 --out text-cache", run,
                config="histoldm.text.cache:EncodeTextConfig", positional="captions")


def run(args: argparse.Namespace) -> int:
    from histoldm.text.cache import EncodeTextConfig, run_encode_text

    result = run_encode_text(resolve_config(args, EncodeTextConfig))
    if result is None:  # a non-main process under accelerate launch
        return 0
    print(
        f"{result.out}: {result.n_captions} captions ({result.n_new} new, {result.n_reused} already cached), "
        f"shape {result.shape}, {result.n_truncated} truncated, fingerprint {result.meta['fingerprint'][:12]}"
        + (f"; {result.n_skipped} rows skipped (empty or non-text captions, listed in the manifest)" if result.n_skipped else "")
    )
    return 0
