"""Small inputs several test files build: random PNG folders, a patch store, a TorchScript feature
extractor. Test files import these (`from builders import ...`; pytest puts tests/ on the path),
and conftest.py wraps them in fixtures where a fixture reads better."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def write_random_pngs(folder: Path, sizes: list[tuple[int, int]], rng: np.random.Generator) -> Path:
    """`folder`/{i}.png of uniform random RGB noise, one per (height, width), drawn from `rng` in order."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def write_patch_store(root: Path, n: int = 6, size: int = 32, broken: bool = True) -> Path:
    """A patch store (patches.parquet + PNGs) of `n` random patches on two slides of three cases,
    plus (with `broken`) one row whose file is missing."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        rel = f"patches/s{i % 2}/q{i}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / rel)
        rows.append({"patch_id": f"q{i}", "slide_id": f"s{i % 2}", "case_id": f"c{i % 3}", "path": rel})
    if broken:
        rows.append({"patch_id": "broken", "slide_id": "s0", "case_id": "c0", "path": "patches/missing.png"})
    pq.write_table(pa.Table.from_pylist(rows), root / "patches.parquet")
    return root


def save_pool_extractor(path: Path) -> Path:
    """A real TorchScript extractor with 48-d features (4x4 average pool of RGB): the file path users
    take for their own weights, without downloading a network."""
    import torch

    class Pool(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)

    torch.jit.save(torch.jit.script(Pool()), str(path))
    return path


TEACHER_CAPTIONS = [
    "high tumor; low til; invasive carcinoma",
    "low tumor; high til; lymphocytes",
    "low tumor; low til; stroma",
]


def write_tiny_bundle(folder: Path) -> Path:
    """A tiny model bundle: tiny UNet on 8x8 latents (context of tiny-clip), tiny f=4 KL autoencoder stored inside."""
    import torch

    from histoldm.models.autoencoder import load_autoencoder
    from histoldm.models.bundle import BundleMeta, LatentContract, TextContract, save_bundle
    from histoldm.models.presets import build_unet
    from histoldm.text.encoders import load_text_encoder

    text = load_text_encoder("tiny-clip", "pathldm", 154)
    torch.manual_seed(0)
    unet = build_unet("tiny", context_dim=text.dim, latent_channels=3, sample_size=8)
    ae = load_autoencoder("kl-f4-tiny")
    meta = BundleMeta(
        unet_preset="tiny",
        text=TextContract(**text.contract()),
        latent=LatentContract(
            channels=3, size=8, scaling_factor=0.5, autoencoder="kl-f4-tiny", kind="kl", fingerprint=ae.fingerprint
        ),
    )
    return save_bundle(folder / "model", meta, unet, ae.model)


def write_tiny_teacher(root: Path, n: int = 24, seed: int = 0) -> dict:
    """A random tiny teacher bundle (tiny UNet, tiny-clip text, the tiny KL autoencoder inside) and the caches
    it would have been trained on: a latent cache of that autoencoder's contract, captions.parquet, a text
    cache made by encode-text, split.json. Returns their paths (`teacher`, `latents`, `text_cache`, ...)."""
    import json

    import torch

    from histoldm.models.autoencoder import load_autoencoder
    from histoldm.models.bundle import BundleMeta, LatentContract, TextContract, save_bundle
    from histoldm.models.presets import build_unet
    from histoldm.text.cache import run_encode_text
    from histoldm.text.config import EncodeTextConfig
    from histoldm.text.encoders import load_text_encoder

    ae = load_autoencoder("kl-f4-tiny")
    text = load_text_encoder("tiny-clip", "pathldm", 154)
    g = torch.Generator().manual_seed(seed)
    which = torch.arange(n) % len(TEACHER_CAPTIONS)
    latents = torch.randn(len(TEACHER_CAPTIONS), 3, 8, 8, generator=g)[which] + 0.3 * torch.randn(
        n, 3, 8, 8, generator=g
    )
    ids = [f"p{i:04d}" for i in range(n)]
    lat_dir = root / "latents"
    lat_dir.mkdir(parents=True)
    np.save(lat_dir / "latents-00000.npy", latents.numpy().astype(np.float16))
    pq.write_table(
        pa.table({"patch_id": ids, "shard": pa.array([0] * n, pa.int32()), "row": pa.array(range(n), pa.int32())}),
        lat_dir / "index.parquet",
    )
    (lat_dir / "meta.json").write_text(
        json.dumps(
            {
                "autoencoder": "kl-f4-tiny",
                "kind": "kl",
                "scaling_factor": 0.5,
                "channels": 3,
                "size": 8,
                "fingerprint": ae.fingerprint,
                "complete": True,
                "n_shards": 1,
            }
        )
    )
    cases = [f"case{i % 4}" for i in range(n)]
    pq.write_table(
        pa.table({"patch_id": ids, "case_id": cases, "caption": [TEACHER_CAPTIONS[int(w)] for w in which]}),
        root / "captions.parquet",
    )
    (root / "split.json").write_text(json.dumps({"cases": {"train": ["case0", "case1", "case2"], "test": ["case3"]}}))
    run_encode_text(
        EncodeTextConfig(
            captions=root / "captions.parquet",
            text_encoder="tiny-clip",
            mode="pathldm",
            max_length=154,
            out=root / "text",
            device="cpu",
        )
    )
    torch.manual_seed(seed)
    unet = build_unet("tiny", context_dim=text.dim, latent_channels=3, sample_size=8)
    meta = BundleMeta(
        unet_preset="tiny",
        text=TextContract(**text.contract()),
        latent=LatentContract(
            channels=3, size=8, scaling_factor=0.5, autoencoder="kl-f4-tiny", kind="kl", fingerprint=ae.fingerprint
        ),
        trained_steps=1000,
        source="random tiny teacher",
    )
    save_bundle(root / "teacher", meta, unet, ae.model)
    return {
        "teacher": root / "teacher",
        "latents": lat_dir,
        "text_cache": root / "text",
        "captions": root / "captions.parquet",
        "split": root / "split.json",
    }
