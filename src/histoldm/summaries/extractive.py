"""The offline, deterministic summariser: the facts a patch can show, in order of relevance.

A diffusion model can only learn from words that describe what a patch looks like, so facts are
read from the diagnosis text with rules and written in a fixed, terse phrasing, in this order of
relevance to a 10x patch (docs/summaries.md says why): histologic type, grade, tumour-infiltrating
lymphocytes, necrosis, mitotic rate, nuclear pleomorphism, growth pattern; then the in-situ
component, lymphovascular invasion, receptors; then tumour size, lymph nodes, margins; then the
marginal facts (calcifications, Ki-67, stage, laterality and procedure). Administrative text
(specimen handling, gross description, history, signatures, disclaimers) never enters.

Packing keeps the longest prefix of that order whose shortest phrasings fit the CLIP-token budget,
then lengthens phrasings in the same order while they fit, so the facts of a shorter budget are
always a prefix of a longer budget's. A finding's status (present, absent, possible) comes from
`findings`, which reads the whole clause, so "DCIS, absent" stays "no DCIS" at every budget.
Reports with none of these facts (other organs, unusual wording) fall back to whole diagnosis
clauses that fit, never cut inside a clause in a way that reverses it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from histoldm.summaries.budget import truncate_to_budget
from histoldm.summaries.case_facts import Fact, joined_case
from histoldm.summaries.consistency import contradictions
from histoldm.summaries.findings import FINDINGS, clauses, lower, read_status, status_at
from histoldm.summaries.report_document import repair_ocr, split_run_together
from histoldm.text.tokenizer import clip_tokenizer

# --- sections -------------------------------------------------------------------------------

# "Name: value" with a short name (at most five words, not a sentence such as "The margins are inked: ...").
_HEADER = re.compile(
    r"^\s*(?!(?:the|a|an|it|this|there)\b)([A-Za-z][A-Za-z()&'-]+(?:[ /][A-Za-z()&'-]+){0,4})\s*:\s*(.*)$",
    re.IGNORECASE,
)
_DROP_SECTIONS = re.compile(
    r"^(gross( description)?|clinical (history|information|data|notes?)|history|specimens?( \(?s\)?)?( received)?"
    r"|specimen\(s\)( received)?|source of specimen|pre-?operative diagnosis|post-?operative diagnosis"
    r"|operative diagnosis|patient|submitting physician|received|intra-?operative consultation"
    r"|frozen section( diagnosis)?)$",
    re.IGNORECASE,
)
_BOILERPLATE_LINE = re.compile(  # run on lowered text
    r"electronically signed|signed out|attest|reviewed the slides|\bm\.?d\.?\b(?!\s*anderson)|\btel\b|phone|fax|"
    r"\bstreet\b|\bavenue\b|\bsuite\b|page \d|\bmrn\b|accession|end of (synthetic )?report|synthetic report|"
    r"controls? (stained|reacted)|dictated|transcribed|food and drug administration|\bfda\b|\bclia\b|confidential|"
    r"privileged|explanatory notes?|guideline|tumor board|communicated to"
)
# Every alternative above contains one of these (lower case): a cheap test that skips the regex on most sentences.
_BOILERPLATE_HINTS = (
    "signed",
    "attest",
    "reviewed the slides",
    "md",
    "m.d",
    "tel",
    "phone",
    "fax",
    "street",
    "avenue",
    "suite",
    "page ",
    "mrn",
    "accession",
    "end of",
    "synthetic report",
    "control",
    "dictated",
    "transcribed",
    "food and drug",
    "fda",
    "clia",
    "confidential",
    "privileged",
    "explanatory note",
    "guideline",
    "tumor board",
    "communicated to",
)


_BOILERPLATE_HINT = re.compile("|".join(map(re.escape, _BOILERPLATE_HINTS)))


def _boilerplate(sentence: str) -> bool:
    lowered = lower(sentence)
    return bool(_BOILERPLATE_HINT.search(lowered)) and bool(_BOILERPLATE_LINE.search(lowered))


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z*])")
_DOT_LEADER = re.compile(r"[ \t]*\.{3,}[ \t]*")  # "LYMPH-VASCULAR INVASION ....... Present": dots are not full stops
_VALUE_ON_NEXT_LINE = re.compile(r"^([ \t]*[A-Za-z][^:\n]{0,60}):[ \t]*\n[ \t]*(?=\S)", re.MULTILINE)


@lru_cache(maxsize=64)
def diagnostic_text(report: str) -> str:
    """The report without boilerplate sections and sentences (gross, history, signatures, addresses).
    Cached: the summariser and the consistency check both read it."""
    kept: list[str] = []
    dropping = False
    if "..." in report:
        report = _DOT_LEADER.sub(": ", report)
    report = _VALUE_ON_NEXT_LINE.sub(r"\1: ", report)  # "Margins:\n  negative" -> "Margins: negative"
    for line in split_run_together(report).splitlines():  # run-together reports split as the reader splits them
        header = _HEADER.match(line)
        if header:  # a boilerplate section runs until the next header of any other kind
            dropping = bool(_DROP_SECTIONS.match(header.group(1).strip()))
        if dropping:
            continue
        sentences = [x for x in _SENTENCE_END.split(line) if not _boilerplate(x)]
        if sentences:
            kept.append(" ".join(sentences))
    return "\n".join(kept)


# --- facts, in order of relevance -------------------------------------------------------------

Phrasings = tuple[str, ...]  # one fact's phrasings; packing sorts them by token count

_TYPES: list[tuple[str, tuple[str, ...]]] = [
    (
        r"(mixed|with)\s+(invasive\s+)?ductal\s+and\s+lobular|ductal\s+and\s+lobular\s+(features|carcinoma)",
        ("Invasive mixed ductal and lobular carcinoma", "Mixed ductal-lobular carcinoma"),
    ),
    (r"(invasive|infiltrating)\s+lobular\s+carcinoma", ("Invasive lobular carcinoma", "ILC")),
    (
        r"(invasive|infiltrating)\s+(mammary\s+)?ductal\s+carcinoma|invasive\s+carcinoma\s+of\s+no\s+special\s+type",
        ("Invasive ductal carcinoma", "IDC"),
    ),
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
_OTHER_TUMOR = re.compile(
    r"\b((?:[a-z-]+\s+){0,3}(?:adenocarcinoma|carcinoma|sarcoma|melanoma|glioblastoma|glioma|lymphoma|seminoma|"
    r"mesothelioma|blastoma|astrocytoma|oligodendroglioma))\b(?!\s+in\s+situ)",
    re.IGNORECASE,
)
_NOT_A_TYPE = re.compile(
    r"^(metastatic|for|of|no|with|without|residual|the|and|or|possible|suspicious|negative|positive|evidence)\b",
    re.IGNORECASE,
)


def _stated(clause: str, m: re.Match) -> str | None:
    """The status of a match, None when the clause denies it (so the reader moves on)."""
    status = status_at(clause, m.span())
    return None if status in ("absent", "unstated") else status or "present"


def _possibly(names: Phrasings, status: str) -> Phrasings:
    """ "suspicious for X" is written "possible X", never "X"."""
    return (
        names
        if status == "present"
        else tuple(f"Possible {n[0].lower() + n[1:] if n[1:2].islower() else n}" for n in names)
    )


def _histologic_type(text: str) -> Phrasings | None:
    parts = clauses(text)
    for pattern, names in _TYPES_RE:
        if not pattern.search(text):
            continue
        for clause in parts:
            for m in pattern.finditer(clause):
                if status := _stated(clause, m):
                    return _possibly(names, status)
    for clause in parts:
        for m in _OTHER_TUMOR.finditer(clause):
            words = m.group(1).lower().split()
            while words and _NOT_A_TYPE.match(words[0]):
                words = words[1:]
            noun = re.search(r"\S+$", m.group(1))  # the status of "carcinoma", not of "negative for ... carcinoma"
            if words and (
                status := _stated(clause, re.compile(re.escape(noun[0])).search(clause, m.start() + noun.start()))
            ):
                return _possibly((" ".join(words).capitalize(),), status)
    if read_status(text, "invasive", bare_means_present=True) == "absent":
        return ("No invasive carcinoma",)
    return None


_ROMAN = {"i": 1, "ii": 2, "iii": 3, "1": 1, "2": 2, "3": 3}
_GRADE = re.compile(r"(?<!nuclear )(?<!nuclear\s)\bgrade\s*[:\-]?\s*(iii|ii|i|[123])\b(?!\s*\+)", re.IGNORECASE)
_NOTTINGHAM = re.compile(r"nottingham|elston|\bsbr\b|bloom|richardson", re.IGNORECASE)
_SCORE = re.compile(r"(?:total|nottingham|combined)\s+score\s*[:\-]?\s*([3-9])\s*(?:/|of)\s*9", re.IGNORECASE)
_DIFFERENTIATED = re.compile(r"\b(well|moderately|poorly)[- ]differentiated\b", re.IGNORECASE)
_COMPONENTS = re.compile(
    r"tubul\w*(?:\s+formation)?\s*[:\-]?\s*([123])\b.{0,12}?(?:nuclear\s+)?pleomorphism\s*[:\-]?\s*([123])\b"
    r".{0,12}?mito\w*(?:\s+count)?\s*[:\-]?\s*([123])\b",
    re.IGNORECASE,
)


def _grade(text: str) -> Phrasings | None:
    for clause in clauses(text):
        lowered = clause.lower()
        if ("grade" not in lowered and "score" not in lowered) or re.search(r"in situ|\bdcis\b|\blcis\b", lowered):
            continue
        nottingham = bool(_NOTTINGHAM.search(clause))
        g = None
        if m := _GRADE.search(clause):
            g = _ROMAN[m.group(1).lower()]
        elif m := _SCORE.search(clause):
            score, nottingham = int(m.group(1)), True
            g = 1 if score <= 5 else 2 if score <= 7 else 3
        if g is None:
            continue
        names = [f"grade {g}"] + ([f"Nottingham grade {g}"] if nottingham else [])
        if c := _COMPONENTS.search(clause):
            names.append(
                f"{'Nottingham ' if nottingham else ''}grade {g} (tubules {c[1]}, nuclei {c[2]}, mitoses {c[3]})"
            )
        return tuple(names)
    if m := _DIFFERENTIATED.search(text):
        return (f"{m.group(1).lower()} differentiated",)
    return None


_TILS = re.compile(
    r"tumou?r[- ]infiltrating\s+lymphocytes|\btils?\b|lymphocytic\s+(?:infiltrate|infiltration|response)", re.IGNORECASE
)
_TIL_LEVELS = [
    ("high", r"brisk|marked|prominent|dense|extensive|high|abundant|heavy"),
    ("moderate", r"moderate|intermediate"),
    ("low", r"sparse|mild|minimal|scant|low|few|focal|weak|non-?brisk"),
]
_PERCENT = re.compile(r"(\d{1,3})\s*%")


def _tils(text: str) -> Phrasings | None:
    if not _TILS.search(text):
        return None
    for clause in clauses(text):
        if not (m := _TILS.search(clause)):
            continue
        if status_at(clause, m.span()) == "absent":
            return ("no TILs", "no tumour-infiltrating lymphocytes")
        level = next(
            (name for name, words in _TIL_LEVELS if re.search(rf"\b(?:{words})\b", clause, re.IGNORECASE)), None
        )
        if level is None:
            continue
        pct = _PERCENT.search(clause[m.start() :])
        names = [f"{level} TILs"]
        if pct:
            names += [f"{level} TILs ({pct[1]}%)", f"{level} tumour-infiltrating lymphocytes ({pct[1]}% of stroma)"]
        return tuple(names)
    return None


_MITOTIC_SCORE = re.compile(
    r"mito(?:ses|tic(?:\s+(?:count|score|activity|rate))?)\s*(?:score\s*)?[:\-]?\s*([123])\b(?!\s*(?:mitos|per|/))",
    re.IGNORECASE,
)
_MITOTIC_WORD = re.compile(
    r"mitotic\s+(?:activity|rate|count)\s+(?:is\s+)?(low|intermediate|moderate|high)|"
    r"(low|intermediate|moderate|high)\s+mitotic\s+(?:activity|rate|count)",
    re.IGNORECASE,
)
_MITOSES_PER = re.compile(r"(\d{1,3})\s+mitos[ie]s\s*(?:per|/)\s*10\s*(?:high[- ]power\s+fields|hpfs?)", re.IGNORECASE)
_SCORE_WORD = {"1": "low", "2": "intermediate", "3": "high", "moderate": "intermediate"}


def _mitoses(text: str) -> Phrasings | None:
    word = None
    if m := _MITOTIC_WORD.search(text):
        word = (m[1] or m[2]).lower()
    elif m := _MITOTIC_SCORE.search(text):
        word = m[1]
    if word is None:
        return None
    word = _SCORE_WORD.get(word, word)
    names = [f"{word} mitotic rate"]
    if per := _MITOSES_PER.search(text):
        names.append(f"{word} mitotic rate ({per[1]} per 10 HPF)")
    return tuple(names)


_PLEO_WORD = re.compile(
    r"\b(mild|slight|moderate|marked|severe|prominent)\s+(?:nuclear\s+)?pleomorphism", re.IGNORECASE
)
_PLEO_SCORE = re.compile(r"(?:nuclear\s+)?pleomorphism\s*(?:score\s*)?[:\-]?\s*([123])\b", re.IGNORECASE)
_PLEO_NAMES = {"1": "mild", "2": "moderate", "3": "marked", "slight": "mild", "severe": "marked", "prominent": "marked"}


def _pleomorphism(text: str) -> Phrasings | None:
    m = _PLEO_WORD.search(text) or _PLEO_SCORE.search(text)
    if not m:
        return None
    word = _PLEO_NAMES.get(m[1].lower(), m[1].lower())
    return (f"{word} pleomorphism", f"{word} nuclear pleomorphism")


_GROWTH = re.compile(
    r"(?:growth\s+pattern\s*[:\-.]*\s*|(?:growing|arranged|infiltrating)\s+(?:in|as)\s+)"
    r"((?:[a-z-]+(?:,\s*|\s+and\s+|\s+)){0,6}(?:nests|cords|glands|sheets|files|trabeculae|tubules|clusters"
    r"|papillae|mucin))\b",
    re.IGNORECASE,
)
_TUBULES = re.compile(r"tubule\s+formation\s+(?:is\s+)?(prominent|moderate|minimal|scant|absent)", re.IGNORECASE)


def _growth(text: str) -> Phrasings | None:
    m = _GROWTH.search(text)
    tubules = _TUBULES.search(text)
    if not m:
        return (f"{tubules[1].lower()} tubule formation",) if tubules else None
    pattern = " ".join(m[1].lower().split())
    names = [f"growth in {pattern}"]
    if tubules:
        names.append(f"growth in {pattern}, {tubules[1].lower()} tubule formation")
    return tuple(names)


_IN_SITU = re.compile(rf"\b(?:{FINDINGS['dcis'].pattern}|{FINDINGS['lcis'].pattern})", re.IGNORECASE)
_DCIS_PATTERNS = ("micropapillary", "cribriform", "comedo", "solid", "papillary", "clinging", "flat")
_NUCLEAR_GRADE = re.compile(r"nuclear grade\s*[:\-]?\s*(iii|ii|i|[123]|high|intermediate|low)", re.IGNORECASE)
_NUCLEAR_WORD = re.compile(r"\b(high|intermediate|low)[- ]grade\b", re.IGNORECASE)
_QUALIFIED_PERCENT = re.compile(r"[<>≤≥]?\s*\d{1,3}\s*%")  # "<5%" stays "<5%"
_DESCRIBED = re.compile(r"type|pattern|nuclear grade|[- ]grade\b|%|comprising|extensive", re.IGNORECASE)


def _in_situ(text: str) -> Phrasings | None:
    if not _IN_SITU.search(text):
        return None
    for clause in clauses(text):
        m = _IN_SITU.search(clause)
        if not m:
            continue
        name = "LCIS" if "lobular" in m.group(0).lower() or "lcis" in m.group(0).lower() else "DCIS"
        status = status_at(clause, m.span())
        if status == "absent":
            return (f"no {name}",)
        if status == "possible":
            return (f"possible {name}",)
        if status is None and not _DESCRIBED.search(clause):
            continue  # a bare mention (a heading, a question) states nothing
        lowered = clause.lower()
        pattern = next((p for p in _DCIS_PATTERNS if p in lowered), None)
        nuclear = None
        if g := _NUCLEAR_GRADE.search(clause):
            value = g.group(1).lower()
            nuclear = {
                "1": "low",
                "i": "low",
                "2": "intermediate",
                "ii": "intermediate",
                "3": "high",
                "iii": "high",
            }.get(value, value)
        elif g := _NUCLEAR_WORD.search(clause):
            nuclear = g.group(1).lower()
        variants = [name]
        if pattern:
            variants.append(f"{name}, {pattern}")
        if pattern and nuclear:
            variants.append(f"{name}, {pattern}, {nuclear} nuclear grade")
            if pct := _QUALIFIED_PERCENT.search(clause):
                variants.append(f"{name}, {pattern}, {nuclear} nuclear grade, {''.join(pct[0].split())} of tumour")
        return tuple(variants)
    return None


_RECEPTOR_WORDS = {"positive": "+", "pos": "+", "negative": "-", "neg": "-", "+": "+", "-": "-"}
_PCT_AFTER = r"(?:[\s(]{0,16}(\d{1,3})\s*%)?"
_ER = re.compile(
    r"(?:o?estrogen\s+receptors?|\bER\b)(?:\s*\((?:ER|IHC)\))?\s*(?:status)?\s*[:\-]?\s*(?:is\s+|are\s+)?(positive|negative|pos|neg|\+|-)"
    + _PCT_AFTER,
    re.IGNORECASE,
)
_PR = re.compile(
    r"(?:progesterone\s+receptors?|\bPg?R\b)(?:\s*\((?:PR|PgR|IHC)\))?\s*(?:status)?\s*[:\-]?\s*(?:is\s+|are\s+)?(positive|negative|pos|neg|\+|-)"
    + _PCT_AFTER,
    re.IGNORECASE,
)
_HER2 = re.compile(
    r"her[- ]?2(?:\s*[/-]\s*neu)?(?:\s*\((?:IHC|FISH)\))?\s*(?:status)?\s*[:\-]?\s*(?:is\s+)?"
    r"(positive|negative|equivocal|not amplified|amplified|[0-3]\s*\+|0\b|pos\b|neg\b|\+|-(?!\s*neu))"
    r"(?:[\s(]{0,16}(?:score\s+)?([0-3]\+?)(?=[)\s.,;]|$))?",
    re.IGNORECASE,
)


def _her2_sign(value: str) -> str:
    v = value.lower().replace(" ", "")
    if v in ("positive", "amplified", "3+", "pos", "+"):
        return "HER2+"
    if v in ("equivocal", "2+"):
        return "HER2 equivocal"
    return "HER2-"


_RECEPTOR_NAME = r"(?:o?estrogen\s+receptors?|progesterone\s+receptors?|\bER\b|\bPg?R\b|her[- ]?2(?:\s*/\s*neu)?)"
_STAINING_FOR = re.compile(
    rf"\b(positive|negative)\s+for\s+({_RECEPTOR_NAME}(?:\s*(?:,|and|or)\s*{_RECEPTOR_NAME})*)", re.IGNORECASE
)


def _receptor_key(name: str) -> str:
    name = name.lower()
    return "ER" if name.startswith(("e", "o")) else "PR" if name.startswith("p") else "HER2"


@lru_cache(maxsize=64)
def receptor_signs(text: str) -> dict[str, str]:
    """{"ER": "ER+", "PR": "PR-", "HER2": "HER2-"} for each receptor the text states, "ER negative"
    or "negative for estrogen and progesterone receptors" alike (cached; do not mutate)."""
    signs = {}
    for m in _STAINING_FOR.finditer(text):  # "tumour cells are negative for ER and PR, positive for HER2"
        for name in re.findall(_RECEPTOR_NAME, m.group(2), re.IGNORECASE):
            key = _receptor_key(name)
            signs.setdefault(key, key + ("+" if m.group(1).lower() == "positive" else "-"))
    if m := _ER.search(text):
        signs["ER"] = "ER" + _RECEPTOR_WORDS[m.group(1).lower()]
    if m := _PR.search(text):
        signs["PR"] = "PR" + _RECEPTOR_WORDS[m.group(1).lower()]
    if m := _HER2.search(text):
        signs["HER2"] = _her2_sign(m.group(1))
    return dict(sorted(signs.items(), key=lambda kv: ("ER", "PR", "HER2").index(kv[0])))


def _receptors(text: str) -> Phrasings | None:
    signs = receptor_signs(text)
    if not signs:
        return None
    detailed = []
    for key, pattern in (("ER", _ER), ("PR", _PR), ("HER2", _HER2)):
        if key in signs:
            m = pattern.search(text)
            extra = m.group(2) if m and m.group(2) else None
            detailed.append(f"{signs[key]} ({extra}{'%' if key != 'HER2' else ''})" if extra else signs[key])
    plain = ", ".join(signs.values())
    return (plain,) if detailed == list(signs.values()) else (plain, ", ".join(detailed))


def _format_cm(cm: float) -> str:
    return f"{round(cm, 1):g} cm"


_MARGIN_NEGATIVE = re.compile(
    r"negative|free|uninvolved|not involved|does not involve|clear|no (invasive )?(carcinoma|tumou?r)", re.IGNORECASE
)
_MARGIN_POSITIVE = re.compile(r"positive|involved|present at|extends to|transected", re.IGNORECASE)


def margin_status(text: str) -> str | None:
    """ "negative" or "positive" from the first clause about margins."""
    for clause in clauses(text):
        if "margin" not in clause.lower():
            continue
        if _MARGIN_NEGATIVE.search(clause):
            return "negative"
        if _MARGIN_POSITIVE.search(clause):
            return "positive"
    return None


_KI67 = re.compile(r"ki-?67[^\d\n]{0,30}(\d{1,3})\s*%", re.IGNORECASE)
_STAGE = re.compile(
    r"\b(p?T(?:is|[0-4][a-d]?)\s*(?:\(\w+\)\s*)?p?N(?:[0-3][a-c]?|x)(?:\s*\([^)]{1,12}\))?(?:\s*p?M[01x])?)",
    re.IGNORECASE,
)


def _ki67(text: str) -> Phrasings | None:
    return (f"Ki-67 {m[1]}%",) if (m := _KI67.search(text)) else None


def _stage(text: str) -> Phrasings | None:
    return (" ".join(m[1].split()),) if (m := _STAGE.search(text)) else None


@dataclass
class Facts:
    """Each fact as its phrasings, in order of relevance; None when the report does not state it."""

    histologic_type: Phrasings | None = None
    grade: Phrasings | None = None
    tils: Phrasings | None = None
    necrosis: Phrasings | None = None
    mitoses: Phrasings | None = None
    pleomorphism: Phrasings | None = None
    growth: Phrasings | None = None
    in_situ: Phrasings | None = None
    lcis: Phrasings | None = None
    lvi: Phrasings | None = None
    receptors: Phrasings | None = None
    size: Phrasings | None = None
    nodes: Phrasings | None = None
    margins: Phrasings | None = None
    calcifications: Phrasings | None = None
    ki67: Phrasings | None = None
    stage: Phrasings | None = None
    site: Phrasings | None = None

    def ordered(self) -> list[tuple[str, Phrasings]]:
        """(name, phrasings) of the stated facts, most relevant to a patch first (the field order)."""
        return [(name, value) for name, value in vars(self).items() if value]


RELEVANCE_ORDER = tuple(Facts.__dataclass_fields__)

_TYPE_NAMES = {
    "invasive ductal carcinoma": ("Invasive ductal carcinoma", "IDC"),
    "invasive lobular carcinoma": ("Invasive lobular carcinoma", "ILC"),
    "invasive mixed ductal and lobular carcinoma": (
        "Invasive mixed ductal and lobular carcinoma",
        "Mixed ductal-lobular carcinoma",
    ),
}
_STATUS_NAMES = {"present": "{0}", "absent": "no {0}", "possible": "possible {0}"}


def _type_from(fact: Fact | None, diagnostic: str) -> Phrasings | None:
    if fact is None:
        return _histologic_type(diagnostic)  # other organs: the generic tumour reader
    if fact.status == "absent" or fact.detail == "no invasive carcinoma":
        return ("No invasive carcinoma",)
    names = _TYPE_NAMES.get(fact.value, (fact.value[0].upper() + fact.value[1:],))
    return _possibly(names, fact.status)


def _status_names(fact: Fact | None, short: str, long: str, present: str = "{0}") -> Phrasings | None:
    if fact is None:
        return None
    pattern = present if fact.status == "present" else _STATUS_NAMES[fact.status]
    return tuple(dict.fromkeys(pattern.format(n) for n in (short, long)))


def _in_situ_from(fact: Fact | None, diagnostic: str) -> Phrasings | None:
    if fact is None or fact.status != "present":
        return _status_names(fact, "DCIS", "ductal carcinoma in situ")
    described = _in_situ(diagnostic) or ()
    variants = [v for v in described if v.startswith("DCIS")] or ["DCIS"]
    if fact.detail and "%" in fact.detail and not any("%" in v for v in variants):
        variants.append(f"{variants[-1]}, {fact.detail.split(', ')[-1]} of tumour")
    return tuple(variants)


def _receptor_phrase(fact: Fact, name: str, detailed: bool) -> str:
    sign = {"positive": "+", "negative": "-"}.get(fact.value)
    plain = f"{name}{sign}" if sign else f"{name} {fact.value}"
    if not detailed or not fact.detail:
        return plain
    detail = fact.detail.replace(";", ",")
    if name == "HER2":
        return f"{plain} ({detail})" if detail != "triple negative" else plain
    if re.match(r"(?:weakly|weak|low|strongly|strong|moderately|moderate|focally|diffusely)\b", detail, re.IGNORECASE):
        return f"{name} {' '.join(detail.lower().split())}"
    pct = _QUALIFIED_PERCENT.search(detail)
    return f"{plain} ({''.join(pct[0].split())})" if pct else plain


def _receptors_from(facts: dict[str, Fact], diagnostic: str) -> Phrasings | None:
    stated = [(facts[k], n) for k, n in (("er", "ER"), ("pr", "PR"), ("her2", "HER2")) if k in facts]
    if not stated:
        return _receptors(diagnostic)
    plain = ", ".join(_receptor_phrase(f, n, False) for f, n in stated)
    detailed = ", ".join(_receptor_phrase(f, n, True) for f, n in stated)
    return (plain,) if detailed == plain else (plain, detailed)


def _nodes_from(fact: Fact | None) -> Phrasings | None:
    if fact is None:
        return None
    k, n = fact.value.split("/")
    names = [f"nodes {k}/{n}", f"{k}/{n} lymph nodes positive", f"{k} of {n} lymph nodes positive"]
    if fact.detail:
        names.append(f"{k}/{n} lymph nodes positive ({fact.detail})")
    return tuple(names)


def _tils_from(fact: Fact | None, diagnostic: str) -> Phrasings | None:
    described = _tils(diagnostic)
    if fact is None:
        return described
    if described and not described[0].startswith("no "):
        level = described[0].split()[0]
        return (
            f"{level} TILs",
            f"{level} TILs ({fact.value})",
            f"{level} tumour-infiltrating lymphocytes ({fact.value} of stroma)",
        )
    return (f"TILs {fact.value}", f"tumour-infiltrating lymphocytes {fact.value}")


def _margins_from(fact: Fact | None) -> Phrasings | None:
    if fact is None:
        return None
    names = [f"margins {fact.value}"]
    if fact.detail:
        names.append(f"margins {fact.value}, {fact.detail}")
    return tuple(names)


def _stage_from(facts: dict[str, Fact], diagnostic: str) -> Phrasings | None:
    stage = " ".join(facts[k].value for k in ("pt", "pn") if k in facts)
    return (stage,) if stage else _stage(diagnostic)


def _site_from(facts: dict[str, Fact]) -> Phrasings | None:
    if "laterality" not in facts:
        return None
    where = f"{facts['laterality'].value} breast"
    return (where, f"{where}, {facts['procedure'].value}") if "procedure" in facts else (where,)


def _size_names(cm: float) -> Phrasings:
    """ "2.1 cm"; a whole number also in millimetres ("1 cm (10 mm)"), so no reader takes it for a rounded value."""
    long = f"tumour size {_format_cm(cm)}" + (f" ({round(cm * 10)} mm)" if cm == round(cm) else "")
    return (_format_cm(cm), long)


def extract_facts(report: str) -> Facts:
    """Phrasings of the case's facts (`case_facts`: sections, parts, addenda and history resolved);
    the morphology the case facts do not cover (mitoses, pleomorphism, growth, TIL level, Ki-67)
    from the diagnostic text."""
    facts, _ = joined_case(report)
    diagnostic = diagnostic_text(repair_ocr(report))
    grade = facts.get("grade")
    grade_names = None
    if grade:
        described = _grade(diagnostic)  # with the component scores, where the diagnosis gives the same grade
        if described and described[0] == f"grade {grade.value}":
            grade_names = described
        else:
            grade_names = (f"grade {grade.value}",) + (
                (f"Nottingham grade {grade.value}",) if _NOTTINGHAM.search(diagnostic) else ()
            )
    size = facts.get("size")
    return Facts(
        histologic_type=_type_from(facts.get("histologic_type"), diagnostic),
        grade=grade_names if grade else None if facts.get("histologic_type") else _grade(diagnostic),
        tils=_tils_from(facts.get("tils"), diagnostic),
        necrosis=_status_names(facts.get("necrosis"), "necrosis", "tumour necrosis", "{0} present"),
        mitoses=_mitoses(diagnostic),
        pleomorphism=_pleomorphism(diagnostic),
        growth=_growth(diagnostic),
        in_situ=_in_situ_from(facts.get("dcis"), diagnostic),
        lcis=_status_names(facts.get("lcis"), "LCIS", "lobular carcinoma in situ"),
        lvi=_status_names(facts.get("lvi"), "LVI", "lymphovascular invasion", "{0} present"),
        receptors=_receptors_from(facts, diagnostic),
        size=_size_names(float(size.value.split()[0])) if size else None,
        nodes=_nodes_from(facts.get("nodes")),
        margins=_margins_from(facts.get("margins")),
        calcifications=_status_names(facts.get("calcifications"), "calcifications", "calcifications", "{0} present"),
        ki67=_ki67(diagnostic),
        stage=_stage_from(facts, diagnostic),
        site=_site_from(facts),
    )


# --- packing --------------------------------------------------------------------------------


def _render(chosen: list[str]) -> str:
    """'Type, grade; fact; fact.' (the first two joined by a comma when the first is the type)."""
    text = "; ".join(chosen)
    return (text[0].upper() + text[1:] + ".") if text else ""


@lru_cache(maxsize=1)
def _counting_tokenizer():
    """A private copy of CLIP's Rust tokenizer without padding or truncation: the text encoders call the
    shared tokenizer with padding="max_length", which stays set on its backend and would make every
    phrase count as 77 tokens for the rest of the process."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(clip_tokenizer().backend_tokenizer.to_str())
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


