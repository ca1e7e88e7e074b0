"""The offline, deterministic summariser: pull the facts that show in tissue, write them tersely.

A diffusion model can only learn from words that describe what a patch looks like: histologic
type, grade, tumour size, lymphovascular invasion, the in-situ component and receptor status
(margins only when the budget allows). Everything else in a pathology report (specimen handling,
gross description, clinical history, signatures, addresses) is dropped. Facts are found with
rules on the diagnosis text, written in a fixed canonical phrasing, and packed into the CLIP-token
budget: first every fact in its shortest form, then longer, clearer forms while they still fit.
Reports with none of these facts (other organs, unusual wording) fall back to the most
informative diagnosis clauses, cut at a clause boundary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from histoldm.reports.budget import truncate_to_budget
from histoldm.text.tokenizer import clip_tokenizer

# --- sections -------------------------------------------------------------------------------

# "Name: value" with a short name (at most five words, not a sentence such as "The margins are inked: ...").
_HEADER = re.compile(r"^\s*(?!(?:the|a|an|it|this|there)\b)([A-Za-z][A-Za-z()&'-]+(?:[ /][A-Za-z()&'-]+){0,4})\s*:\s*(.*)$", re.IGNORECASE)
_DROP_SECTIONS = re.compile(
    r"^(gross( description)?|clinical (history|information|data|notes?)|history|specimens?( \(?s\)?)?( received)?"
    r"|specimen\(s\)( received)?|source of specimen|pre-?operative diagnosis|post-?operative diagnosis"
    r"|operative diagnosis|patient|submitting physician|received)$",
    re.IGNORECASE,
)
_BOILERPLATE_LINE = re.compile(
    r"electronically signed|signed out|attest|reviewed the slides|\bM\.?D\.?\b(?!\s*anderson)|\btel\b|phone|fax|"
    r"\bstreet\b|\bavenue\b|\bsuite\b|page \d|\bMRN\b|accession|end of (synthetic )?report|synthetic report|"
    r"controls? (stained|reacted)|dictated|transcribed",
    re.IGNORECASE,
)


# OCR'd reports (TCGA-Reports) often run every section into one line: break before known headers.
_INLINE_HEADER = re.compile(
    r"(?<=\S)[ \t]+(?=(?:final |pathologic(?:al)? )?diagnos[ie]s\s*:|gross description\s*:|clinical (?:history|information)\s*:"
    r"|microscopic description\s*:|specimens? (?:received|submitted)\s*:|comments?\s*:|synoptic\b|addendum\s*:"
    # CAP synoptic keys, so each checklist item becomes its own clause
    r"|histologic (?:type|grade)[^:]{0,20}:|tumou?r size\s*:|lympho?-?\s?vascular invasion\s*:|ductal carcinoma in situ\s*:"
    r"|margins?\s*:|(?:estrogen|progesterone) receptor\s*:|her-?2[^:]{0,12}:)",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z*])")


def diagnostic_text(report: str) -> str:
    """The report without boilerplate sections and sentences (gross, history, signatures, addresses)."""
    kept: list[str] = []
    dropping = False
    for line in _INLINE_HEADER.sub("\n", report).splitlines():
        header = _HEADER.match(line)
        if header:  # a boilerplate section runs until the next header of any other kind
            dropping = bool(_DROP_SECTIONS.match(header.group(1).strip()))
        if dropping:
            continue
        sentences = [x for x in _SENTENCE_END.split(line) if not _BOILERPLATE_LINE.search(x)]
        if sentences:
            kept.append(" ".join(sentences))
    return "\n".join(kept)


def _clauses(text: str) -> list[str]:
    """Sentences/clauses; a full stop inside a number (2.1) does not split."""
    return [c.strip() for c in re.split(r"(?<!\d)\.(?!\d)|;|\n", text) if c.strip()]


_NEGATED = re.compile(r"\b(no|not|negative for|without|absent|free of)\b[^,;]{0,25}$", re.IGNORECASE)


def _negated(text: str, start: int) -> bool:
    return bool(_NEGATED.search(text[max(0, start - 40) : start]))


# --- facts ----------------------------------------------------------------------------------

_TYPES: list[tuple[str, tuple[str, ...]]] = [
    (r"(mixed|with)\s+(invasive\s+)?ductal\s+and\s+lobular|ductal\s+and\s+lobular\s+(features|carcinoma)",
     ("Invasive mixed ductal and lobular carcinoma", "Mixed ductal-lobular carcinoma")),
    (r"(invasive|infiltrating)\s+lobular\s+carcinoma", ("Invasive lobular carcinoma", "ILC")),
    (r"(invasive|infiltrating)\s+(mammary\s+)?ductal\s+carcinoma|invasive\s+carcinoma\s+of\s+no\s+special\s+type",
     ("Invasive ductal carcinoma", "IDC")),
    (r"(mucinous|colloid)\s+carcinoma", ("Mucinous carcinoma",)),
    (r"medullary\s+carcinoma", ("Medullary carcinoma",)),
    (r"metaplastic\s+carcinoma", ("Metaplastic carcinoma",)),
    (r"invasive\s+micropapillary\s+carcinoma", ("Invasive micropapillary carcinoma",)),
    (r"tubular\s+carcinoma", ("Tubular carcinoma",)),
    (r"(invasive|infiltrating)\s+papillary\s+carcinoma", ("Invasive papillary carcinoma",)),
    (r"apocrine\s+carcinoma", ("Apocrine carcinoma",)),
    (r"(invasive|infiltrating)\s+(mammary\s+)?carcinoma", ("Invasive carcinoma",)),
]
_TYPES_RE = [(re.compile(p, re.IGNORECASE), names) for p, names in _TYPES]
_OTHER_TUMOUR = re.compile(
    r"\b((?:[a-z-]+\s+){0,3}(?:adenocarcinoma|carcinoma|sarcoma|melanoma|glioblastoma|glioma|lymphoma|seminoma|"
    r"mesothelioma|blastoma|astrocytoma|oligodendroglioma))\b(?!\s+in\s+situ)",
    re.IGNORECASE,
)
_NOT_A_TYPE = re.compile(r"^(metastatic|for|of|no|with|residual|the|and|or)\b", re.IGNORECASE)


def _histologic_type(text: str) -> tuple[str, ...] | None:
    for pattern, names in _TYPES_RE:
        for m in pattern.finditer(text):
            if not _negated(text, m.start()):
                return names
    for m in _OTHER_TUMOUR.finditer(text):
        words = m.group(1).lower().split()
        while words and _NOT_A_TYPE.match(words[0]):
            words = words[1:]
        if words and not _negated(text, m.start()):
            return (" ".join(words).capitalize(),)
    return None


_ROMAN = {"i": 1, "ii": 2, "iii": 3, "1": 1, "2": 2, "3": 3}
_GRADE = re.compile(r"(?<!nuclear )(?<!nuclear\s)\bgrade\s*[:\-]?\s*(iii|ii|i|[123])\b(?!\s*\+)", re.IGNORECASE)
_NOTTINGHAM = re.compile(r"nottingham|elston|\bsbr\b|bloom|richardson", re.IGNORECASE)
_SCORE = re.compile(r"(?:total|nottingham|combined)\s+score\s*[:\-]?\s*([3-9])\s*(?:/|of)\s*9", re.IGNORECASE)
_DIFFERENTIATED = re.compile(r"\b(well|moderately|poorly)[- ]differentiated\b", re.IGNORECASE)


def _grade(text: str) -> tuple[str, ...] | None:
    for clause in _clauses(text):
        if re.search(r"in situ|\bdcis\b|\blcis\b", clause, re.IGNORECASE):
            continue
        nottingham = bool(_NOTTINGHAM.search(clause))
        if m := _GRADE.search(clause):
            g = _ROMAN[m.group(1).lower()]
            return (f"grade {g}", f"Nottingham grade {g}") if nottingham else (f"grade {g}",)
        if m := _SCORE.search(clause):
            score = int(m.group(1))
            g = 1 if score <= 5 else 2 if score <= 7 else 3
            return (f"grade {g}", f"Nottingham grade {g}")
    if m := _DIFFERENTIATED.search(text):
        return (f"{m.group(1).lower()} differentiated",)
    return None


_DIMENSIONS = re.compile(r"(\d+(?:\.\d+)?)((?:\s*[x×]\s*\d+(?:\.\d+)?)*)\s*(cm|mm)\b", re.IGNORECASE)
_SIZE_CONTEXT = re.compile(r"size|greatest dimension|greatest diameter|measur|largest", re.IGNORECASE)
_NOT_TUMOUR_SIZE = re.compile(r"margin|node|specimen|distance|from the|skin|nipple|biopsy site|cassette", re.IGNORECASE)
_GROSS_MASS = re.compile(r"\b(mass|tumou?r|lesion|nodule|neoplasm)\b", re.IGNORECASE)


def _largest_dimension_cm(clause: str) -> float | None:
    m = _DIMENSIONS.search(clause)
    if not m:
        return None
    values = [float(m.group(1))] + [float(v) for v in re.findall(r"\d+(?:\.\d+)?", m.group(2))]
    largest = max(values)
    return largest / 10 if m.group(3).lower() == "mm" else largest


def _format_cm(cm: float) -> str:
    return f"{round(cm, 1):g} cm"


def _size(diagnostic: str, full: str) -> tuple[str, ...] | None:
    """Tumour size from the diagnosis; else the gross description's mass (never the specimen's)."""
    for clause in _clauses(diagnostic):
        if _SIZE_CONTEXT.search(clause) and not _NOT_TUMOUR_SIZE.search(clause):
            if (cm := _largest_dimension_cm(clause)) and 0 < cm < 40:
                return (_format_cm(cm),)
    for clause in _clauses(diagnostic):  # "invasive ductal carcinoma, grade 3, 2 cm"
        if re.search(r"carcinoma|tumou?r", clause, re.IGNORECASE) and not _NOT_TUMOUR_SIZE.search(clause):
            if (cm := _largest_dimension_cm(clause)) and 0 < cm < 40:
                return (_format_cm(cm),)
    for clause in _clauses(full):
        if _GROSS_MASS.search(clause) and "measur" in clause.lower() and not _NOT_TUMOUR_SIZE.search(clause):
            if (cm := _largest_dimension_cm(clause[_GROSS_MASS.search(clause).start() :])) and 0 < cm < 40:
                return (_format_cm(cm),)
    return None


_LVI = re.compile(r"lympho-?\s?vascular|lymph-vascular|angiolymphatic|lymphatic invasion|vascular invasion|\blvi\b", re.IGNORECASE)
_ABSENT = re.compile(r"not identified|not seen|not present|absent|negative|\bno\b|\bnone\b|not definitively", re.IGNORECASE)
_PRESENT = re.compile(r"present|identified|positive|\bseen\b|extensive|focal", re.IGNORECASE)


def _status_in(clause: str, keyword: re.Match) -> bool | None:
    """True/False/None for present/absent/unknown, read in the keyword's comma-delimited segment
    (so "no necrosis, LVI present" is present, and "LVI: present, no DCIS" too)."""
    start = clause.rfind(",", 0, keyword.start()) + 1
    end = clause.find(",", keyword.end())
    segment = clause[start : end if end >= 0 else len(clause)]
    if _ABSENT.search(segment):
        return False
    if _PRESENT.search(segment):
        return True
    return None


def _lvi(text: str) -> tuple[str, ...] | None:
    for clause in _clauses(text):
        if m := _LVI.search(clause):
            status = _status_in(clause, m)
            if status is True:
                return ("LVI present", "lymphovascular invasion present")
            if status is False:
                return ("no LVI", "no lymphovascular invasion")
    return None


_IN_SITU = re.compile(r"ductal carcinoma in[- ]situ|\bdcis\b|intraductal carcinoma|lobular carcinoma in[- ]situ|\blcis\b", re.IGNORECASE)
_DCIS_PATTERNS = ("micropapillary", "cribriform", "comedo", "solid", "papillary", "clinging", "flat")
_NUCLEAR_GRADE = re.compile(r"nuclear grade\s*[:\-]?\s*(iii|ii|i|[123]|high|intermediate|low)", re.IGNORECASE)
_NUCLEAR_WORD = re.compile(r"\b(high|intermediate|low)[- ]grade\b", re.IGNORECASE)


def _in_situ(text: str) -> tuple[str, ...] | None:
    for clause in _clauses(text):
        m = _IN_SITU.search(clause)
        if not m:
            continue
        name = "LCIS" if "lobular" in m.group(0).lower() or "lcis" in m.group(0).lower() else "DCIS"
        if _status_in(clause, m) is False:
            return (f"no {name}",)
        lowered = clause.lower()
        pattern = next((p for p in _DCIS_PATTERNS if p in lowered), None)
        nuclear = None
        if g := _NUCLEAR_GRADE.search(clause):
            value = g.group(1).lower()
            nuclear = {"1": "low", "i": "low", "2": "intermediate", "ii": "intermediate", "3": "high", "iii": "high"}.get(value, value)
        elif g := _NUCLEAR_WORD.search(clause):
            nuclear = g.group(1).lower()
        variants = [name]
        if pattern:
            variants.append(f"{name}, {pattern}")
        if pattern and nuclear:
            variants.append(f"{name}, {pattern}, {nuclear} nuclear grade")
        return tuple(variants)
    return None


_RECEPTOR_WORDS = {"positive": "+", "pos": "+", "negative": "-", "neg": "-", "+": "+", "-": "-"}
_ER = re.compile(r"(?:o?estrogen\s+receptors?|\bER\b)(?:\s*\((?:ER|IHC)\))?\s*(?:status)?\s*[:\-]?\s*(?:is\s+|are\s+)?(positive|negative|pos|neg|\+|-)", re.IGNORECASE)
_PR = re.compile(r"(?:progesterone\s+receptors?|\bPg?R\b)(?:\s*\((?:PR|PgR|IHC)\))?\s*(?:status)?\s*[:\-]?\s*(?:is\s+|are\s+)?(positive|negative|pos|neg|\+|-)", re.IGNORECASE)
_HER2 = re.compile(r"her[- ]?2(?:\s*[/-]\s*neu)?(?:\s*\((?:IHC|FISH)\))?\s*(?:status)?\s*[:\-]?\s*(?:is\s+)?(positive|negative|equivocal|not amplified|amplified|[0-3]\s*\+|0\b|pos\b|neg\b|\+|-(?!\s*neu))", re.IGNORECASE)


def _her2_sign(value: str) -> str:
    v = value.lower().replace(" ", "")
    if v in ("positive", "amplified", "3+", "pos", "+"):
        return "HER2+"
    if v in ("equivocal", "2+"):
        return "HER2 equivocal"
    return "HER2-"


def _receptors(text: str) -> tuple[str, ...] | None:
    parts = []
    if m := _ER.search(text):
        parts.append("ER" + _RECEPTOR_WORDS[m.group(1).lower()])
    if m := _PR.search(text):
        parts.append("PR" + _RECEPTOR_WORDS[m.group(1).lower()])
    if m := _HER2.search(text):
        parts.append(_her2_sign(m.group(1)))
    return (", ".join(parts),) if parts else None


_MARGIN_NEGATIVE = re.compile(r"negative|free|uninvolved|not involved|clear|no (invasive )?(carcinoma|tumou?r)", re.IGNORECASE)
_MARGIN_POSITIVE = re.compile(r"positive|involved|present at|extends to|transected", re.IGNORECASE)


def _margins(text: str) -> tuple[str, ...] | None:
    for clause in _clauses(text):
        if "margin" not in clause.lower():
            continue
        if _MARGIN_NEGATIVE.search(clause):
            return ("margins negative",)
        if _MARGIN_POSITIVE.search(clause):
            return ("margins positive",)
    return None


# --- packing --------------------------------------------------------------------------------


@dataclass
class Facts:
    """Each fact as its phrasings (any order); None when the report does not state it."""

    histologic_type: tuple[str, ...] | None = None
    grade: tuple[str, ...] | None = None
    size: tuple[str, ...] | None = None
    lvi: tuple[str, ...] | None = None
    in_situ: tuple[str, ...] | None = None
    receptors: tuple[str, ...] | None = None
    margins: tuple[str, ...] | None = None

    def core(self) -> list[tuple[str, ...] | None]:
        """In priority order: what a patch shows most directly comes first."""
        return [self.histologic_type, self.grade, self.size, self.lvi, self.in_situ, self.receptors]


def extract_facts(report: str) -> Facts:
    diagnostic = diagnostic_text(report)
    return Facts(
        histologic_type=_histologic_type(diagnostic),
        grade=_grade(diagnostic),
        size=_size(diagnostic, report),
        lvi=_lvi(diagnostic),
        in_situ=_in_situ(diagnostic),
        receptors=_receptors(diagnostic),
        margins=_margins(diagnostic),
    )


def _render(chosen: list[str | None]) -> str:
    """'Type, grade, size; LVI; DCIS; receptors; margins.' (first three joined by commas)."""
    head = ", ".join(c for c in chosen[:3] if c)
    tail = [c for c in chosen[3:] if c]
    text = "; ".join(([head] if head else []) + tail)
    return (text[0].upper() + text[1:] + ".") if text else ""


@lru_cache(maxsize=1 << 16)
def _phrase_tokens(phrase: str) -> int:
    """count_tokens through the Rust tokenizer directly, cached: packing tries ~10 candidates a
    report and many repeat across reports, so this is most of the stage's speed."""
    return len(clip_tokenizer().backend_tokenizer.encode(phrase, add_special_tokens=False).ids)


