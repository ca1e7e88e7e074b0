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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import save_file

from histoldm.train.trainer import DataSection, ModelSection, TrainConfig, run_train


def write_synthetic_caches(root: Path, n: int, channels: int, size: int, length: int, dim: int, captions: int) -> DataSection:
    rng = np.random.default_rng(0)
    (root / "latents").mkdir(parents=True)
    (root / "text").mkdir()
    np.save(root / "latents" / "latents-00000.npy", rng.standard_normal((n, channels, size, size), dtype=np.float32).astype(np.float16))
    ids = [f"p{i:07d}" for i in range(n)]
    pq.write_table(pa.table({"patch_id": ids, "shard": pa.array(np.zeros(n, np.int32)), "row": pa.array(np.arange(n, dtype=np.int32))}), root / "latents" / "index.parquet")
    meta = {"autoencoder": "synthetic", "kind": "vq", "scaling_factor": 1.0, "channels": channels, "size": size, "fingerprint": "synthetic", "complete": True, "n_shards": 1}
    (root / "latents" / "meta.json").write_text(json.dumps(meta))
    texts = [f"caption {i}" for i in range(captions)]
    save_file({"embeddings": torch.randn(captions, length, dim), "uncond": torch.randn(1, length, dim)}, str(root / "text" / "embeddings.safetensors"))
    (root / "text" / "index.jsonl").write_text("".join(json.dumps({"caption": c, "row": i}) + "\n" for i, c in enumerate(texts)))
    (root / "text" / "meta.json").write_text(json.dumps({"encoder": "synthetic", "mode": "pathldm", "max_length": length, "dim": dim, "fingerprint": "synthetic"}))
    pq.write_table(pa.table({"patch_id": ids, "case_id": ["c"] * n, "caption": [texts[i % captions] for i in range(n)]}), root / "captions.parquet")
    return DataSection(latents=root / "latents", text_cache=root / "text", captions=root / "captions.parquet", workers=2)


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
            name="bench", run_dir=root / "run", resume="none", max_steps=args.steps, batch_size=args.batch_size,
            precision=args.precision, log_every=args.log_every, checkpoint_every=10**9, data=data,
            model=ModelSection(unet_preset=args.preset, channels_last=args.channels_last, compile=args.compile,
                               gradient_checkpointing=args.gradient_checkpointing),
        )
        result = run_train(cfg)
        stats = [json.loads(line) for line in (root / "run" / "stats.jsonl").read_text().splitlines()]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(json.dumps({"preset": args.preset, "precision": args.precision, "batch_size": args.batch_size, "steps": result.steps,
                      "img_s": round(result.img_s, 2), "peak_memory": result.peak_memory, "device": device,
                      "final_loss": stats[-1]["loss"]}, indent=2))


if __name__ == "__main__":
    main()
