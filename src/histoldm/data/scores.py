"""Per-patch tumour / TIL probabilities -> scores.parquet, and PathLDM's probability -> level rule.

Sources (exactly one): a CSV keyed by patch_id or by slide_id + x + y; per-slide heat-map grids
(`HEATMAPS/<slide_id>.npz` with 2-D arrays prob_tumor and/or prob_til, one cell per `stride`
level-0 pixels; NaN = unknown) averaged over the cells a patch overlaps; or the image-based
HEURISTIC proxy of histoldm.data.descriptors (for demos without classifier output).
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from histoldm.data.config import ScoresConfig
from histoldm.data.descriptors import proxy_scores
from histoldm.data.store import PatchStore
from histoldm.errors import UserError
from histoldm.fileio import read_text_input, require_output_file
from histoldm.manifest import write_manifest
from histoldm.tables import read_parquet, write_parquet

SCORES_SCHEMA = pa.schema([("patch_id", pa.string()), ("prob_tumor", pa.float64()), ("prob_til", pa.float64())])
SCORE_COLUMNS = ("prob_tumor", "prob_til")


def levels_of(p: float | None, levels: list[str] | tuple[str, ...] = ("low", "high")) -> str | None:
    """PathLDM's rule L[int(p * len(L))], with p = 1.0 clamped to the top level; None when p is unknown."""
    p = probability(p)
    return None if p is None else levels[min(int(p * len(levels)), len(levels) - 1)]


def probability(value: float | str | None) -> float | None:
    """A score read as a probability: blank, NA and NaN are unknown; anything outside [0, 1] is refused
    (percentages are the usual mistake) except float rounding just outside it, which is clamped."""
    if isinstance(value, str):
        value = None if value.strip().lower() in {"", "nan", "na", "none"} else float(value)
    if value is None or math.isnan(value):
        return None
    if not -1e-6 <= value <= 1 + 1e-6:
        raise ValueError(f"score {value:g} outside [0, 1] (probabilities, not percentages)")
    return min(max(float(value), 0.0), 1.0)


def _number(cell: str | None) -> float | None:
    """A CSV cell as a float; blank, NA and NaN are unknown (None). Raises ValueError on anything else."""
    if cell is None or cell.strip().lower() in {"", "nan", "na", "none"}:
        return None
    value = float(cell)
    return None if math.isnan(value) else value


def percent_scale(path: Path, rows: list[dict[str, str]], percent: bool) -> dict[str, float]:
    """Per score column, what its values are multiplied by to be probabilities: 1/100 with `percent`,
    else 1. A column whose values all lie in [0, 100] with some above 1 is refused unless `percent` says
    so: read as probabilities every one of them would be out of range, and the patches left unscored."""
    if percent:
        return {c: 0.01 for c in SCORE_COLUMNS}
    for column in SCORE_COLUMNS:
        values = []
        for row in rows:
            try:
                values.append(_number(row.get(column)))
            except ValueError:
                continue
        values = [v for v in values if v is not None]
        if values and min(values) >= 0 and max(values) <= 100 and max(values) > 1 + 1e-6:
            raise UserError(
                f"{path}: {column} looks like percentages (values from {min(values):g} to {max(values):g}); "
                "pass --percent to read them as percentages, or write probabilities in [0, 1]"
            )
    return {c: 1.0 for c in SCORE_COLUMNS}


