"""The demo dataset, built from what ships with the package: the bundled CC0 slide plus synthetic
H&E-like cases with known tumor/TIL levels, one synthetic report per case and a patient-level split.
The slide is cut into spatial blocks that act as cases (histoldm.data.blocks): its top block rows are
held out, so the held-out set holds real tissue beside synthetic cases; the synthetic cases are split
by the seeded patient-level method. Used by `histoldm demo` and by `histoldm sweep` when no store of
the user's is given."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from histoldm.assets import asset_path
from histoldm.data.blocks import cut_into_blocks
from histoldm.data.config import ScoresConfig, TileConfig
from histoldm.data.scores import run_scores
from histoldm.data.splits import METHOD, split_cases, split_json
from histoldm.data.store import merge_stores
from histoldm.data.synthetic import make_synthetic_dataset, synthetic_case_facts
from histoldm.data.synthetic_facts import CaseFacts
from histoldm.data.tiling import run_tile
from histoldm.experiments.config import DemoDataConfig
from histoldm.fileio import atomic_write_jsonl, atomic_write_text
from histoldm.manifest import write_manifest
from histoldm.summaries.synthetic import make_synthetic_reports

SLIDE_GROUP = "^cmu_small_region-block-"  # case ids of the slide's blocks (regex), for reporting real tissue apart
SYNTHETIC_GROUP = "^SYN-"


def demo_reports(store: Path, seed: int, facts: dict[str, CaseFacts] | None = None) -> list[dict[str, str]]:
    """One synthetic TCGA-style report per case of the store, re-keyed to the store's case ids; a case in
    `facts` gets a report stating those visible facts (the ones its tiles were drawn with).

    The texts say on their first line that they are synthetic; they exist so every case has a report."""
    cases = sorted(
        set(pq.read_table(Path(store) / "patches.parquet", columns=["case_id"]).column("case_id").to_pylist())
    )
    reports = make_synthetic_reports(len(cases), seed, [(facts or {}).get(case) for case in cases])
    return [{"case_id": case, "text": r["text"]} for case, r in zip(cases, reports)]


def build_demo_data(work: Path, cfg: DemoDataConfig, workers: int = 1) -> dict[str, Path]:
    """Tile the CC0 slide, add synthetic cases (rendered in `workers` processes), score, merge, write reports
    and a patient-level split."""
    work = Path(work)
    slide_store, synthetic_store, store = work / "store-slide", work / "store-synthetic", work / "store"
    blocks_store = work / "store-slide-blocks"
    if not (store / "patches.parquet").is_file():
        run_tile(
            TileConfig(
                slides=asset_path("cmu_slide"),
                out=slide_store,
                magnification=cfg.magnification,
                size=cfg.patch_size,
                overlap=cfg.overlap,
            )
        )
        run_scores(ScoresConfig(store=slide_store, proxy=True))
        cut_into_blocks(
            slide_store, blocks_store, size=cfg.patch_size, block=cfg.slide_block, held_out_rows=cfg.held_out_block_rows
        )
        if not (synthetic_store / "patches.parquet").is_file():
            make_synthetic_dataset(
                synthetic_store,
                cfg.synthetic_cases,
                cfg.tiles_per_case,
                seed=cfg.seed,
                size=cfg.patch_size,
                workers=workers,
                visible_facts=cfg.visible_facts,
            )
        merge_stores([blocks_store, synthetic_store], store)
    reports = work / "reports.jsonl"
    if not reports.is_file():
        facts = synthetic_case_facts(cfg.seed, cfg.synthetic_cases, cfg.visible_facts)
        atomic_write_jsonl(reports, demo_reports(store, cfg.seed, facts))
    split = work / "split.json"
    if not split.is_file():
        write_demo_split(split, store, json.loads((blocks_store / "blocks.json").read_text(encoding="utf-8")), cfg)
    return {"store": store, "reports": reports, "split": split, "blocks": blocks_store / "blocks.json"}


def write_demo_split(path: Path, store: Path, blocks: dict[str, Any], cfg: DemoDataConfig) -> None:
    """split.json: the slide's held-out blocks in test, its other blocks in train, the synthetic cases
    split by the seeded patient-level method (histoldm.data.splits) at `test_fraction`."""
    started = time.time()
    cases = pq.read_table(Path(store) / "patches.parquet", columns=["case_id"]).column("case_id").to_pylist()
    synthetic = sorted({c for c in cases if c not in set(blocks["held_out"]) | set(blocks["train"])})
    fractions = {"train": 1 - cfg.test_fraction, "test": cfg.test_fraction}
    groups = split_cases(synthetic, fractions, cfg.seed)
    groups = {"train": groups["train"] + blocks["train"], "test": groups["test"] + blocks["held_out"]}
    method = (
        f"{METHOD} for the synthetic cases; slide blocks of {blocks['block_px']} px, the top "
        f"{blocks['held_out_block_rows']} rows held out"
    )
    atomic_write_text(
        path,
        split_json(
            groups, method=method, seed=cfg.seed, fractions=fractions, stratify_by=None, extra={"note": blocks["note"]}
        ),
    )
    write_manifest(
        path.with_name(path.name + ".manifest.json"),
        stage="split",
        config=cfg,
        inputs={"store": Path(store) / "patches.parquet"},
        produced={k: len(v) for k, v in sorted(groups.items())},
        started=started,
        seed=cfg.seed,
    )
