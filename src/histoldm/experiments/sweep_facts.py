"""The sweep's per-fact columns, for a demo dataset drawn with visible facts (demo_data.visible_facts):
per budget, the share of its summaries that carry each fact, and the fact's adherence on the generated
held-out images beside the same measure on the real held-out images (the ceiling). Adherence counts the
synthetic cases only: the slide's blocks are real tissue whose synthetic reports say nothing true of it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from histoldm.evaluate.fact_adherence import carried_share, run_fact_adherence
from histoldm.experiments.demo_data import SYNTHETIC_GROUP
from histoldm.fileio import read_jsonl

if TYPE_CHECKING:
    from histoldm.experiments.chain import ChainResult

FACT_NOTE = (
    "<fact>_in_summaries: share of the budget's summaries that state the fact (either side); "
    "adherence_<fact>_auroc / _p: AUROC of the fact's descriptor between generated held-out images whose caption "
    "states the fact (necrosis present, grade 3, lobular) and the rest, synthetic cases only (the slide's blocks "
    "are drawn without facts), with its one-sided permutation p-value; "
    "adherence_<fact>_real_auroc: the same on the real held-out images, the ceiling for these captions "
    "(histoldm.evaluate.fact_adherence)."
)


def fact_columns(facts: Sequence[str]) -> list[str]:
    """The results table's columns for these facts, in the order they are drawn."""
    suffixes = ("in_summaries", "auroc", "p", "real_auroc")
    return [f"{fact}_{s}" if s == "in_summaries" else f"adherence_{fact}_{s}" for fact in facts for s in suffixes]


def fact_row(
    facts: Sequence[str], result: ChainResult, summaries: Path, mpp: float, seed: int
) -> dict[str, float | None]:
    """One budget's per-fact columns, from its summaries and its generated and real held-out folders."""
    texts = [r["summary"] for r in read_jsonl(summaries) if r.get("status") != "failed" and r.get("summary")]
    carried = carried_share(texts, facts)
    adherence = run_fact_adherence(
        result.samples, result.real, facts=facts, mpp=mpp, seed=seed, id_pattern=SYNTHETIC_GROUP
    )
    row: dict[str, float | None] = {}
    for fact in facts:
        generated, real = adherence[fact]["generated"], adherence[fact]["real"]
        row[f"{fact}_in_summaries"] = round(carried[fact], 3)
        row[f"adherence_{fact}_auroc"] = round(generated["auroc"], 3) if "auroc" in generated else None
        row[f"adherence_{fact}_p"] = round(generated["p_value"], 4) if "p_value" in generated else None
        row[f"adherence_{fact}_real_auroc"] = round(real["auroc"], 3) if "auroc" in real else None
    return row