def scores_from_csv(
    store: PatchStore, path: Path, percent: bool = False
) -> tuple[dict[str, dict[str, float | None]], list[dict[str, Any]]]:
    """Rows keyed by patch_id, or by slide_id + x + y; rows naming unknown patches/slides are skipped.
    Each score column is judged on its own: a bad prob_tumor leaves the row's prob_til in place."""
    table = store.table.to_pydict()
    by_coord = {
        (s, x, y): p
        for p, s, x, y in zip(table["patch_id"], table.get("slide_id", []), table.get("x", []), table.get("y", []))
    }
    known_patches, known_slides = set(table["patch_id"]), set(table.get("slide_id", []))
    scores: dict[str, dict[str, float | None]] = {}
    skipped: list[dict[str, Any]] = []
    reader = csv.DictReader(io.StringIO(read_text_input(path, "score CSV"), newline=""))
    cols = set(reader.fieldnames or [])
    if not cols & set(SCORE_COLUMNS):
        raise UserError(f"{path}: needs a prob_tumor and/or prob_til column")
    if "patch_id" not in cols and not {"slide_id", "x", "y"} <= cols:
        raise UserError(f"{path}: needs a patch_id column, or slide_id, x and y columns")
    rows = list(reader)
    scale = percent_scale(path, rows, percent)
    for line, row in enumerate(rows, 2):
        try:
            if row.get("patch_id"):
                pid = row["patch_id"]
                if pid not in known_patches:
                    skipped.append({"line": line, "patch_id": pid, "reason": "unknown patch_id"})
                    continue
            else:
                key = (row["slide_id"], int(float(row["x"])), int(float(row["y"])))
                if key[0] not in known_slides:
                    skipped.append({"line": line, "slide_id": key[0], "reason": "unknown slide"})
                    continue
                if key not in by_coord:
                    skipped.append({"line": line, "slide_id": key[0], "reason": f"no patch at x={key[1]}, y={key[2]}"})
                    continue
                pid = by_coord[key]
        except (ValueError, TypeError, KeyError) as e:
            skipped.append({"line": line, "reason": f"unreadable row ({e})"})
            continue
        scores[pid] = {}
        for c in SCORE_COLUMNS:
            try:
                value = _number(row.get(c))
                scores[pid][c] = probability(None if value is None else value * scale[c])
            except (ValueError, TypeError) as e:
                scores[pid][c] = None
                skipped.append(
                    {
                        "line": line,
                        "patch_id": pid,
                        "column": c,
                        "reason": f"{c} {row.get(c)!r} unreadable ({e}); the row's other score kept",
                    }
                )
    return scores, skipped


