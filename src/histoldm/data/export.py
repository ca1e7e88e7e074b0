"""Real patches of one split as a plain image folder: the `--real` side of FID and the adherence ceiling.

Images are written at `size`, which should be the resolution the model generates (`evaluate`
refuses real and generated sets of different sizes: FID would measure the resolution gap), with an
index.jsonl in the sampler's layout (id, caption, file) so the same checks read both folders.
A seeded choice of `n` patches keeps the real set the size of the generated one.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from histoldm.data.config import ExportPatchesConfig
from histoldm.data.splits import load_split
from histoldm.data.store import PatchStore, png_bytes
from histoldm.errors import UserError
from histoldm.fileio import atomic_write_bytes, atomic_write_jsonl, require_output_folder
from histoldm.manifest import write_manifest
from histoldm.tables import read_parquet


def split_items(
    captions: Path, split: Path, n: int | None, seed: int, split_name: str = "test"
) -> list[dict[str, str]]:
    """The captioned patches of one split's cases (a seeded choice of n when given), in patch_id order."""
    cases = load_split(split)
    rows = [
        r
        for r in read_parquet(captions, "captions file", ["patch_id", "case_id", "caption"]).to_pylist()
        if cases.get(r["case_id"]) == split_name
    ]
    if not rows:
        raise UserError(f"{split}: no captioned patch in the '{split_name}' split")
    if n is not None:
        random.Random(seed).shuffle(rows)
        rows = rows[:n]
    return sorted(rows, key=lambda r: r["patch_id"])


def export_patches(store: Path, items: list[dict[str, str]], out: Path, size: int | None) -> Path:
    """Write the chosen patches (resized to `size`) and their index.jsonl; finished files are kept."""
    patches = PatchStore.open(store)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for item in items:
        dst = out / f"{item['patch_id']}.png"
        if dst.exists():
            continue
        img = patches.image(item["patch_id"])
        if size and img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.LANCZOS)
        atomic_write_bytes(dst, png_bytes(img))
    atomic_write_jsonl(
        out / "index.jsonl",
        ({"id": r["patch_id"], "caption": r["caption"], "file": f"{r['patch_id']}.png"} for r in items),
    )
    return out


@dataclass(frozen=True)
class ExportPatchesResult:
    """`histoldm export-patches`: the folder of PNGs and how many were written."""

    out: Path
    images: int


def run_export_patches(cfg: ExportPatchesConfig) -> ExportPatchesResult:
    started = time.time()
    require_output_folder(cfg.out)
    items = split_items(cfg.captions, cfg.split, cfg.n, cfg.seed, cfg.split_name)
    export_patches(cfg.store, items, cfg.out, cfg.size)
    write_manifest(
        Path(cfg.out) / "manifest.json",
        stage="export-patches",
        config=cfg,
        seed=cfg.seed,
        started=started,
        inputs={"store": Path(cfg.store) / "patches.parquet", "captions": cfg.captions, "split": cfg.split},
        produced={"images": len(items)},
    )
    return ExportPatchesResult(Path(cfg.out), len(items))
