"""The demo's large region: one region from a held-out case's summary and a map of four quadrants, and
the picture of the map beside it for the report."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from histoldm.fileio import atomic_write_bytes
from histoldm.models.bundle import read_bundle_meta
from histoldm.sampling.config import RegionConfig
from histoldm.sampling.region_map import map_picture
from histoldm.sampling.region_run import geometry, run_sample_region


def quadrant_map(rows: int, cols: int, k: int = 0) -> str:
    """CSV cells: tumour high on the left half (k even) or the right, TIL high on the top half (k // 2 even)
    or the bottom, so every region holds both levels of both attributes."""
    lines = []
    for i in range(rows):
        cells = []
        for j in range(cols):
            tumor = "high" if (j < cols / 2) == (k % 2 == 0) else "low"
            til = "high" if (i < rows / 2) == ((k // 2) % 2 == 0) else "low"
            cells.append(f"{tumor}/{til}")
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def demo_region(out: Path, bundle: Path, summary: str, mpp: float, size: int, sampler: dict) -> Path:
    """Sample one region (resumable, like every demo stage) and write map-and-region.png: the map drawn at
    the windows' stride (red = tumour, green = TIL level) beside the region's preview."""
    out.mkdir(parents=True, exist_ok=True)
    probe = RegionConfig(checkpoint=bundle, out=out, level="high/low", size=size)
    grid = geometry(probe, bundle, read_bundle_meta(bundle)).grid(size)
    label_map = out / "map.csv"
    atomic_write_bytes(label_map, quadrant_map(len(grid), len(grid[0])).encode())
    run_sample_region(
        RegionConfig(
            checkpoint=bundle,
            out=out,
            label_map=label_map,
            summary=summary,
            size=size,
            mpp=mpp,
            device="cpu",
            **sampler,
        )
    )
    record = json.loads((out / "index.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    region = Image.open(out / record["preview"]).convert("RGB")
    drawn = map_picture(record["map"], ["low", "high"], cell_px=record["stride_px"])
    picture = Image.new("RGB", (drawn.width + 16 + region.width, max(drawn.height, region.height)), "white")
    picture.paste(drawn, (0, 0))
    picture.paste(region, (drawn.width + 16, 0))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    atomic_write_bytes(out / "map-and-region.png", buffer.getvalue())
    return out / "map-and-region.png"