def scores_from_heatmaps(
    store: PatchStore, folder: Path, stride: float | None
) -> tuple[dict[str, dict[str, float | None]], list[dict[str, Any]]]:
    """Mean of the grid cells each patch overlaps (a patch covers [x, x + extent) in level-0 pixels)."""
    if not Path(folder).is_dir():
        raise UserError(f"{folder}: heat-map folder not found")
    t = store.table.to_pydict()
    if "extent" not in t or any(e is None for e in t["extent"]):
        raise UserError(
            f"{store.root}: heat-map scores need each patch's footprint (`extent`), which tiled stores have"
        )
    scores: dict[str, dict[str, float | None]] = {}
    skipped: list[dict[str, Any]] = []
    for slide in sorted(set(t["slide_id"])):
        npz = Path(folder) / f"{slide}.npz"
        if not npz.is_file():
            skipped.append({"slide_id": slide, "reason": f"no heat map {npz.name}"})
            continue
        with np.load(npz, allow_pickle=False) as data:
            grids = {c: data[c].astype(np.float64) for c in SCORE_COLUMNS if c in data.files}
            cell = float(data["stride"]) if "stride" in data.files else stride
        if cell is None:
            raise UserError(f"{npz}: no `stride` in the file; pass --stride (level-0 pixels per cell)")
        finite = [g[np.isfinite(g)] for g in grids.values()]
        if any(v.size and (v.min() < 0 or v.max() > 1) for v in finite):
            skipped.append(
                {"slide_id": slide, "reason": f"{npz.name}: values outside [0, 1] (probabilities, not percentages)"}
            )
            continue
        for pid, s, x, y, ext in zip(t["patch_id"], t["slide_id"], t["x"], t["y"], t["extent"]):
            if s != slide:
                continue
            r0, r1 = int(y // cell), int(math.ceil((y + ext) / cell))
            c0, c1 = int(x // cell), int(math.ceil((x + ext) / cell))
            row = {}
            for c in SCORE_COLUMNS:
                window = grids[c][r0:r1, c0:c1] if c in grids else np.empty(0)
                row[c] = probability(float(np.nanmean(window))) if window.size and np.isfinite(window).any() else None
            scores[pid] = row
    for extra in sorted(p.stem for p in Path(folder).glob("*.npz") if p.stem not in set(t["slide_id"])):
        skipped.append({"slide_id": extra, "reason": "heat map for a slide not in the store"})
    return scores, skipped


def scores_from_proxy(store: PatchStore) -> dict[str, dict[str, float | None]]:
    t = store.table.to_pydict()
    mpps = t.get("mpp") or [None] * len(t["patch_id"])
    out = {}
    for pid, mpp in tqdm(list(zip(t["patch_id"], mpps)), desc="proxy scores", unit="patch"):
        out[pid] = proxy_scores(np.asarray(store.image(pid)), mpp or 1.0)
    return out


def write_scores(path: Path, patch_ids: list[str], scores: dict[str, dict[str, float | None]]) -> None:
    rows = [{"patch_id": p, **{c: scores.get(p, {}).get(c) for c in SCORE_COLUMNS}} for p in patch_ids]
    write_parquet(path, pa.Table.from_pylist(rows, schema=SCORES_SCHEMA))


def read_scores(path: Path) -> dict[str, dict[str, float | None]]:
    t = read_parquet(path, "scores table").to_pydict()
    try:
        return {
            p: {c: probability(t[c][i]) if c in t else None for c in SCORE_COLUMNS} for i, p in enumerate(t["patch_id"])
        }
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None


def _describe(skip: dict[str, Any]) -> str:
    """One skipped row or heat map as a phrase: where, then why."""
    where = f"line {skip['line']}" if "line" in skip else str(skip.get("slide_id", ""))
    return f"{where}: {skip['reason']}" if where else skip["reason"]


@dataclass(frozen=True)
class ScoresResult:
    """`histoldm scores`: the scores file and how many patches got scores, by which method."""

    out: Path
    patches: int
    scored: int
    method: str  # csv | heatmaps | proxy-heuristic
    skipped: list[dict[str, Any]]  # rows or heatmaps that could not be used, with the reason


def run_scores(cfg: ScoresConfig) -> ScoresResult:
    """Write scores.parquet (one row per patch of the store, null where unknown) and its manifest."""
    started = time.time()
    store = PatchStore.open(cfg.store)
    out = Path(cfg.out) if cfg.out else Path(cfg.store) / "scores.parquet"
    skipped: list[dict[str, Any]] = []
    require_output_file(out, "scores file")
    if cfg.csv:
        scores, skipped = scores_from_csv(store, cfg.csv, cfg.percent)
        method = "csv"
    elif cfg.heatmaps:
        scores, skipped = scores_from_heatmaps(store, cfg.heatmaps, cfg.stride)
        method = "heatmaps"
    else:
        scores, method = scores_from_proxy(store), "proxy-heuristic"
    scored = sum(any(v is not None for v in scores.get(p, {}).values()) for p in store.patch_ids)
    if scored == 0:  # an all-null table would replace a good one and leave every caption without levels
        first = f"; first: {_describe(skipped[0])}" if skipped else ""
        raise UserError(
            f"{cfg.csv or cfg.heatmaps}: no patch of {cfg.store} got a score ({len(skipped)} rows skipped{first}); "
            f"{out} not written"
        )
    write_scores(out, store.patch_ids, scores)
    produced = {"patches": len(store), "scored": scored, "method": method}
    write_manifest(
        out.with_name(out.name + ".manifest.json"),
        stage="scores",
        config=cfg,
        inputs={"store": Path(cfg.store) / "patches.parquet", "csv": cfg.csv, "heatmaps": cfg.heatmaps},
        produced=produced,
        started=started,
        skipped=skipped,
    )
    return ScoresResult(Path(out), **produced, skipped=skipped)
