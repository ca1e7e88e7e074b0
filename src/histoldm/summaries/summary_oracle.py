"""Scoring summaries against a hard report's ground truth, independently of the project's readers.

`states(summary, kind, value)` says whether a summary states a value: any phrasing from
`hard_reports.surface_forms`, with the right polarity for findings ("no DCIS", "DCIS: absent" vs
"DCIS present"), necrosis of an in-situ component not counting as tumour necrosis and a DCIS
nuclear grade not as the Nottingham grade. `write_summary` writes what an LLM would write from the
facts (abbreviations, prose, or a key-value list); `true_summaries` and `planted_contradictions`
give the correct summaries a checker must accept and the one-value-wrong ones it must catch.
"""

from __future__ import annotations

import re
from functools import lru_cache

from histoldm.summaries.hard_reports import DCIS, FINDING_KINDS, IDC, ILC, HardReport, Trap, number_word, surface_forms

_NEGATED_BEFORE = re.compile(
    r"(?:\bno|\bnot|\bwithout|\bnegative\s+for|\bfree\s+of|\babsence\s+of)\s+(?:[\w-]+\s+){0,3}$", re.IGNORECASE
)
_NEGATED_AFTER = re.compile(
    r"^\s*(?:[,:]\s*|\s)(?:is\s+|are\s+|was\s+)?(?:absent|not\s+identified|not\s+seen|negative|none|not\s+present)\b",
    re.IGNORECASE,
)
_IN_SITU_WORDS = re.compile(r"\b(?:DCIS|LCIS|in\s+situ|comedo)", re.IGNORECASE)


@lru_cache(maxsize=4096)
def _pattern(form: str) -> re.Pattern:
    body = r"[\s:]+".join(re.escape(w) for w in form.split())  # "grade 2" also reads "Grade: 2"
    return re.compile(rf"(?<![A-Za-z0-9]){body}(?![A-Za-z0-9])", re.IGNORECASE)


def _clause_bounds(text: str, start: int, end: int) -> tuple[int, int]:
    """The clause around a match: between semicolons, sentence stops (not decimal points) and line ends."""
    stops = [m.end() for m in re.finditer(r";|\.(?!\d)|\n", text[:start])]
    after = re.search(r";|\.(?!\d)|\n", text[end:])
    return (stops[-1] if stops else 0), (end + after.start() if after else len(text))


def _mentions(summary: str, kind: str, forms: tuple[str, ...], in_situ_case: bool | None = None) -> list[bool]:
    """For each mention of one of `forms`: True when stated as present (not negated), False when negated."""
    said = []
    taken: list[tuple[int, int]] = []
    for form in sorted(forms, key=len, reverse=True):  # "tumour necrosis" before "necrosis"
        for m in _pattern(form).finditer(summary):
            if any(a < m.end() and m.start() < b for a, b in taken):
                continue
            taken.append((m.start(), m.end()))
            lo, hi = _clause_bounds(summary, m.start(), m.end())
            if kind == "necrosis" and in_situ_case is False and _IN_SITU_WORDS.search(summary[lo:hi]):
                continue  # necrosis of an in-situ component is not the invasive tumour's necrosis
            if kind == "grade" and re.search(r"nuclear\s+$", summary[lo : m.start()], re.IGNORECASE):
                continue  # DCIS nuclear grade is not the Nottingham grade
            if kind == "nodes" and re.search(r"grade\s+$", summary[lo : m.start()], re.IGNORECASE):
                continue  # "grade 2/3" is not a node count
            before = summary[lo : m.start()]
            negated = kind in (*FINDING_KINDS, "histologic_type") and (
                bool(_NEGATED_BEFORE.search(before)) or bool(_NEGATED_AFTER.match(summary[m.end() : hi]))
            )
            said.append(not negated)
    return said


def states(summary: str, kind: str, value: str, facts: dict[str, str] | None = None) -> bool:
    """Whether `summary` states `value` for `kind` (any phrasing from `surface_forms`, with the right polarity)."""
    forms = surface_forms(kind, value, facts)
    if kind in FINDING_KINDS:
        in_situ_case = None if facts is None else facts.get("histologic_type") == DCIS
        return (value == "present") in _mentions(summary, kind, forms, in_situ_case)
    if kind == "ocr":
        return bool(_pattern(value).search(summary))
    return True in _mentions(summary, kind, forms)


def trap_fallen(summary: str, trap: Trap, facts: dict[str, str]) -> bool:
    """Whether the summary states the trap's wrong value."""
    if trap.kind in ("er", "pr", "her2"):  # the wrong sign alone, not "triple negative" built from the true facts
        facts = {"histologic_type": facts.get("histologic_type", "")}
    return states(summary, trap.kind, trap.wrong, facts)


