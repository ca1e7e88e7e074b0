"""Does a summary state the opposite of its report? The check every backend's output passes.

The report's statuses are read from its diagnostic text (`findings`, whole-clause scope); the
summary's from the summary, where a finding named without a status word counts as asserted
("IDC; DCIS; ER+" says DCIS is present). A contradiction is a finding both state with different
statuses: present vs absent, or a doubt ("suspicious for", "cannot be excluded") written as a
certainty either way; receptors, margins and node status likewise. A fact the report does not
state is not checked here (that is a hallucination, not a reversal).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from histoldm.summaries.extractive import diagnostic_text, margin_status, node_counts, receptor_signs
from histoldm.summaries.findings import FINDINGS, read_status

_NAMES = {"lvi": "lymphovascular invasion", "dcis": "ductal carcinoma in situ", "lcis": "lobular carcinoma in situ",
          "necrosis": "necrosis", "calcifications": "calcifications", "invasive": "invasive carcinoma"}


@dataclass(frozen=True)
class Statements:
    """What one text states about each checked finding."""

    findings: dict[str, str]  # finding -> present / absent / possible
    receptors: dict[str, str]  # "ER" -> "ER+"
    margins: str | None  # negative / positive
    nodes_positive: bool | None


def _nodes_positive(text: str) -> bool | None:
    if counts := node_counts(text):
        return counts[0] > 0
    if m := re.search(r"\bnodes?\s+(\d{1,2})\s*/\s*\d{1,2}\b", text, re.IGNORECASE):
        return int(m[1]) > 0
    if re.search(r"\b(?:lymph\s+)?nodes?\s+(?:are\s+)?negative\b|negative\s+(?:lymph\s+)?nodes\b", text, re.IGNORECASE):
        return False
    if re.search(r"\b(?:lymph\s+)?nodes?\s+(?:are\s+)?positive\b|positive\s+(?:lymph\s+)?nodes\b", text, re.IGNORECASE):
        return True
    return None


def statements(text: str, is_summary: bool) -> Statements:
    found = {}
    for name in FINDINGS:  # a report's diagnosis naming an invasive carcinoma asserts it, as a caption does
        status = read_status(text, name, bare_means_present=is_summary or name == "invasive")
        if status:
            found[name] = status
    return Statements(found, receptor_signs(text), margin_status(text), _nodes_positive(text))


@lru_cache(maxsize=256)
def report_statements(report: str) -> Statements:
    """A report's statements, from its diagnostic text (cached: a case is checked once per reply)."""
    return statements(diagnostic_text(report), is_summary=False)


def contradictions(report: str, summary: str) -> list[str]:
    """One line per finding the summary states differently from the report (empty when consistent)."""
    said = statements(summary, is_summary=True)
    if not (said.findings or said.receptors or said.margins or said.nodes_positive is not None):
        return []  # nothing to check: the report need not be read
    truth = report_statements(report)
    problems = []
    for name, status in said.findings.items():
        if name in truth.findings and truth.findings[name] != status:
            problems.append(f"it states {_NAMES[name]} as {status}, the report as {truth.findings[name]}")
    for key, sign in said.receptors.items():
        if key in truth.receptors and truth.receptors[key] != sign:
            problems.append(f"it states {sign}, the report {truth.receptors[key]}")
    if said.margins and truth.margins and said.margins != truth.margins:
        problems.append(f"it states margins {said.margins}, the report {truth.margins}")
    if said.nodes_positive is not None and truth.nodes_positive is not None and said.nodes_positive != truth.nodes_positive:
        problems.append(f"it states lymph nodes {'positive' if said.nodes_positive else 'negative'}, "
                        f"the report {'positive' if truth.nodes_positive else 'negative'}")
    return problems
