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
