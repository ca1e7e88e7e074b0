"""The sweep's per-fact columns, for a demo dataset drawn with visible facts (demo_data.visible_facts):
per budget, the share of its summaries that carry each fact, and the fact's adherence on the generated
held-out images by caption and by each case's drawn fact (what a budget that drops the fact loses), beside
the same measure on the real held-out images (the ceiling). Adherence counts the synthetic cases only: the
slide's blocks are real tissue whose synthetic reports say nothing true of it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq

from histoldm.data.synthetic import synthetic_case_facts
from histoldm.evaluate.fact_adherence import carried_share, run_fact_adherence
from histoldm.experiments.demo_data import SYNTHETIC_GROUP
from histoldm.fileio import read_jsonl

if TYPE_CHECKING:
    from histoldm.experiments.chain import ChainResult
    from histoldm.experiments.config import DemoDataConfig

FACT_NOTE = (
    "<fact>_in_summaries: share of the budget's summaries that state the fact (either side); "
    "adherence_<fact>_auroc / _p: AUROC of the fact's descriptor between generated held-out images whose caption "
    "states the fact (necrosis present, grade 3, lobular) and the rest, synthetic cases only (the slide's blocks "
    "are drawn without facts), with its one-sided permutation p-value; "
    "adherence_<fact>_real_auroc: the same on the real held-out images, the ceiling for these captions "
    "(histoldm.evaluate.fact_adherence); "
    "adherence_<fact>_truth_auroc / _truth_p: the same test on the generated images split by each case's drawn "
    "fact instead of its caption: a budget whose summaries drop the fact shows here what it loses."
)


def fact_columns(facts: Sequence[str]) -> list[str]:
    """The results table's columns for these facts, in the order they are drawn."""
    suffixes = ("in_summaries", "auroc", "p", "real_auroc", "truth_auroc", "truth_p")
    return [f"{fact}_{s}" if s == "in_summaries" else f"adherence_{fact}_{s}" for fact in facts for s in suffixes]


def drawn_truth(store: Path, data: DemoDataConfig) -> dict[str, dict[str, bool]]:
    """Patch id -> fact -> whether its synthetic case was drawn with the fact's positive side (the slide's
    blocks, drawn without facts, are left out)."""
    cases = synthetic_case_facts(data.seed, data.synthetic_cases, data.visible_facts)
    patches = pq.read_table(Path(store) / "patches.parquet", columns=["patch_id", "case_id"]).to_pylist()
    return {
        p["patch_id"]: {fact: bool(cases[p["case_id"]].positive(fact)) for fact in data.visible_facts}
        for p in patches
        if p["case_id"] in cases
    }


def _rounded(test: dict, key: str, digits: int) -> float | None:
    return round(test[key], digits) if key in test else None


def fact_row(
    facts: Sequence[str],
    result: ChainResult,
    summaries: Path,
    mpp: float,
    seed: int,
    truth: Mapping[str, Mapping[str, bool]],
) -> dict[str, float | None]:
    """One budget's per-fact columns, from its summaries, its generated and real held-out folders and the
    cases' drawn facts (`truth`: drawn_truth)."""
    texts = [r["summary"] for r in read_jsonl(summaries) if r.get("status") != "failed" and r.get("summary")]
    carried = carried_share(texts, facts)
    adherence = run_fact_adherence(
        result.samples, result.real, facts=facts, mpp=mpp, seed=seed, id_pattern=SYNTHETIC_GROUP, truth=truth
    )
    row: dict[str, float | None] = {}
    for fact in facts:
        tests = adherence[fact]
        row[f"{fact}_in_summaries"] = round(carried[fact], 3)
        row[f"adherence_{fact}_auroc"] = _rounded(tests["generated"], "auroc", 3)
        row[f"adherence_{fact}_p"] = _rounded(tests["generated"], "p_value", 4)
        row[f"adherence_{fact}_real_auroc"] = _rounded(tests["real"], "auroc", 3)
        row[f"adherence_{fact}_truth_auroc"] = _rounded(tests["generated_truth"], "auroc", 3)
        row[f"adherence_{fact}_truth_p"] = _rounded(tests["generated_truth"], "p_value", 4)
    return row