# --- summaries written from the truth, as an LLM would write them --------------------------------

SUMMARY_STYLES = ("abbreviated", "prose", "list", "clinical")
_TYPE_SHORT = {IDC: "IDC", ILC: "ILC", DCIS: "DCIS"}


def _receptor_clause(kind: str, value: str, note: str | None, style: str) -> str:
    name = {"er": "ER", "pr": "PR", "her2": "HER2"}[kind]
    if kind == "her2" and note and note.startswith("2+") and value != "equivocal":
        return f"{name} {note}" if style != "prose" else f"{name} {value} ({note})"
    if value == "equivocal":
        return f"{name} equivocal (2+)"
    sign = {"positive": "+", "negative": "-"}[value]
    if note and note.split(" (")[0] in ("weakly positive", "low positive") or note and "<1%" in note:
        return f"{name} {note}"  # the qualifier kept verbatim
    detail = note.split("(")[1].rstrip(")") if note and "(" in note else note
    if style == "prose":
        return f"{name} {value}" + (f" ({detail})" if detail else "")
    return f"{name}{sign}" + (f" ({detail})" if detail else "")


def _clinical(facts: dict[str, str], notes: dict[str, str]) -> str:
    """Sentences as a clinician writes them: hyphenated receptors, the size in mm, "not identified"."""
    f, out = facts, []
    kind = f.get("histologic_type")
    if kind == DCIS:
        out.append("Ductal carcinoma in situ without invasive carcinoma")
    elif kind:
        head = kind[0].upper() + kind[1:] + (" (NST)" if kind == IDC else "")
        if "grade" in f:
            head += f", Nottingham grade {f['grade']}/3"
        if "size" in f:
            head += f", {round(float(f['size'].split()[0]) * 10):d} mm"
        out.append(head)
    if "laterality" in f or "procedure" in f:
        out[-1:] = (
            [f"{out[-1]}, {f.get('laterality', '')} {f.get('procedure', '')}".replace("  ", " ").rstrip()]
            if out
            else [f"{f.get('laterality', '')} {f.get('procedure', '')}".strip().capitalize()]
        )
    words = {
        "lvi": "Lymphovascular invasion",
        "dcis": "Associated DCIS",
        "lcis": "Lobular carcinoma in situ",
        "necrosis": "Tumour necrosis",
    }
    for finding in FINDING_KINDS:
        if finding in f and not (finding == "dcis" and kind == DCIS):
            out.append(f"{words[finding]} {'identified' if f[finding] == 'present' else 'not identified'}")
    if "tils" in f:
        out.append(f"Stromal TILs approximately {f['tils']}")
    if "margins" in f:
        out.append(f"Margins {'clear' if f['margins'] == 'negative' else 'involved'}")
    if "nodes" in f:
        k, n = f["nodes"].split("/")
        out.append(f"Nodes: {k} of {n} positive" + (f" ({notes['nodes']})" if "nodes" in notes else ""))
    receptors = []
    for r in ("er", "pr", "her2"):
        if r in f:
            name, note = {"er": "ER", "pr": "PR", "her2": "HER2"}[r], notes.get(r)
            if f[r] == "equivocal":
                receptors.append("HER2 equivocal (IHC 2+)")
            elif note and (note.startswith(("weakly", "low")) or "<1%" in note):
                receptors.append(f"{name} {note}")
            else:
                detail = note if r == "her2" else note.split("(")[1].rstrip(")") if note and "(" in note else None
                receptors.append(
                    f"{name}-{f[r]}"
                    + (f" (IHC {detail})" if r == "her2" and detail else f" ({detail})" if detail else "")
                )
    if receptors:
        out.append(", ".join(receptors))
    return ". ".join(out) + "."