@lru_cache(maxsize=1 << 16)
def _phrase_tokens(phrase: str) -> int:
    """count_tokens through the Rust tokenizer directly, cached: packing tries many candidates a
    report and many repeat across reports, so this is most of the stage's speed."""
    return len(_counting_tokenizer().encode(phrase, add_special_tokens=False).ids)


def _join_type_and_grade(names: list[str], phrases: list[str]) -> list[str]:
    if names[:2] == ["histologic_type", "grade"] and len(phrases) >= 2:
        return [f"{phrases[0]}, {phrases[1]}", *phrases[2:]]
    return phrases


@dataclass(frozen=True)
class Summary:
    text: str
    facts: tuple[str, ...]  # names of the facts it states, in relevance order (empty for a fallback)
    used_fallback: bool


def _estimate(phrases: list[str]) -> int:
    """Tokens of the rendered phrases: each phrase's (cached) count plus one per separator and the
    full stop. CLIP's pre-tokenizer splits at spaces, so this is exact except where punctuation
    meets ("%);"), where BPE can only merge, so it is an upper bound; `pack_facts` checks the result."""
    return sum(_phrase_tokens(p) for p in phrases) + len(phrases)


def _pack(names: list[str], slots: list[Phrasings], budget: int, count) -> list[int]:
    def tokens(levels: list[int]) -> int:
        return count(_join_type_and_grade(names, [slots[i][lv] for i, lv in enumerate(levels)]))

    levels: list[int] = []
    for _ in slots:
        if tokens(levels + [0]) > budget:
            break
        levels.append(0)
    for i in range(len(levels)):
        for lv in range(len(slots[i]) - 1, levels[i], -1):
            trial = levels[:i] + [lv] + levels[i + 1 :]
            if tokens(trial) <= budget:
                levels = trial
                break
    return levels


