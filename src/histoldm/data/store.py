"""The patch store: PNG images plus one Parquet table, the contract every later stage reads.

Layout: `STORE/patches.parquet` (one row per patch) and `STORE/patches/<slide_id>/<patch_id>.png`;
`path` is relative to STORE so a store can be moved or copied as one folder.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from histoldm.errors import UserError
from histoldm.tables import read_parquet, write_parquet

TABLE_NAME = "patches.parquet"

# `extent` (patch side in level-0 pixels) is an addition to the documented columns: heat-map score
# grids need the patch footprint on the slide. It is null for imported patches.
PATCH_SCHEMA = pa.schema(
    [
        ("patch_id", pa.string()),
        ("slide_id", pa.string()),
        ("case_id", pa.string()),
        ("x", pa.int64()),
        ("y", pa.int64()),
        ("level", pa.int64()),
        ("mpp", pa.float64()),
        ("tissue_fraction", pa.float64()),
        ("path", pa.string()),
        ("extent", pa.float64()),
    ]
)

_TCGA_CASE = re.compile(r"TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}", re.IGNORECASE)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def case_id_of(name: str) -> str:
    """The 12-character TCGA patient barcode in a slide name, else the name itself (one slide = one case)."""
    m = _TCGA_CASE.search(name)
    return m.group(0).upper() if m else name


def safe_id(name: str) -> str:
    """An id usable as a file name: anything outside [A-Za-z0-9._-] becomes '_'."""
    return _UNSAFE.sub("_", name).strip("_") or "unnamed"


def image_relpath(slide_id: str, patch_id: str) -> str:
    return f"patches/{slide_id}/{patch_id}.png"


def png_bytes(img: Image.Image | np.ndarray, compress_level: int = 1) -> bytes:
    """PNG encoding; level 1 because patches are written once and encoding time dominates tiling."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def patch_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (dicts; missing keys become null) -> a table with the store schema."""
    return pa.Table.from_pylist([{k: r.get(k) for k in PATCH_SCHEMA.names} for r in rows], schema=PATCH_SCHEMA)


def write_patch_table(root: Path, rows: list[dict[str, Any]]) -> Path:
    path = Path(root) / TABLE_NAME
    write_parquet(path, patch_table(rows))
    return path


@dataclass
class PatchStore:
    """Read access to a patch store: the table, and images by patch id."""

    root: Path
    table: pa.Table

    @classmethod
    def open(cls, root: Path) -> PatchStore:
        root = Path(root)
        table = read_parquet(root / TABLE_NAME, "patch store table")
        missing = {"patch_id", "case_id", "path"} - set(table.column_names)
        if missing:
            raise UserError(f"{root / TABLE_NAME}: missing columns {sorted(missing)}")
        if pc.count_distinct(table.column("patch_id")).as_py() != table.num_rows:
            raise UserError(f"{root / TABLE_NAME}: duplicate patch_id values")
        return cls(root=root, table=table)

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def patch_ids(self) -> list[str]:
        return self.table.column("patch_id").to_pylist()

    @property
    def paths(self) -> list[Path]:
        return [self.root / p for p in self.table.column("path").to_pylist()]

    def _row_of(self) -> dict[str, int]:
        if not hasattr(self, "_index"):
            self._index = {pid: i for i, pid in enumerate(self.patch_ids)}
        return self._index

    def image(self, patch_id: str) -> Image.Image:
        """The patch as an RGB PIL image."""
        row = self._row_of().get(patch_id)
        if row is None:
            raise UserError(f"{self.root}: no patch {patch_id!r} in the store")
        path = self.root / self.table.column("path")[row].as_py()
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: unreadable patch image ({e})") from None


def merge_stores(stores: list[Path], out: Path) -> PatchStore:
    """One store from several (tiled slides plus synthetic tiles, say): images hard-linked (copied
    across file systems), patch tables and any scores.parquet concatenated. Patch ids must be unique."""
    out = Path(out)
    tables, score_tables, seen_ids, seen_paths = [], [], set(), set()
    for root in stores:
        store = PatchStore.open(root)
        rels = store.table.column("path").to_pylist()
        for kind, seen, mine in (("patch ids", seen_ids, set(store.patch_ids)), ("image paths", seen_paths, set(rels))):
            clash = seen & mine
            if clash:
                raise UserError(f"{root}: {kind} already in another store, e.g. {sorted(clash)[0]!r}")
            seen |= mine
        for rel in rels:
            dst = out / rel
            if dst.exists():  # a re-run of the same merge
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(store.root / rel, dst)
            except OSError:
                shutil.copyfile(store.root / rel, dst)
        tables.append(
            store.table.select(PATCH_SCHEMA.names)
            if set(PATCH_SCHEMA.names) <= set(store.table.column_names)
            else store.table
        )
        if (store.root / "scores.parquet").is_file():
            score_tables.append(
                read_parquet(store.root / "scores.parquet", "scores").select(["patch_id", "prob_tumor", "prob_til"])
            )
    if score_tables:
        write_parquet(out / "scores.parquet", pa.concat_tables(score_tables, promote_options="default"))
    write_parquet(out / TABLE_NAME, pa.concat_tables(tables, promote_options="default"))
    return PatchStore.open(out)
