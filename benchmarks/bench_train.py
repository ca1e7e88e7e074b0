"""Training throughput and peak memory of `run_train` on synthetic caches (the whole loop, not a bare step).

Writes random latents (C x S x S, float16 shards) and a caption-embedding table (L x D) of the
PathLDM shapes, then trains `--steps` steps. Reports img/s (mean over log windows after the first,
so start-up and compilation are excluded) and peak allocated / reserved GPU memory, as the run
manifest records them. Anchor (docs: shared/reference/anchors.md): PathLDM UNet, bf16, batch 32,
172 img/s and 19.4 GiB on one H100 for a bare fwd+bwd+AdamW step.

    python benchmarks/bench_train.py --preset tiny --size 16 --steps 30 --batch-size 8      # CPU smoke
    python benchmarks/bench_train.py --preset pathldm --steps 300 --precision bf16          # one GPU
    python benchmarks/bench_train.py --preset pathldm-h64 --steps 300 --channels-last
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from histoldm.train.config import ModelSection, TrainConfig
from histoldm.train.synthetic import write_synthetic_caches
from histoldm.train.trainer import run_train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="pathldm")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--size", type=int, default=64, help="latent side")
    ap.add_argument("--length", type=int, default=154)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--log-every", type=int, default=50)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n = max(4 * args.batch_size, 512)
        data = write_synthetic_caches(root, n, 3, args.size, args.length, args.dim, captions=64)
        cfg = TrainConfig(
            name="bench",
            run_dir=root / "run",
            resume="none",
            max_steps=args.steps,
            batch_size=args.batch_size,
            precision=args.precision,
            log_every=args.log_every,
            checkpoint_every=10**9,
            data=data,
            model=ModelSection(
                unet_preset=args.preset,
                channels_last=args.channels_last,
                compile=args.compile,
                gradient_checkpointing=args.gradient_checkpointing,
            ),
        )
        result = run_train(cfg)
        stats = [json.loads(line) for line in (root / "run" / "stats.jsonl").read_text().splitlines()]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(
        json.dumps(
            {
                "preset": args.preset,
                "precision": args.precision,
                "batch_size": args.batch_size,
                "steps": result.steps,
                "img_s": round(result.img_s, 2),
                "peak_memory": result.peak_memory,
                "device": device,
                "final_loss": stats[-1]["loss"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