def pack_facts(facts: Facts, budget: int) -> Summary:
    """The longest relevance-order prefix of the facts whose shortest phrasings fit, then longer
    phrasings in relevance order while they fit (so shorter budgets give prefixes of longer ones)."""
    stated = facts.ordered()
    names = [name for name, _ in stated]
    slots = [tuple(sorted(set(p), key=lambda x: (_phrase_tokens(x), x))) for _, p in stated]

    def text_at(levels: list[int]) -> str:
        return _render(_join_type_and_grade(names, [slots[i][lv] for i, lv in enumerate(levels)]))

    levels = _pack(names, slots, budget, _estimate)
    if _phrase_tokens(text_at(levels)) > budget:  # the estimate was short: pack again counting exactly
        levels = _pack(names, slots, budget, lambda phrases: _phrase_tokens(_render(phrases)))
    return Summary(text_at(levels), tuple(names[: len(levels)]), False)


_INFORMATIVE = re.compile(
    r"carcinoma|tumou?r|grade|differentiated|invasion|necrosis|margin|in situ|size|cm\b|positive|negative|"
    r"metasta|lymph|sarcoma|melanoma|lymphoma|glioma|adenoma|neoplasm|mitos|pleomorph",
    re.IGNORECASE,
)


def _sentence_case(clause: str) -> str:
    """ALL-CAPS report lines read as shouting and tokenise no differently, so lower them."""
    clause = " ".join(clause.split())
    return (clause.lower() if clause.isupper() else clause).lstrip("-–•* ").strip()


