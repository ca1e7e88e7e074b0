"""Synthetic training caches in the documented formats (docs/formats.md): random float16 latents, a
caption-embedding table and captions.parquet, for throughput benchmarks and tests that need a
trainable input without an autoencoder or a text encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import save_file

from histoldm.train.config import DataSection


def write_synthetic_caches(
    root: Path, n: int, channels: int, size: int, length: int, dim: int, captions: int
) -> DataSection:
    """`n` latents (channels x size x size) of one case, `captions` distinct captions (length x dim), under `root`."""
    rng = np.random.default_rng(0)
    (root / "latents").mkdir(parents=True)
    (root / "text").mkdir()
    np.save(
        root / "latents" / "latents-00000.npy",
        rng.standard_normal((n, channels, size, size), dtype=np.float32).astype(np.float16),
    )
    ids = [f"p{i:07d}" for i in range(n)]
    pq.write_table(
        pa.table(
            {"patch_id": ids, "shard": pa.array(np.zeros(n, np.int32)), "row": pa.array(np.arange(n, dtype=np.int32))}
        ),
        root / "latents" / "index.parquet",
    )
    meta = {
        "autoencoder": "synthetic",
        "kind": "vq",
        "scaling_factor": 1.0,
        "channels": channels,
        "size": size,
        "fingerprint": "synthetic",
        "complete": True,
        "n_shards": 1,
    }
    (root / "latents" / "meta.json").write_text(json.dumps(meta))
    texts = [f"caption {i}" for i in range(captions)]
    save_file(
        {"embeddings": torch.randn(captions, length, dim), "uncond": torch.randn(1, length, dim)},
        str(root / "text" / "embeddings.safetensors"),
    )
    (root / "text" / "index.jsonl").write_text(
        "".join(json.dumps({"caption": c, "row": i}) + "\n" for i, c in enumerate(texts))
    )
    (root / "text" / "meta.json").write_text(
        json.dumps(
            {"encoder": "synthetic", "mode": "pathldm", "max_length": length, "dim": dim, "fingerprint": "synthetic"}
        )
    )
    pq.write_table(
        pa.table({"patch_id": ids, "case_id": ["c"] * n, "caption": [texts[i % captions] for i in range(n)]}),
        root / "captions.parquet",
    )
    return DataSection(
        latents=root / "latents", text_cache=root / "text", captions=root / "captions.parquet", workers=2
    )
