"""Which ground-truth facts of a synthetic case a summary states correctly, whatever wrote it.

Scores any backend's wording by the facts it states: a fact counts when the summary states the
case's value (a negative finding must be stated as negative: "no DCIS" counts for a case without
DCIS, "DCIS" counts against it). Used by tests and by benchmarks/summary_facts.py.
"""

from __future__ import annotations

import re

from histoldm.summaries.extractive import margin_status, receptor_signs
from histoldm.summaries.findings import read_status
from histoldm.summaries.synthetic import SyntheticCase

GROUND_TRUTH_FACTS = (
    "histologic_type",
    "grade",
    "tils",
    "necrosis",
    "mitoses",
    "pleomorphism",
    "growth",
    "in_situ",
    "lvi",
    "receptors",
    "size",
    "nodes",
    "margins",
)
_ABBREVIATIONS = {
    "Invasive ductal carcinoma": "idc",
    "Invasive lobular carcinoma": "ilc",
    "Invasive mixed ductal and lobular carcinoma": "mixed ductal-lobular carcinoma",
}
_LEVEL = {1: "low", 2: "intermediate", 3: "high"}
_PLEOMORPHISM = {1: "mild", 2: "moderate", 3: "marked"}


def facts_stated(case: SyntheticCase, summary: str) -> dict[str, bool]:
    """fact name -> whether `summary` states the case's value for it."""
    text = summary.lower()
    signs = {
        "ER": f"ER{'+' if case.er else '-'}",
        "PR": f"PR{'+' if case.pr else '-'}",
        "HER2": f"HER2{'+' if case.her2 else '-'}",
    }
    return {
        "histologic_type": case.histologic_type.lower() in text
        or bool(re.search(rf"\b{re.escape(_ABBREVIATIONS.get(case.histologic_type, '~'))}\b", text)),
        "grade": bool(re.search(rf"\bgrade {case.grade}\b", text)),
        "tils": bool(re.search(rf"\b{case.til_level} (?:tils|tumour-infiltrating)", text)),
        "necrosis": read_status(summary, "necrosis", bare_means_present=True) == case.necrosis,
        "mitoses": f"{_LEVEL[case.mitoses]} mitotic" in text,
        "pleomorphism": f"{_PLEOMORPHISM[case.pleomorphism]} pleomorphism" in text
        or f"{_PLEOMORPHISM[case.pleomorphism]} nuclear pleomorphism" in text,
        "growth": case.growth_pattern.lower() in text,
        "in_situ": read_status(summary, "dcis", bare_means_present=True) == case.dcis,
        "lvi": read_status(summary, "lvi", bare_means_present=True) == case.lvi,
        "receptors": receptor_signs(summary) == signs,
        "size": bool(re.search(rf"(?<![\d.]){case.size_cm:g} cm\b", text)),
        "nodes": f"{case.nodes_positive}/{case.nodes_total}" in text
        or f"{case.nodes_positive} of {case.nodes_total}" in text,
        "margins": margin_status(summary) == ("negative" if case.margins_negative else "positive"),
    }


def stated_opposite(case: SyntheticCase, summary: str) -> list[str]:
    """Findings the summary states with another status than the case's truth (present/absent/possible)."""
    wrong = []
    for name, finding, truth in (
        ("necrosis", "necrosis", case.necrosis),
        ("in_situ", "dcis", case.dcis),
        ("lvi", "lvi", case.lvi),
    ):
        said = read_status(summary, finding, bare_means_present=True)
        if said is not None and said != truth:
            wrong.append(f"{name}: says {said}, truth {truth}")
    margins = margin_status(summary)
    if margins and margins != ("negative" if case.margins_negative else "positive"):
        wrong.append(f"margins: says {margins}")
    return wrong