def write_summary(facts: dict[str, str], notes: dict[str, str] | None = None, style: str = "abbreviated") -> str:
    """A summary stating exactly `facts` in one of SUMMARY_STYLES (abbreviations, prose, key-value list, clinical
    sentences)."""
    notes = notes or {}
    if style == "clinical":
        return _clinical(facts, notes)
    f = facts
    short = style != "prose"
    clauses = []
    where = " ".join(x for x in (f"{f['laterality']} breast" if "laterality" in f else "", f.get("procedure", "")) if x)
    kind = f.get("histologic_type")
    if kind:
        head = _TYPE_SHORT[kind] if short else kind[0].upper() + kind[1:]
        if kind == DCIS:
            head += ", no invasive carcinoma"
        if "grade" in f:
            head += f", grade {f['grade']}" if style != "list" else f", G{f['grade']}"
        if "size" in f:
            head += f", {f['size']}"
        clauses.append(head)
    elif "grade" in f:
        clauses.append(f"grade {f['grade']}")
    if where:
        clauses.insert(0, where[0].upper() + where[1:]) if style != "prose" else clauses.append(f"{where}")
    names = {
        "lvi": ("LVI", "lymphovascular invasion"),
        "dcis": ("DCIS", "ductal carcinoma in situ"),
        "lcis": ("LCIS", "lobular carcinoma in situ"),
        "necrosis": ("tumour necrosis", "tumor necrosis"),
    }
    for finding in FINDING_KINDS:
        if finding not in f or (finding == "dcis" and kind == DCIS and f[finding] == "present"):
            continue
        name = names[finding][0 if short else 1]
        if finding == "necrosis" and kind == DCIS:
            name = "necrosis"
        if style == "list":
            clauses.append(f"{name}: {f[finding]}")
        else:
            clauses.append(f"{name} present" if f[finding] == "present" else f"no {name}")
    if "tils" in f:
        clauses.append(
            {"abbreviated": f"TILs {f['tils']}", "prose": f"stromal TILs {f['tils']}", "list": f"TILs: {f['tils']}"}[
                style
            ]
        )
    if "margins" in f:
        clauses.append(
            {
                "abbreviated": f"margins {f['margins']}",
                "prose": f"margins are {f['margins']}",
                "list": f"Margins: {f['margins']}",
            }[style]
        )
    if "nodes" in f:
        k, n = (int(x) for x in f["nodes"].split("/"))
        qualifier = f" ({notes['nodes']})" if "nodes" in notes else ""
        clauses.append(
            {
                "abbreviated": f"nodes {k}/{n}{qualifier}",
                "prose": f"{number_word(k)} of {number_word(n)} lymph nodes positive{qualifier}",
                "list": f"Lymph nodes: {k}/{n}{qualifier}",
            }[style]
        )
    receptors = [_receptor_clause(r, f[r], notes.get(r), style) for r in ("er", "pr", "her2") if r in f]
    if receptors:
        clauses.append(", ".join(receptors))
    text = "; ".join(clauses) if style != "list" else ". ".join(c[0].upper() + c[1:] for c in clauses)
    return text[0].upper() + text[1:] + "."


def true_summaries(report: HardReport) -> list[str]:
    """Correct summaries of the report, one per style: a checker must accept every one."""
    return [write_summary(report.facts, report.notes, style) for style in SUMMARY_STYLES]


def _flip(kind: str, value: str) -> str:
    return {
        "present": "absent",
        "absent": "present",
        "positive": "negative",
        "negative": "positive",
        "equivocal": "positive",
        "left": "right",
        "right": "left",
    }[value]


def _without(notes: dict[str, str], kind: str) -> dict[str, str]:
    """The notes less the qualifier of a changed value (a wrong "ER-" must not keep "(80%)")."""
    return {k: v for k, v in notes.items() if k != kind}


def planted_contradictions(report: HardReport, style: str = "abbreviated") -> list[tuple[str, str]]:
    """(kind of error, summary) pairs, each a correct summary with one value made false: a reversed negation, a wrong
    receptor, a wrong laterality, and every planted trap (history as current, a pre-addendum value, ...)."""
    f, out = report.facts, []
    notes = report.notes
    finding = next(
        (
            k
            for k in ("dcis", "lvi", "necrosis", "lcis")
            if k in f and not (k == "dcis" and f.get("histologic_type") == DCIS)
        ),
        None,
    )
    if finding:
        out.append(("reversed_negation", write_summary({**f, finding: _flip(finding, f[finding])}, notes, style)))
    receptor = next((k for k in ("er", "her2", "pr") if k in f), None)
    if receptor:
        wrong = _flip(receptor, f[receptor])
        out.append(("wrong_receptor", write_summary({**f, receptor: wrong}, _without(notes, receptor), style)))
    out.append(
        ("wrong_laterality", write_summary({**f, "laterality": _flip("laterality", f["laterality"])}, notes, style))
    )
    for trap in report.traps:
        if trap.kind == "ocr":
            continue
        kind = {"history": "history_as_current", "addendum": "pre_addendum"}.get(trap.pattern, trap.pattern)
        changed = {**f, trap.kind: trap.wrong}
        out.append((kind, write_summary(changed, _without(notes, trap.kind), style)))
    return out