def safe_truncate(report: str, text: str, budget: int) -> str:
    """`text` cut to the budget at a clause boundary, cut further while the cut states a finding
    the report contradicts ("ductal carcinoma in situ, absent" must not end as "ductal carcinoma in situ")."""
    cut = truncate_to_budget(text, budget)
    while cut and contradictions(report, cut):
        shorter = truncate_to_budget(cut, _phrase_tokens(cut) - 1)
        cut = "" if shorter == cut else shorter
    return cut


def fallback_summary(report: str, budget: int) -> str:
    """For reports without recognised facts: informative diagnosis clauses in order, whole, within budget."""
    clause_list = [_sentence_case(c) for c in clauses(diagnostic_text(report)) if _INFORMATIVE.search(c)]
    clause_list = [c for c in clause_list if c]
    if not clause_list:
        clause_list = [_sentence_case(c) for c in clauses(diagnostic_text(report) or report)][:5]
    text = "; ".join(clause_list[:12])
    text = (text[:1].upper() + text[1:]) if text else ""
    return safe_truncate(report, text, budget)


def summarize(report: str, budget: int) -> Summary:
    """The facts packed into `budget` CLIP tokens, or whole diagnosis clauses when none are found."""
    facts = extract_facts(report)
    if facts.histologic_type or len(facts.ordered()) >= 2:
        summary = pack_facts(facts, budget)
        if summary.text:
            return summary
    return Summary(fallback_summary(report, budget), (), True)


def extractive_summary(report: str, budget: int) -> tuple[str, bool]:
    """(summary, used_fallback); see `summarize`."""
    summary = summarize(report, budget)
    return summary.text, summary.used_fallback