def pack_facts(facts: Facts, budget: int) -> str:
    """Fit as many facts as possible (shortest forms), then lengthen them in priority order, then margins."""
    slots = [tuple(sorted(s, key=_phrase_tokens)) if s else None for s in facts.core() + [facts.margins]]
    level: list[int | None] = [None] * len(slots)

    def text_at(levels: list[int | None]) -> str:
        return _render([slots[i][lv] if lv is not None else None for i, lv in enumerate(levels)])  # type: ignore[index]

    def fits(levels: list[int | None]) -> bool:
        return _phrase_tokens(text_at(levels)) <= budget

    core = range(len(slots) - 1)
    for i in core:
        if slots[i]:
            trial = level.copy()
            trial[i] = 0
            if fits(trial):
                level = trial
    for i in core:
        if level[i] is not None:
            for lv in range(len(slots[i]) - 1, level[i], -1):  # type: ignore[arg-type]
                trial = level.copy()
                trial[i] = lv
                if fits(trial):
                    level = trial
                    break
    m = len(slots) - 1
    if slots[m]:
        trial = level.copy()
        trial[m] = 0
        if fits(trial):
            level = trial
    return text_at(level)


_INFORMATIVE = re.compile(
    r"carcinoma|tumou?r|grade|differentiated|invasion|necrosis|margin|in situ|size|cm\b|positive|negative|"
    r"metasta|lymph|sarcoma|melanoma|lymphoma|glioma|adenoma|neoplasm|mitos|pleomorph",
    re.IGNORECASE,
)


def _sentence_case(clause: str) -> str:
    """ALL-CAPS report lines read as shouting and tokenise no differently, so lower them."""
    clause = " ".join(clause.split())
    return (clause.lower() if clause.isupper() else clause).lstrip("-–•* ").strip()


def fallback_summary(report: str, budget: int) -> str:
    """For reports without recognised facts: informative diagnosis clauses in order, cut to fit."""
    clauses = [_sentence_case(c) for c in _clauses(diagnostic_text(report)) if _INFORMATIVE.search(c)]
    clauses = [c for c in clauses if c]
    if not clauses:
        clauses = [_sentence_case(c) for c in _clauses(diagnostic_text(report) or report)][:5]
    text = "; ".join(clauses[:12])
    text = (text[:1].upper() + text[1:]) if text else ""
    return truncate_to_budget(text, budget)


def extractive_summary(report: str, budget: int) -> tuple[str, bool]:
    """(summary, used_fallback): the facts packed into `budget` CLIP tokens, or clauses when none are found."""
    facts = extract_facts(report)
    if facts.histologic_type or sum(f is not None for f in facts.core()) >= 2:
        summary = pack_facts(facts, budget)
        if summary:
            return summary, False
    return fallback_summary(report, budget), True
