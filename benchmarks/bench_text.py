"""Captions per second for `encode-text` on N unique captions (default: 10,000, tiny-clip, CPU).

Reports the encoder alone and the whole stage (read, dedupe, encode, write the cache).

    python benchmarks/bench_text.py --n 10000 --text-encoder tiny-clip --mode pathldm
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from histoldm.text.cache import run_encode_text
from histoldm.text.config import EncodeTextConfig
from histoldm.text.encoders import load_text_encoder

WORDS = (
    "invasive ductal carcinoma lobular grade nuclear pleomorphism mitotic tubule formation necrosis "
    "lymphovascular invasion margin stroma fibrosis calcification lymphocytes infiltrate tumour cells "
    "sheets nests cords in situ component high moderate low focal extensive present absent negative positive"
).split()


def make_captions(n: int, seed: int = 0) -> list[str]:
    """n unique PathLDM-style captions of 20-140 words (some exceed 154 tokens, as real ones do)."""
    rng = random.Random(seed)
    levels = ("low", "high")
    return [
        f"{rng.choice(levels)} tumor; {rng.choice(levels)} til; case {i}: "
        + " ".join(rng.choices(WORDS, k=rng.randint(20, 140)))
        for i in range(n)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--text-encoder", default="tiny-clip")
    ap.add_argument("--mode", default="pathldm")
    ap.add_argument("--max-length", type=int, default=154)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()

    captions = make_captions(args.n)
    enc = load_text_encoder(args.text_encoder, args.mode, args.max_length)
    enc.encode(captions[: args.batch_size])  # warm-up
    t0 = time.perf_counter()
    enc.encode(captions, batch_size=args.batch_size)
    encode_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "captions.txt"
        path.write_text("\n".join(captions) + "\n", encoding="utf-8")
        cfg = EncodeTextConfig(
            captions=path,
            text_encoder=args.text_encoder,
            mode=args.mode,
            max_length=args.max_length,
            out=Path(tmp) / "cache",
            batch_size=args.batch_size,
            device="cpu",
        )
        t0 = time.perf_counter()
        result = run_encode_text(cfg)
        stage_s = time.perf_counter() - t0
        size_mb = (Path(tmp) / "cache" / "embeddings.safetensors").stat().st_size / 2**20

    print(
        json.dumps(
            {
                "n_captions": args.n,
                "encoder": args.text_encoder,
                "mode": args.mode,
                "max_length": args.max_length,
                "batch_size": args.batch_size,
                "torch_threads": torch.get_num_threads(),
                "encode_captions_per_s": round(args.n / encode_s, 1),
                "stage_captions_per_s": round(args.n / stage_s, 1),
                "stage_s": round(stage_s, 2),
                "n_truncated": result.n_truncated,
                "cache_mb": round(size_mb, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
