"""`histoldm encode-text`: embed every unique caption once into a text-embedding cache."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from histoldm.commands._common import add_command, add_config_options
from histoldm.config import DTYPE_CHOICES


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "encode-text",
        "Encode each unique caption once with a frozen text encoder (cache for training and sampling); shardable with accelerate launch.",
        "histoldm encode-text captions.parquet --text-encoder vinid/plip --mode pathldm --max-length 154 --out text-cache",
    )
    p.add_argument("captions", nargs="?", type=Path, help="captions.parquet (column caption), .jsonl or .txt (one per line)")
    p.add_argument(
        "--text-encoder", help="hub id or local folder of a CLIP text model, minilm, or tiny-clip (default openai/clip-vit-base-patch32)"
    )
    p.add_argument("--mode", choices=["pathldm", "truncate", "chunks", "interpolate"], help="long-caption encoding (default pathldm)")
    p.add_argument("--max-length", type=int, help="tokens per caption incl. BOS/EOS (default: 154, or 77 for truncate on CLIP)")
    p.add_argument("--out", type=Path, help="output folder")
    p.add_argument("--batch-size", type=int, help="captions per encoder call (default 256)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, help="default auto: bfloat16 on a CUDA device that supports it, else float32")
    p.add_argument("--precision", choices=["default", "pathldm"], help="pathldm: encode in float32, as PathLDM did (default: --dtype)")
    add_config_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from histoldm.commands._common import resolve_config
    from histoldm.text.cache import EncodeTextConfig, run_encode_text

    flags = {
        "captions": args.captions,
        "text_encoder": args.text_encoder,
        "mode": args.mode,
        "max_length": args.max_length,
        "out": args.out,
        "batch_size": args.batch_size,
        "device": args.device,
        "dtype": args.dtype,
        "precision": args.precision,
    }
    cfg = resolve_config(args, EncodeTextConfig, flags)
    result = run_encode_text(cfg)
    if result is None:  # a non-main process under accelerate launch
        return 0
    print(
        f"{result.out}: {result.n_captions} captions ({result.n_new} new, {result.n_reused} already cached), "
        f"shape {result.shape}, {result.n_truncated} truncated, fingerprint {result.meta['fingerprint'][:12]}"
        + (f"; {result.n_skipped} rows skipped (empty or non-text captions, listed in the manifest)" if result.n_skipped else "")
    )
    return 0
