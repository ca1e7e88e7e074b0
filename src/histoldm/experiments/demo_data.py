"""The demo dataset, built from what ships with the package: the bundled CC0 slide plus synthetic
H&E-like cases with known tumor/TIL levels, one synthetic report per case and a patient-level split.
Used by `histoldm demo` and by `histoldm sweep` when no store of the user's is given."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from pydantic import Field

from histoldm.config import StrictModel
from histoldm.fileio import atomic_write_jsonl


class DemoDataConfig(StrictModel):
    """The demo dataset: the bundled CC0 slide plus synthetic H&E-like cases with known attributes."""

    magnification: float = 10.0  # PathLDM's; synthetic tiles are drawn at the same 1 um/px
    patch_size: int = 256
    overlap: int = 192  # the CC0 slide is small: without overlap 10x gives only a handful of patches
    synthetic_cases: int = Field(8, ge=2)
    tiles_per_case: int = Field(12, ge=1)
    test_fraction: float = Field(0.3, gt=0, lt=1)
    seed: int = 0


def demo_reports(store: Path, seed: int) -> list[dict[str, str]]:
    """One synthetic TCGA-style report per case of the store, re-keyed to the store's case ids.

    The texts say on their first line that they are synthetic; they exist so every case has a report."""
    from histoldm.summaries.synthetic import make_synthetic_reports

    cases = sorted(set(pq.read_table(Path(store) / "patches.parquet", columns=["case_id"]).column("case_id").to_pylist()))
    reports = make_synthetic_reports(len(cases), seed)
    return [{"case_id": case, "text": r["text"]} for case, r in zip(cases, reports)]


def build_demo_data(work: Path, cfg: DemoDataConfig, workers: int = 1) -> dict[str, Path]:
    """Tile the CC0 slide, add synthetic cases (rendered in `workers` processes), score, merge, write reports
    and a patient-level split."""
    from histoldm.assets import asset_path
    from histoldm.data.scores import ScoresConfig, run_scores
    from histoldm.data.splits import SplitConfig, run_split
    from histoldm.data.store import merge_stores
    from histoldm.data.synthetic import make_synthetic_dataset
    from histoldm.data.tiling import TileConfig, run_tile

    work = Path(work)
    slide_store, synthetic_store, store = work / "store-slide", work / "store-synthetic", work / "store"
    if not (store / "patches.parquet").is_file():
        run_tile(TileConfig(slides=asset_path("cmu_slide"), out=slide_store, magnification=cfg.magnification,
                            size=cfg.patch_size, overlap=cfg.overlap))
        run_scores(ScoresConfig(store=slide_store, proxy=True))
        if not (synthetic_store / "patches.parquet").is_file():
            make_synthetic_dataset(synthetic_store, cfg.synthetic_cases, cfg.tiles_per_case, seed=cfg.seed, size=cfg.patch_size,
                                   workers=workers)
        merge_stores([slide_store, synthetic_store], store)
    reports = work / "reports.jsonl"
    if not reports.is_file():
        atomic_write_jsonl(reports, demo_reports(store, cfg.seed))
    split = work / "split.json"
    if not split.is_file():
        run_split(SplitConfig(out=split, store=store, seed=cfg.seed,
                              fractions={"train": 1 - cfg.test_fraction, "test": cfg.test_fraction}))
    return {"store": store, "reports": reports, "split": split}
