"""One slide's patches cut into spatial blocks that act as cases, with a held-out band kept apart.

A demo with one real slide has one real case, so its held-out set could not hold real tissue. Here the
slide's patch grid is cut into square blocks of `block` pixels (at the patches' magnification); each
block becomes a case (`<case>-block-rRRcCC`). The top `held_out_rows` block rows are held out; every
other patch whose footprint overlaps a held-out patch's footprint is dropped (overlapping tiles share
pixels), so no held-out pixel is seen in training. Blocks of one slide are not independent patients:
neighbouring tissue, one stain, one scan.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from histoldm.data.store import PatchStore, patch_table
from histoldm.errors import UserError
from histoldm.fileio import atomic_write_json
from histoldm.tables import read_parquet, write_parquet


def block_ids(x: np.ndarray, y: np.ndarray, extent: np.ndarray, size: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Block row and column of each patch: its origin relative to the slide's first patch, in pixels of
    the patch's magnification (level-0 extent -> `size` px), rounded, then divided by `block`."""
    scale = size / extent
    px, py = np.rint((x - x.min()) * scale), np.rint((y - y.min()) * scale)
    return (py // block).astype(int), (px // block).astype(int)


def overlaps(a: dict[str, np.ndarray], i: int, held: np.ndarray) -> bool:
    """Whether patch i's footprint [x, x + extent) x [y, y + extent) shares any area with a held-out patch."""
    return bool(
        np.any(
            (a["x"][held] < a["x"][i] + a["extent"][i])
            & (a["x"][i] < a["x"][held] + a["extent"][held])
            & (a["y"][held] < a["y"][i] + a["extent"][i])
            & (a["y"][i] < a["y"][held] + a["extent"][held])
        )
    )


def cut_into_blocks(store: Path, out: Path, *, size: int, block: int, held_out_rows: int) -> dict[str, Any]:
    """Write OUT: STORE's patches with block case ids, the training patches overlapping held-out ones
    left out, images hard-linked, scores.parquet filtered, blocks.json describing the cut. Returns
    that description: held-out and training blocks, dropped patch ids."""
    started = time.time()
    source = PatchStore.open(store)
    table = source.table.to_pydict()
    if len(set(table["slide_id"])) != 1:
        raise UserError(
            f"{store}: cutting into blocks needs the patches of one slide, got {len(set(table['slide_id']))}"
        )
    a = {k: np.asarray(table[k], np.float64) for k in ("x", "y", "extent")}
    rows, cols = block_ids(a["x"], a["y"], a["extent"], size, block)
    held = rows < held_out_rows
    if held.all() or not held.any():
        raise UserError(
            f"{store}: {held_out_rows} held-out block rows of {block} px leave {int((~held).sum())} training patches "
            f"and {int(held.sum())} held-out ones"
        )
    dropped = [i for i in np.flatnonzero(~held) if overlaps(a, i, np.flatnonzero(held))]
    keep = sorted(set(range(len(rows))) - set(dropped))
    case = table["case_id"][0]
    names = [f"{case}-block-r{r:02d}c{c:02d}" for r, c in zip(rows, cols)]
    kept_rows = [{**{k: table[k][i] for k in table}, "case_id": names[i]} for i in keep]
    out = Path(out)
    for r in kept_rows:
        dst = out / r["path"]
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source.root / r["path"], dst)
            except OSError:
                shutil.copyfile(source.root / r["path"], dst)
    kept_ids = {r["patch_id"] for r in kept_rows}
    if (Path(store) / "scores.parquet").is_file():
        scores = read_parquet(Path(store) / "scores.parquet", "scores").to_pylist()
        write_parquet(out / "scores.parquet", pa.Table.from_pylist([s for s in scores if s["patch_id"] in kept_ids]))
    description = {
        "slide_case": case,
        "block_px": block,
        "held_out_block_rows": held_out_rows,
        "held_out": sorted({names[i] for i in keep if held[i]}),
        "train": sorted({names[i] for i in keep if not held[i]}),
        "held_out_patches": int(held.sum()),
        "train_patches": len(keep) - int(held.sum()),
        "dropped_overlapping_held_out": sorted(table["patch_id"][i] for i in dropped),
        "note": (
            "blocks of one slide act as cases; they are not independent patients (neighbouring tissue, one stain, one "
            "scan)"
        ),
        "seconds": round(time.time() - started, 2),
    }
    atomic_write_json(out / "blocks.json", description)
    write_parquet(out / "patches.parquet", patch_table(kept_rows))  # last: marks the cut complete
    return description
