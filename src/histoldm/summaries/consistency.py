"""Does a summary state something its report contradicts? The check every backend's output passes.

Both sides are read the same way (`case_facts`): the report as a parsed document joined into one
fact per kind (addenda overrule, history never counts as current, parts join), the summary clause by
clause, where a finding named without a status word counts as asserted ("IDC; DCIS; ER+" says DCIS
is present). A contradiction is only one the check can show: the summary clause and the report
sentence that disagree, both quoted. A statement the report does not make at all is `unsupported`,
counted apart and never a contradiction. Where a report states several values for a kind (a sentinel
count beside the case total, two sizes), a summary that repeats one of them is not contradicted (a
part's node count only where the summary says which nodes it counts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from histoldm.summaries.case_facts import (
    FACT_KINDS,
    FINDING_KINDS,
    Fact,
    Reading,
    case_facts,
    joined_case,
    report_readings,
    summary_facts,
    summary_readings,
)

_NAMES = {
    "lvi": "lymphovascular invasion",
    "dcis": "ductal carcinoma in situ",
    "lcis": "lobular carcinoma in situ",
    "necrosis": "tumour necrosis",
    "calcifications": "calcifications",
    "er": "ER",
    "pr": "PR",
    "her2": "HER2",
    "nodes": "lymph nodes",
    "margins": "margins",
    "grade": "grade",
    "size": "tumour size",
    "tils": "TILs",
    "laterality": "laterality",
    "procedure": "procedure",
    "pt": "pT",
    "pn": "pN",
    "histologic_type": "histologic type",
}
_PROCEDURE_GROUPS = [
    (
        "mastectomy",
        re.compile(
            r"^(?:modified radical |radical |simple |total |skin[- ]sparing |nipple[- ]sparing |subcutaneous )?"
            r"mastectomy$"
        ),
    ),
    ("breast-conserving", re.compile(r"lumpectomy|partial|segmental|wide local|excision|quadrantectomy")),
    ("biopsy", re.compile(r"biopsy")),
]


@dataclass(frozen=True)
class Contradiction:
    kind: str
    summary_clause: str
    report_sentence: str
    message: str  # "it states ... (\"clause\"), the report ... (\"sentence\")"


@dataclass(frozen=True)
class SummaryCheck:
    contradictions: list[Contradiction]
    unsupported: list[Fact]  # stated by the summary, not mentioned by the report

    @property
    def ok(self) -> bool:
        return not self.contradictions


def _said(r: Reading | Fact) -> str:
    if r.kind in FINDING_KINDS:
        return f"{_NAMES[r.kind]} as {r.status}"
    if r.kind == "histologic_type":
        return f"{r.value} as {r.status}"
    if r.kind in ("her2_ihc", "her2_ish"):
        return f"HER2 {'IHC ' if r.kind == 'her2_ihc' else ''}{r.value}"
    if r.kind == "node_positivity":
        return f"lymph nodes {r.value}"
    return f"{_NAMES.get(r.kind, r.kind)} {r.value}" + (f" ({r.detail})" if r.detail and r.kind in ("er", "pr") else "")


def _contradiction(r: Reading, fact: Fact | Reading, report_says: str | None = None) -> Contradiction:
    sentence = fact.evidence.sentence if isinstance(fact, Fact) else fact.sentence.text
    where = (
        "the report"
        if (fact.status if isinstance(fact, Fact) else fact.status) != "historical"
        else "the report, only as history,"
    )
    message = f'it states {_said(r)} ("{r.sentence.text}"), {where} {report_says or _said(fact)} ("{sentence}")'
    return Contradiction(r.kind, r.sentence.text, sentence, message)


def _type_family(value: str) -> str:
    if "in situ" in value:
        return "in situ"
    if "mixed" in value:
        return "mixed"
    return "lobular" if "lobular" in value else "ductal" if "ductal" in value else "other"


def _types_agree(said: str, truth: str) -> bool:
    a, b = _type_family(said), _type_family(truth)
    if "in situ" in (a, b):
        return a == b
    if said == "invasive carcinoma" or truth == "invasive carcinoma" or "mixed" in (a, b):
        return True
    return said == truth or a == b and a != "other"


def _percents(text: str | None) -> list[float]:
    return [float(x) for x in re.findall(r"(\d{1,3}(?:\.\d)?)\s*%", text or "")]


def _same_stage(a: str, b: str) -> bool:
    a, b = (re.sub(r"[\s()]", "", x).lower().lstrip("yr") for x in (a, b))
    return a.startswith(b) or b.startswith(a)


def _procedure_group(value: str) -> str:
    return next((name for name, pattern in _PROCEDURE_GROUPS if pattern.search(value)), value)


def _check_her2(r: Reading, facts: dict[str, Fact], current: tuple[Reading, ...]) -> Contradiction | None | bool:
    """HER2 as a status, an ISH result or an IHC score: checked against the report's own statements of that
    form, else against the final HER2 status it implies; False when the report states no HER2."""
    kind = r.kind
    if kind == "her2":
        truth = facts.get("her2")
        if truth is None:
            return False
        if r.explicit and r.detail == "triple negative" and truth.value != "negative":
            return _contradiction(r, truth)
        return None if truth.value == r.value else _contradiction(r, truth)
    if kind == "her2_ish":
        ish = [c for c in current if c.kind == "her2_ish"]
        if not ish:
            truth = facts.get("her2")
            if truth is None:
                return False
            implied = {"amplified": "positive", "not amplified": "negative", "equivocal": "equivocal"}[r.value]
            return None if implied == truth.value else _contradiction(r, truth)
        return (
            None
            if any(c.value == r.value for c in ish)
            else _contradiction(r, max(ish, key=lambda c: c.sentence.authority))
        )
    ihc = [c for c in current if c.kind == "her2_ihc"]  # the kind left: her2_ihc
    if ihc:
        return None if any(c.value == r.value for c in ihc) else _contradiction(r, ihc[0])
    truth = facts.get("her2")
    if truth is None or any(c.kind == "her2_ish" for c in current):
        return False if truth is None else None
    implied = {"0": "negative", "1+": "negative", "2+": "equivocal", "3+": "positive"}[r.value]
    return None if implied == truth.value else _contradiction(r, truth)


def _check_value(r: Reading, truth: Fact, stated_anywhere: list[Reading]) -> Contradiction | None:
    """A value the report states: it must equal the final fact, or, for percents, stages, sizes, TILs and a
    part's own node count, one of the report's current statements of it."""
    kind = r.kind
    if kind in ("er", "pr"):
        if truth.value != r.value:
            return _contradiction(r, truth)
        said = _percents(r.detail)
        if (
            said
            and _percents(truth.detail)
            and not any(said[0] in _percents(c.detail) or _in_range(said[0], c.detail) for c in stated_anywhere)
        ):
            return _contradiction(r, truth)
        return None
    if kind == "procedure":
        return None if _procedure_group(r.value) == _procedure_group(truth.value) else _contradiction(r, truth)
    if kind in ("pt", "pn"):
        return None if any(_same_stage(r.value, c.value) for c in stated_anywhere) else _contradiction(r, truth)
    if kind == "size":
        said = float(r.value.split()[0])
        return (
            None
            if any(abs(said - float(c.value.split()[0])) < 0.051 for c in stated_anywhere)
            else _contradiction(r, truth)
        )
    if kind == "tils":
        said = _percents(r.value + "%" if "%" not in r.value else r.value)
        if not said:
            return None
        return (
            None
            if any(r.value == c.value or _in_range(said[0], c.value) for c in stated_anywhere)
            else _contradiction(r, truth)
        )
    if kind == "nodes":  # a part's own count is true only where the summary says which nodes it counts
        qualified = re.search(r"sentinel|axillary|non-sentinel|level|part\b", r.sentence.text, re.IGNORECASE)
        if truth.value == r.value or qualified and any(c.value == r.value for c in stated_anywhere):
            return None
        return _contradiction(r, truth)
    return None if truth.value == r.value else _contradiction(r, truth)


def _check(
    r: Reading,
    facts: dict[str, Fact],
    past: dict[str, Fact],
    current: tuple[Reading, ...],
    historical: tuple[Reading, ...],
) -> Contradiction | None | bool:
    """A contradiction, None when consistent, or False when the report does not state the kind."""
    kind = r.kind
    stated_anywhere = [c for c in current if c.kind == kind]
    if kind in FINDING_KINDS:
        truth = facts.get(kind)
        if truth is None:
            if kind in past and r.status == "present":
                return _contradiction(r, past[kind])
            return False
        return None if truth.status == r.status else _contradiction(r, truth)
    if kind == "histologic_type":
        truth = facts.get(kind)
        if truth is None:
            return _contradiction(r, past[kind]) if kind in past and r.status == "present" else False
        if r.status == "absent":  # "no invasive carcinoma"
            invasive_truth = truth.status != "absent" and "in situ" not in truth.value
            return _contradiction(r, truth) if invasive_truth else None
        if truth.status == "absent" or "in situ" in truth.value:
            return _contradiction(r, truth, "no invasive carcinoma")
        if truth.status != r.status:
            return _contradiction(r, truth)
        return None if _types_agree(r.value, truth.value) else _contradiction(r, truth)
    if kind in ("her2", "her2_ish", "her2_ihc"):
        return _check_her2(r, facts, current)
    if kind == "node_positivity":
        truth = facts.get("nodes")
        if truth is None:
            return False
        positive = int(truth.value.split("/")[0]) > 0
        return None if positive == (r.value == "positive") else _contradiction(r, truth)
    if kind not in FACT_KINDS:
        return None
    truth = facts.get(kind)
    history = [h for h in historical if h.kind == kind and h.value == r.value]
    if truth is None:
        return _contradiction(r, history[0]) if history else False
    if history and truth.value != r.value:  # the value of a prior specimen, stated as the current one
        found = _contradiction(r, truth)
        note = f'; {r.value} is a prior specimen\'s ("{history[0].sentence.text}")'
        return Contradiction(found.kind, found.summary_clause, found.report_sentence, found.message + note)
    return _check_value(r, truth, stated_anywhere)


def _in_range(p: float, text: str | None) -> bool:
    m = re.search(r"(\d{1,3})\s*(?:-|–|to)\s*(\d{1,3})\s*%", text or "")
    if m:
        return float(m[1]) <= p <= float(m[2])
    m = re.search(r"<\s*(\d{1,3})\s*%", text or "")
    return bool(m) and p < float(m[1])


def check_summary(report_text: str, summary: str) -> SummaryCheck:
    """The contradictions between a summary and its report (each quoting both sides), and the
    summary's statements the report does not make."""
    readings = summary_readings(summary)
    if not readings:
        return SummaryCheck([], [])
    facts, past = joined_case(report_text)
    current, historical = report_readings(report_text)
    found: list[Contradiction] = []
    unsupported: list[Fact] = []
    for r in readings:
        result = _check(r, facts, past, current, historical)
        if result is False:
            if r.kind in FACT_KINDS:
                unsupported.append(r.fact())
        elif result is not None and all(c.message != result.message for c in found):
            found.append(result)
    return SummaryCheck(found, unsupported)


def contradictions(report: str, summary: str) -> list[str]:
    """One line per contradiction (empty when consistent): what the summary states and what the report
    states, each quoted."""
    return [c.message for c in check_summary(report, summary).contradictions]


def audited_facts(report_text: str, summary: str) -> tuple[list[dict], list[dict]]:
    """For `summaries.jsonl`: each fact the summary states, as the report's fact of that kind with its
    evidence (section, part, sentence) and the summary clause that states it; and the summary's
    unsupported statements (kind, value, summary_clause)."""
    case = {f.kind: f for f in case_facts(report_text)}
    facts, unsupported, seen = [], [], set()
    for f in summary_facts(summary):
        if (f.kind, f.evidence.sentence) in seen:
            continue
        seen.add((f.kind, f.evidence.sentence))
        if f.kind in case:
            facts.append({**case[f.kind].to_json(), "summary_clause": f.evidence.sentence})
        else:
            unsupported.append({"kind": f.kind, "value": f.value, "summary_clause": f.evidence.sentence})
    return facts, unsupported
