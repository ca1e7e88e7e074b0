"""The facts of a case, each with its status and the report sentence it comes from.

Facts are read sentence by sentence from the parsed report (`report_document`), never from the report
as one flat text, and then joined by rule (docs/summaries.md, "Which sentence wins"):
- history does not count: clinical-history sections, and sentences that speak of a prior or outside
  specimen ("history of", "prior ... lumpectomy", "(2009)", "outside biopsy"), give `historical`
  facts that never stand for the current specimen;
- higher authority wins: an addendum or amendment over the synoptic and the final diagnosis, those
  over the microscopic and the gross description; an addendum's "previously reported as X, corrected
  to Y" reads as Y;
- parts join: a finding is present in the case if any part states it present (absent only if no part
  does), each part first taking its own most authoritative statement; node parts add up (a synoptic
  total wins); type, grade, size and receptors come from the tumour part;
- HER2 follows ASCO/CAP: an ISH result decides (amplified -> positive), else IHC 3+ positive,
  2+ equivocal, 0/1+ negative.
A summary is read by the same sentence reader (`summary_facts`), where a finding named without a status
word ("IDC; DCIS; ER+") is asserted, so the consistency check compares like with like.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Literal

from histoldm.summaries.findings import clauses, finding_matches, lower, status_at
from histoldm.summaries.report_document import (
    ADDENDUM,
    BODY,
    NEVER_CURRENT,
    SPECIMENS,
    SYNOPTIC,
    Sentence,
    parse_report,
)

Status = Literal["present", "absent", "possible", "historical"]
FACT_KINDS = (
    "histologic_type",
    "grade",
    "size",
    "er",
    "pr",
    "her2",
    "nodes",
    "lvi",
    "dcis",
    "lcis",
    "necrosis",
    "calcifications",
    "margins",
    "tils",
    "laterality",
    "procedure",
    "pt",
    "pn",
)
FINDING_KINDS = ("lvi", "dcis", "lcis", "necrosis", "calcifications")


@dataclass(frozen=True)
class Evidence:
    section: str
    part: str | None
    sentence: str


@dataclass(frozen=True)
class Fact:
    """One fact: `value` in the canonical form of its kind, `detail` the short qualifier kept verbatim
    ("weakly positive (10%)", "pN1mi", "<5%"), `evidence` where the report (or summary) says it."""

    kind: str
    value: str
    status: Status
    evidence: Evidence
    detail: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Reading:
    """What one sentence states about one kind, before the case is joined. Kinds beyond FACT_KINDS:
    her2_ihc ("0".."3+"), her2_ish ("amplified"/"not amplified"/"equivocal"), node_positivity."""

    kind: str
    value: str
    status: str
    detail: str | None
    sentence: Sentence
    explicit: bool = True  # False for "triple negative" standing in for each receptor

    def fact(self, status: str | None = None) -> Fact:
        s = self.sentence
        return Fact(self.kind, self.value, status or self.status, Evidence(s.section, s.part, s.text), self.detail)  # type: ignore[arg-type]


# --- history and corrections -----------------------------------------------------------------

_HISTORY = re.compile(
    r"\bhistory\s+of\b|\bh/o\b|\bpreviously\s+(?:diagnosed|treated|excised|resected)\b|\bstatus\s+post\b(?!\s+(?:neoadjuvant|chemo|preoperative|systemic))"
    r"|\bs/p\b(?!\s+neoadjuvant)|\b(?:prior|previous|remote|earlier)\s+(?!(?:core\s+|needle\s+)*biops|biopsy\s+site|procedure\s+site)"
    r"(?:[\w-]+\s+){0,3}?(?:carcinoma|cancer|lumpectomy|mastectomy|excision|surgery|diagnosis|specimen|resection|tumou?r|dcis|malignancy|breast)"
    r"|\((?:19|20)\d\d\)|\b(?:in|from)\s+(?:19|20)\d\d\b|\boutside\s+(?:core\s+)?(?:biopsy|slides?|institution|hospital|report|consultation)"
    r"|\bpre-?treatment\s+(?:core\s+)?biopsy",
    re.IGNORECASE,
)
_CORRECTION = re.compile(
    r"\b(?:previously|originally|initially|formerly)\b.{0,80}?\b(?:(?:is|are|has\s+been|have\s+been|was|were|should\s+be)\s+)?"
    r"(?:corrected|revised|amended|changed|updated|reclassified)\s+to\b"
    r"|\b(?:is|are|has\s+been|was|were|should\s+be)\s+(?:corrected|revised|amended|changed|updated|reclassified)\s+to\b|\bshould\s+read\b"
    r"|\b(?:corrected|revised|amended|changed|updated|upgraded|downgraded|reclassified)\s+from\b.{0,60}?\bto\b",
    re.IGNORECASE,
)


def _as_corrected(text: str) -> str:
    """ "ER, previously reported as positive (80%), is corrected to NEGATIVE (0%)" -> "ER: NEGATIVE (0%)"."""
    return _CORRECTION.sub(": ", text) if _CORRECTION.search(text) else text


# --- readers, one per kind, on one sentence ------------------------------------------------------

_TYPES = [
    (
        r"(?:mixed|with)\s+(?:invasive\s+)?ductal\s+and\s+lobular"
        r"|ductal\s+and\s+lobular\s+(?:features|carcinoma)|mixed\s+ductal[- ]lobular",
        "invasive mixed ductal and lobular carcinoma",
    ),
    (r"(?:invasive|infiltrating)\s+lobular\s+carcinoma|\bilc\b", "invasive lobular carcinoma"),
    (
        r"(?:invasive|infiltrating)\s+(?:mammary\s+)?ductal\s+carcinoma|invasive\s+(?:breast\s+)?carcinoma\s+of\s+no\s+special\s+type|\bidc\b",
        "invasive ductal carcinoma",
    ),
    (r"(?:mucinous|colloid)\s+carcinoma", "mucinous carcinoma"),
    (r"medullary\s+carcinoma", "medullary carcinoma"),
    (r"metaplastic\s+carcinoma", "metaplastic carcinoma"),
    (r"invasive\s+micropapillary\s+carcinoma", "invasive micropapillary carcinoma"),
    (r"tubular\s+carcinoma", "tubular carcinoma"),
    (r"(?:invasive|infiltrating)\s+papillary\s+carcinoma", "invasive papillary carcinoma"),
    (r"apocrine\s+carcinoma", "apocrine carcinoma"),
    (r"(?:invasive|infiltrating)\s+(?:mammary\s+|breast\s+)?carcinoma", "invasive carcinoma"),
]
_TYPE_RE = re.compile("|".join(f"(?P<t{i}>{p})" for i, (p, _) in enumerate(_TYPES)))  # on lowered text
_DIAGNOSTIC = frozenset({"final_diagnosis", "addendum", "body", "comment", "microscopic", "synoptic"})
_OPENING = re.compile(
    r"^[\s\-•*]*(?:(?:residual|extensive|focal|multifocal|florid|associated|high|intermediate|low|nuclear|grade|with)[\s,-]*){0,4}$"
)
_IN_SITU_NEAR = re.compile(r"in\s+situ|\bdcis\b|\blcis\b")

_GRADE = re.compile(
    r"(?<!nuclear )(?<!nuclear\s\s)\bgrade\s*[:\-]?\s*(iii|ii|i|[123])\b(?!\s*\+)(?:\s*(?:/|of|out\s+of)\s*3)?",
    re.IGNORECASE,
)
_SCORE = re.compile(
    r"(?:total|nottingham|combined|overall|sbr)\s+(?:histologic\s+)?score\s*(?:of\s*)?[:\-]?\s*([3-9])\b(?:\s*(?:/|of|out\s+of)\s*9)?",
    re.IGNORECASE,
)
_DIFFERENTIATED = re.compile(r"\b(well|moderately|poorly)[- ]differentiated\b", re.IGNORECASE)
_ROMAN = {"i": "1", "ii": "2", "iii": "3", "1": "1", "2": "2", "3": "3"}

_DIMENSIONS = re.compile(r"(\d+(?:\.\d+)?)((?:\s*[x×]\s*\d+(?:\.\d+)?)*)\s*(cm|mm)\b", re.IGNORECASE)
_SIZE_CONTEXT = re.compile(r"size|greatest\s+(?:dimension|diameter)|measur|largest|\bspan|\bextent", re.IGNORECASE)
_NOT_TUMOR_SIZE = re.compile(
    r"margin|node|specimen|distance|from\s+the|skin|nipple|biopsy\s+site|cassette|deposit|metasta|in\s+situ|\bdcis\b"
    r"|\blcis\b|fragment|\bcores?\b|clip|cavity|ellipse|fat\b|portion|aggregate",
    re.IGNORECASE,
)
_MASS = re.compile(r"\b(?:mass|tumou?r|lesion|nodule|neoplasm|carcinoma)\b", re.IGNORECASE)

_PCT = r"[<>≤≥]?\s*\d{1,3}(?:\.\d)?(?:\s*(?:-|–|to)\s*\d{1,3})?\s*%"
_ER_NAME = r"(?:o?estrogen\s+receptors?(?:\s*\((?:ER|IHC)\))?|\bER\b(?:\s*\((?:IHC|SP1|1D5|6F11)\))?)"
_PR_NAME = r"(?:progesterone\s+receptors?(?:\s*\((?:PR|PgR|IHC)\))?|\bPg?R\b(?:\s*\((?:IHC|1E2|16)\))?)"
_QUALIFIER = r"(?:(?:weakly|weak|strongly|strong|moderately|moderate|low|focally|diffusely|very\s+weakly)\s+)"
_SIGN = rf"(?P<q>{_QUALIFIER})?(?P<v>positive|negative|pos\b|neg\b|\(\+\)|\(-\)|\+|-(?![\w/]))"
_AFTER_NAME = (
    r"(?:\s+(?:result|results|status|expression|staining|score|testing))?\s*(?:status)?\s*(?:\((?:by\s+)?ihc\))?"
    r"\s*(?:[:=\-]|\bis\b|\bare\b|\bwas\b|\bwere\b|\bshows?\b)?\s*"
)
_DETAIL = (
    rf"(?P<d>\s*\([^()]{{0,50}}\)|\s*,?\s*(?:in\s+)?{_PCT}(?:\s+(?:of\s+)?(?:tumou?r\s+)?(?:cells|nuclei))?"
    r"(?:,?\s*(?:weak|moderate|strong)(?:\s+intensity)?)?)?"
)
_ER = re.compile(_ER_NAME + _AFTER_NAME + _SIGN + _DETAIL, re.IGNORECASE)
_PR = re.compile(_PR_NAME + _AFTER_NAME + _SIGN + _DETAIL, re.IGNORECASE)
_ER_PCT = re.compile(_ER_NAME + _AFTER_NAME + rf"(?P<p>{_PCT})", re.IGNORECASE)
_PR_PCT = re.compile(_PR_NAME + _AFTER_NAME + rf"(?P<p>{_PCT})", re.IGNORECASE)
_ER_LOOSE = re.compile(
    _ER_NAME + r"[^.;:]{0,70}:\s*" + _SIGN + _DETAIL, re.IGNORECASE
)  # addenda: "ER was repeated on A3 ...: POSITIVE"
_PR_LOOSE = re.compile(_PR_NAME + r"[^.;:]{0,70}:\s*" + _SIGN + _DETAIL, re.IGNORECASE)
_RECEPTOR_NAME = r"(?:o?estrogen\s+receptors?|progesterone\s+receptors?|\bER\b|\bPg?R\b|her-?\s?2(?:\s*/\s*neu)?)"
_STAINING_FOR = re.compile(
    rf"\b(positive|negative)\s+for\s+({_RECEPTOR_NAME}(?:\s*(?:,|and|or)\s*{_RECEPTOR_NAME})*)", re.IGNORECASE
)
_ER_PR_TOGETHER = re.compile(
    r"\b(?:ER\s*(?:/|and|,)\s*PR|hormone\s+receptors?(?:\s*\(ER/PR\))?)\s*(?:are\s+|both\s+|:\s*|status\s*:?\s*)*(positive|negative)",
    re.IGNORECASE,
)
_TRIPLE_NEGATIVE = re.compile(r"\btriple[- ]negative\b", re.IGNORECASE)

_HER2_NAME = re.compile(r"\bher-?\s?2(?:\s*/\s*neu|\s*-\s*neu|neu)?\b|\berbb-?2\b", re.IGNORECASE)
_ISH_WORD = re.compile(
    r"\b(?:fish|ish|sish|cish|ddish|in\s+situ\s+hybridi[sz]ation|dual[- ]probe|her2\s*/\s*cep17)\b", re.IGNORECASE
)
_ISH_RESULT = re.compile(
    r"(?P<neg>not\s+amplified|non-?amplified|negative\s+for\s+(?:gene\s+)?amplification|no\s+(?:evidence\s+of\s+)?amplification)"
    r"|(?P<pos>(?<!not )amplified|amplification\s+(?:is\s+)?(?:present|detected|identified)"
    r"|positive\s+for\s+(?:gene\s+)?amplification)"
    r"|(?P<eq>equivocal)",
    re.IGNORECASE,
)
_RATIO = re.compile(r"ratio\s*(?:of\s*)?(?:=|:|is)?\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_IHC_SCORE = re.compile(
    r"(?:score\s*(?:of\s*)?[:=]?\s*)?\b([0-3])\s*\+|\(\s*([0-3])\s*\)|score\s*(?:of\s*)?[:=]?\s*([0-3])\b|\bihc\)?\s*[:=]?\s*([0-3])\b",
    re.IGNORECASE,
)
_HER2_SIGN = re.compile(
    r"^[\s:=\-]*(?:\((?:ihc|fish|ish)\)\s*)?(?:status\s*)?[:=\-]?\s*(?:is\s+|was\s+)?(positive|negative|equivocal|pos\b|neg\b|\+|-(?![\w/]))",
    re.IGNORECASE,
)

_WORD_NUMBERS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
} | {"no": 0, "none": 0}
_WORD_NUMBERS |= {
    f"{tens}-{unit}": base + _WORD_NUMBERS[unit]
    for tens, base in (("twenty", 20), ("thirty", 30))
    for unit in "one two three four five six seven eight nine".split()
} | {"thirty": 30}
_NUM = r"(\d{1,2}|" + "|".join(sorted(_WORD_NUMBERS, key=len, reverse=True)) + r")"
_NODE_COUNTS = [
    re.compile(
        rf"\b{_NUM}\s*(?:/|of|out\s+of)\s*{_NUM}\s+(?:[a-z-]+\s+){{0,3}}(?:lymph\s+)?nodes?", re.IGNORECASE
    ),  # "2 of 15 lymph nodes"
    re.compile(
        rf"(?:lymph\s+)?nodes?\b[^.;%]{{0,60}}?(?<![\d/.])\(?\s*\b{_NUM}\s*(?:/|of|out\s+of)\s*{_NUM}\s*\)?(?![\d/])",
        re.IGNORECASE,
    ),  # "nodes (2/15)", "Lymph nodes: 0 of 14"
    re.compile(r"(?<![\d/.])\(\s*(\d{1,2})\s*/\s*(\d{1,2})\s*\)(?![\d/])"),  # "(0/3)" in a sentence about nodes
    re.compile(
        rf"\b{_NUM}\s+(?:positive|involved)\s+(?:[a-z-]+\s+){{0,2}}(?:lymph\s+)?nodes?\s+(?:out\s+)?of\s+{_NUM}",
        re.IGNORECASE,
    ),
]
_NODES_EXAMINED = re.compile(
    r"(?:nodes?\s+)?(?:examined|identified|removed|retrieved|submitted|total)\b[^:\d]{0,20}[:\-]?\s*(\d{1,2})\b",
    re.IGNORECASE,
)
_NODES_POSITIVE = re.compile(
    r"(?:nodes?\s+)?(?:(?:with\s+)?(?:macro|micro)metasta\w*|positive|involved)\b[^:\d]{0,20}[:\-]\s*(\d{1,2})\b",
    re.IGNORECASE,
)
_NODE_WORDS = re.compile(r"\bnodes?\b|\bnodal\b|sentinel|axilla", re.IGNORECASE)
_ITC = re.compile(r"isolated\s+tumou?r\s+cells?|\bITCs?\b|pN0\s*\(i\+\)", re.IGNORECASE)
_MICROMET = re.compile(r"micro-?metasta\w+", re.IGNORECASE)

_MARGIN_NEGATIVE = re.compile(
    r"negative|free|uninvolved|not\s+involved|does\s+not\s+involve|clear\b|no\s+(?:invasive\s+)?(?:carcinoma|tumou?r)",
    re.IGNORECASE,
)
_MARGIN_POSITIVE = re.compile(
    r"positive|involved|present\s+at|extends?\s+to|transected|at\s+(?:the\s+)?(?:inked\s+)?margin", re.IGNORECASE
)
_CLOSEST = re.compile(r"closest(?:\s+margin)?\s*(?:\((\w+)\))?[^\d.;]{0,40}?(\d+(?:\.\d+)?)\s*(mm|cm)\b", re.IGNORECASE)

_TILS = re.compile(
    r"(?:stromal\s+)?(?:tumou?r[- ]infiltrating\s+lymphocytes|\btils?\b)(?:\s*\((?:s?tils?|stromal)\))?", re.IGNORECASE
)
_TIL_PCT = re.compile(rf"^[^.;%]{{0,50}}?({_PCT})")
_TIL_LEVEL = re.compile(
    r"\b(brisk|marked|prominent|dense|high|abundant|heavy|moderate|intermediate|sparse|mild|minimal|scant|low|few)\b",
    re.IGNORECASE,
)

_LATERALITY = re.compile(
    r"\b(left|right)\s+(?:breast|side)\b|\bbreast\s*,\s*(left|right)\b|\blaterality\s*[:\-]?\s*(left|right)\b|^\s*(left|right)\s*[,:]",
    re.IGNORECASE,
)
_PROCEDURE = re.compile(
    r"(?:(?:modified\s+radical|radical|simple|total|skin[- ]sparing|nipple[- ]sparing|partial|segmental"
    r"|subcutaneous)\s+)?mastectomy"
    r"|lumpectomy|wide\s+local\s+excision|re-?excision|excisional\s+biopsy|quadrantectomy"
    r"|(?:(?:ultrasound|us|stereotactic|mri)[- ]guided\s+)?(?:core\s+(?:needle\s+)?|needle\s+core\s+)biopsy",
    re.IGNORECASE,
)
_STAGE_T = re.compile(
    r"(?<![A-Za-z])((?:y|r)?pT(?:is|mi|[0-4][a-d]?|X))(?![A-Za-z0-9])|(?<![A-Za-z])((?:y|r)?pT(?:is|mi|[0-4][a-d]?|X))(?=N)"
)
_STAGE_N = re.compile(
    r"(?<![A-Za-z])((?:y|r)?p?N(?:[0-3][a-c]?(?:mi|\s*\((?:mi|i[+-]|mol[+-]|sn)\))*|X))(?![A-Za-z0-9])"
)


_FINDING_HINT = re.compile(r"lymph|vascular|lvi|dcis|lcis|situ|necro|calcif|intraductal")
_RECEPTOR_HINT = re.compile(r"\ber\b|\bpg?r\b|estrogen|progesterone|receptor|triple|hormone")
_SITE_HINT = re.compile(r"left|right|laterality|ectomy|biopsy|excision")


def _number(word: str) -> int:
    return int(word) if word.isdigit() else _WORD_NUMBERS[word.lower()]


def _cm(text: str) -> tuple[float, str] | None:
    m = _DIMENSIONS.search(text)
    if not m:
        return None
    values = [float(m.group(1))] + [float(v) for v in re.findall(r"\d+(?:\.\d+)?", m.group(2))]
    cm = max(values) / (10 if m.group(3).lower() == "mm" else 1)
    return (cm, m.group(0)) if 0 < cm < 40 else None


def _format_cm(cm: float) -> str:
    return f"{cm:.1f} cm"


def _sign_value(v: str) -> str:
    v = v.lower().strip("()")
    return "positive" if v in ("positive", "pos", "+") else "negative"


def _pct_value(p: str) -> str:
    """ "<1%" or "0%" -> negative, "1-10%" -> positive (ASCO/CAP: 1% or more stained nuclei is positive)."""
    p = p.replace(" ", "")
    if p.startswith("<"):
        return "negative" if float(re.findall(r"\d+(?:\.\d)?", p)[0]) <= 1 else "positive"
    return "positive" if float(re.findall(r"\d+(?:\.\d)?", p)[0]) >= 1 else "negative"


class _Reader:
    """Readings of one sentence; `bare_means_present` for summaries, where a named finding is asserted."""

    def __init__(self, sentence: Sentence, bare_means_present: bool, node_part: bool = False):
        self.sentence = sentence
        self.bare = bare_means_present
        self.node_part = node_part  # the sentence's part is a lymph node specimen ("B. SENTINEL LYMPH NODES")
        self.text = _as_corrected(sentence.text)
        self.low = lower(self.text)
        self.out: list[Reading] = []

    def add(
        self, kind: str, value: str, status: str = "present", detail: str | None = None, explicit: bool = True
    ) -> None:
        self.out.append(Reading(kind, value, status, detail, self.sentence, explicit))

    def read(self) -> list[Reading]:
        low, text = self.low, self.text
        # Cheap word tests first: most sentences of a report (gross, boilerplate) concern no reader.
        findings = _FINDING_HINT.search(low) is not None
        types = "carcinoma" in low or "idc" in low or "ilc" in low
        if findings or types:
            for clause in clauses(text):
                if findings:
                    self._findings(clause)
                if types:
                    self._types(clause)
        if "grade" in low or "score" in low or "differentiated" in low:
            self._grade()
        if "cm" in low or "mm" in low:
            self._size()
        if _RECEPTOR_HINT.search(low):
            self._receptors()
        if "her" in low or "erbb" in low or "ish" in low:
            self._her2()
        if self.node_part or _NODE_WORDS.search(text):
            self._nodes()
        if "margin" in low:
            self._margins()
        if "til" in low or "lymphocyt" in low:
            self._tils()
        if _SITE_HINT.search(low):
            self._site()
        if "pt" in low or "pn" in low:
            self._stage()
        if self.out and self.sentence.section != ADDENDUM and _HISTORY.search(self.text):
            self.out = [Reading(r.kind, r.value, "historical", r.detail, r.sentence, r.explicit) for r in self.out]
        return self.out

    def _findings(self, clause: str) -> None:
        low = lower(clause)
        if "margin" in low:
            return  # "margins negative for DCIS" is about the margins, not about whether there is DCIS
        for finding in FINDING_KINDS:
            for m in finding_matches(finding, low):
                if finding == "necrosis" and _in_situ_necrosis(low, m.start(), m.end()):
                    continue  # "LCIS with central necrosis", "DCIS with comedo necrosis": not tumour necrosis
                status = status_at(clause, m.span())
                if status is None and (self.bare or self._names_a_diagnosis(finding, low, m.start())):
                    status = "present"
                if status in ("present", "absent", "possible"):
                    detail = _in_situ_detail(clause) if finding in ("dcis", "lcis") and status == "present" else None
                    self.add(finding, "present" if status != "absent" else "absent", status, detail)

    def _names_a_diagnosis(self, finding: str, low: str, start: int) -> bool:
        """A diagnosis line that opens with an in-situ carcinoma ("- Ductal carcinoma in situ, cribriform type")
        asserts it; a bare name elsewhere (a heading, a question) states nothing."""
        return (
            finding in ("dcis", "lcis")
            and self.sentence.section in _DIAGNOSTIC
            and bool(_OPENING.match(low[:start]))
            and bool(low[start:].strip(" ."))
            and not re.match(r"[^,;]*:\s*$", low[start:])
        )

    def _types(self, clause: str) -> None:
        low = lower(clause)
        for m in _TYPE_RE.finditer(low):
            i = int(next(k for k, v in m.groupdict().items() if v is not None)[1:])
            status = status_at(clause, m.span()) or "present"  # a diagnosis naming a carcinoma asserts it
            if status in ("present", "absent", "possible"):
                self.add("histologic_type", _TYPES[i][1], status)

    def _grade(self) -> None:
        for clause in clauses(self.text):
            low = lower(clause)
            if _IN_SITU_NEAR.search(low) and not re.search(r"invasive|infiltrating|nottingham|histologic grade", low):
                continue  # "DCIS, nuclear grade 3", "high-grade DCIS"
            if m := _GRADE.search(clause):
                self.add("grade", _ROMAN[m.group(1).lower()], detail=" ".join(m.group(0).split()))
                return
            if m := _SCORE.search(clause):
                score = int(m.group(1))
                self.add(
                    "grade", "1" if score <= 5 else "2" if score <= 7 else "3", detail=" ".join(m.group(0).split())
                )
                return
            if m := _DIFFERENTIATED.search(clause):
                if re.search(r"carcinoma|tumou?r|grade", low):
                    self.add(
                        "grade",
                        {"well": "1", "moderately": "2", "poorly": "3"}[m.group(1).lower()],
                        detail=m.group(0).lower(),
                    )
                    return

    def _size(self) -> None:
        for clause in clauses(self.text):
            if _NOT_TUMOR_SIZE.search(clause):
                continue
            if self.bare or _SIZE_CONTEXT.search(clause) or _MASS.search(clause):
                if self.sentence.section == "gross" and not _MASS.search(clause):
                    continue
                if found := _cm(clause):
                    cm, verbatim = found
                    self.add(
                        "size",
                        _format_cm(cm),
                        detail=None if verbatim == _format_cm(cm) else " ".join(verbatim.split()),
                    )
                    return

    def _receptors(self) -> None:
        text = self.text
        for m in _STAINING_FOR.finditer(text):  # "tumour cells are negative for ER and PR, positive for HER2"
            for name in re.findall(_RECEPTOR_NAME, m.group(2), re.IGNORECASE):
                self.add(_receptor_kind(name), m.group(1).lower())
        for kind, sign_re, pct_re, loose_re in (("er", _ER, _ER_PCT, _ER_LOOSE), ("pr", _PR, _PR_PCT, _PR_LOOSE)):
            m = sign_re.search(text) or (loose_re.search(text) if self.sentence.section == ADDENDUM else None)
            if m:
                detail = ((m["q"] or "") + m["v"] + (m["d"] or "")).strip()
                self.add(
                    kind,
                    _sign_value(m["v"]),
                    detail=detail if detail.lower() not in ("positive", "negative", "+", "-") else None,
                )
            elif m := pct_re.search(text):
                self.add(kind, _pct_value(m["p"]), detail=m["p"].replace(" ", ""))
        if m := _ER_PR_TOGETHER.search(text):
            for kind in ("er", "pr"):
                if not any(r.kind == kind for r in self.out):
                    self.add(kind, m.group(1).lower())
        if _TRIPLE_NEGATIVE.search(text):
            for kind in ("er", "pr", "her2"):
                self.add(kind, "negative", detail="triple negative", explicit=False)

    def _her2(self) -> None:
        text = self.text
        for m in _HER2_NAME.finditer(text):
            after = text[m.end() : m.end() + 90]
            after = re.split(r"[;.](?!\d)|\b(?:ER|PR|estrogen|progesterone)\b", after)[0]
            ish = _ISH_WORD.search(after)
            r = _ISH_RESULT.search(after, ish.end()) if ish else None
            if ish is None and (ish := _ISH_WORD.search(text[max(0, m.start() - 30) : m.start()])):
                r = _ISH_RESULT.search(after)
            if ish and r:
                value = "not amplified" if r["neg"] else "amplified" if r["pos"] else "equivocal"
                ratio = _RATIO.search(after)
                self.add(
                    "her2_ish", value, detail=f"{ish.group(0)} {value}" + (f" (ratio {ratio[1]})" if ratio else "")
                )
                continue
            if s := _HER2_SIGN.match(after):
                self.add(
                    "her2",
                    "positive"
                    if s[1].lower() in ("positive", "pos", "+")
                    else "negative"
                    if s[1].lower() in ("negative", "neg", "-")
                    else "equivocal",
                )
            if (sc := _IHC_SCORE.search(after[:40])) and not re.match(r"[^0-3]{0,3}/", after[sc.end() :]):
                score = next(g for g in sc.groups() if g is not None)
                self.add(
                    "her2_ihc",
                    "0" if score == "0" else f"{score}+",
                    detail=f"IHC {'0' if score == '0' else score + '+'}",
                )
        if (
            not any(r.kind.startswith("her2") for r in self.out)
            and _ISH_WORD.search(text)
            and _HER2_NAME.search(self.low) is None
        ):
            if "her2" in self.low or "cep17" in self.low:
                if r := _ISH_RESULT.search(text):
                    value = "not amplified" if r["neg"] else "amplified" if r["pos"] else "equivocal"
                    self.add("her2_ish", value, detail=value)

    def _nodes(self) -> None:
        text = self.text
        about_nodes = bool(_NODE_WORDS.search(text)) or self.node_part
        if not about_nodes:
            return
        detail = next((m.group(0) for m in (_STAGE_N.search(text),) if m and "mi" in m.group(0)), None)
        if itc := _ITC.search(text):
            detail = "isolated tumor cells" if not itc.group(0).lower().startswith("pn") else itc.group(0)
        elif micro := _MICROMET.search(text):
            detail = detail or micro.group(0).lower()
        for i in (2, 0, 1, 3):  # a "(0/6)" beside "isolated tumor cells in one of 6 nodes" is the count
            pattern = _NODE_COUNTS[i]
            if i == 2 and not about_nodes:
                continue
            for m in pattern.finditer(text):
                if i == 1 and re.search(r"ratio|score|grade|her|%", m.group(0), re.IGNORECASE):
                    continue
                pos, total = _number(m.group(1)), _number(m.group(2))
                if 0 <= pos <= total <= 99 and total > 0:
                    self.add("nodes", f"{pos}/{total}", detail=detail)
                    return
        examined, positive = _NODES_EXAMINED.search(text), _NODES_POSITIVE.search(text)
        if examined:
            total = int(examined[1])
            pos = (
                sum(
                    int(p)
                    for p in re.findall(
                        r"(?:metasta\w*|positive|involved)\b[^:\d]{0,20}[:\-]\s*(\d{1,2})\b", text, re.IGNORECASE
                    )
                )
                if positive
                else None
            )
            if pos is not None and pos <= total:
                self.add("nodes", f"{pos}/{total}", detail=detail)
                return
            self.add("nodes_examined", str(total))
        elif positive and not re.search(r"\bnot\b", text, re.IGNORECASE):
            self.add(
                "nodes_positive",
                str(
                    sum(
                        int(p)
                        for p in re.findall(
                            r"(?:metasta\w*|positive|involved)\b[^:\d]{0,20}[:\-]\s*(\d{1,2})\b", text, re.IGNORECASE
                        )
                    )
                ),
            )
        if self.bare:
            low = self.low
            if re.search(
                r"\bnodes?\b[^;]{0,25}\b(?:negative|uninvolved|free|benign)\b"
                r"|\bnegative\s+(?:lymph\s+|sentinel\s+)*nodes?\b|\bnode[- ]negative\b|\bpn0\b",
                low,
            ):
                self.add("node_positivity", "negative")
            elif re.search(
                r"\bnodes?\b[^;]{0,25}\b(?:positive|involved)\b"
                r"|\bpositive\s+(?:lymph\s+|sentinel\s+)*nodes?\b|\bnode[- ]positive\b",
                low,
            ):
                self.add("node_positivity", "positive")

    def _margins(self) -> None:
        for clause in clauses(self.text):
            if (
                "margin" not in lower(clause)
                or re.search(r"\binked?\b|\bdesignat", clause, re.IGNORECASE)
                and self.sentence.section == "gross"
            ):
                continue
            if _MARGIN_NEGATIVE.search(clause):
                close = _CLOSEST.search(clause) or _CLOSEST.search(
                    self.text
                )  # "margins negative; closest margin (deep) 4 mm"
                where = f" ({close[1].lower()})" if close and close[1] else ""
                self.add(
                    "margins", "negative", detail=f"closest {close[2]} {close[3].lower()}{where}" if close else None
                )
                return
            if _MARGIN_POSITIVE.search(clause):
                self.add("margins", "positive")
                return

    def _tils(self) -> None:
        for m in _TILS.finditer(self.text):
            tail = self.text[m.end() :]
            pct = _TIL_PCT.match(tail)
            level = _TIL_LEVEL.search(self.text[max(0, m.start() - 25) : m.end() + 40])
            if pct:
                self.add("tils", pct[1].replace(" ", ""), detail=level[1].lower() if level else None)
                return

    def _site(self) -> None:
        for m in _LATERALITY.finditer(self.text):
            self.add("laterality", next(g for g in m.groups() if g).lower())
            break
        for m in _PROCEDURE.finditer(self.text):
            self.add("procedure", " ".join(m.group(0).lower().split()))
            break

    def _stage(self) -> None:
        if m := _STAGE_T.search(self.text):
            self.add("pt", m.group(1) or m.group(2))
        for m in _STAGE_N.finditer(self.text):
            value = m.group(1)
            if not value.lower().startswith(("pn", "ypn", "rpn")) and not re.search(
                r"pT\w{1,3}$", self.text[: m.start()]
            ):
                continue
            self.add("pn", value if value.lower().startswith(("pn", "ypn", "rpn")) else "p" + value)
            break


def _in_situ_necrosis(low: str, start: int, end: int) -> bool:
    before, after = low[max(0, start - 150) : start], low[end : end + 40]
    if (
        low.startswith("comedo", start)
        or re.search(r"(?:comedo|central)[- ]?(?:type\s+)?$", before)
        and _IN_SITU_NEAR.search(before)
    ):
        return True
    if re.search(
        r"(?:\bdcis\b|\blcis\b|in\s+situ)[^;]*?\b(?:with|showing|featuring|having)\s+(?:[a-z-]+\s+){0,2}$", before
    ):
        return True
    return bool(
        re.match(
            r"\s*(?:\w+\s+){0,3}?(?:in|within|of)\s+(?:the\s+)?(?:dcis|lcis|\w+\s+carcinoma\s+in\s+situ|in\s+situ)",
            after,
        )
    )


_PERCENT_QUAL = re.compile(r"[<>≤≥]\s*\d{1,3}\s*%|\d{1,3}\s*%")


def _in_situ_detail(clause: str) -> str | None:
    parts = []
    if g := re.search(r"nuclear\s+grade\s*[:\-]?\s*(iii|ii|i|[123]|high|intermediate|low)", clause, re.IGNORECASE):
        parts.append(f"nuclear grade {g[1].lower()}")
    elif g := re.search(r"\b(high|intermediate|low)[- ]grade\b", clause, re.IGNORECASE):
        parts.append(f"{g[1].lower()} grade")
    if p := _PERCENT_QUAL.search(clause):
        parts.append(p.group(0).replace(" ", ""))
    return ", ".join(parts) or None


def _receptor_kind(name: str) -> str:
    name = name.lower()
    return "er" if name.startswith(("e", "o")) else "pr" if name.startswith("p") else "her2"


def read_sentence(sentence: Sentence, bare_means_present: bool = False, node_part: bool = False) -> list[Reading]:
    """Everything one sentence states, kind by kind (historical when it speaks of a prior specimen)."""
    return _Reader(sentence, bare_means_present, node_part).read()


# --- joining a case --------------------------------------------------------------------------


@lru_cache(maxsize=256)
def report_readings(report_text: str) -> tuple[tuple[Reading, ...], tuple[Reading, ...]]:
    """(current readings, historical readings) of a report; clinical history is all historical."""
    doc = parse_report(report_text)
    current, history = [], []
    node_parts = {p for p, heading in doc.part_headings.items() if _NODE_WORDS.search(heading)}
    for s in doc.sentences:
        if s.section == "header":
            continue
        for r in read_sentence(s, node_part=bool(set(s.parts) & node_parts)):
            if s.section in NEVER_CURRENT or r.status == "historical":
                history.append(Reading(r.kind, r.value, "historical", r.detail, r.sentence, r.explicit))
            elif s.section == SPECIMENS and r.kind not in ("laterality", "procedure"):
                continue
            else:
                current.append(r)
    return tuple(current), tuple(history)


def _rank(r: Reading, tumor_parts: frozenset[str]) -> tuple:
    """Higher is better: authority, explicit statement, tumour part, then the latest addendum or the first statement."""
    s = r.sentence
    in_tumor = not s.part or bool(set(s.parts) & tumor_parts) or not tumor_parts
    return (s.authority, r.explicit, in_tumor, s.index if s.section == ADDENDUM else -s.index)


def _tumor_parts(readings: list[Reading]) -> frozenset[str]:
    for kinds in (("histologic_type",), ("dcis", "lcis")):
        parts = {p for r in readings if r.kind in kinds and r.status == "present" for p in r.sentence.parts}
        if parts:
            return frozenset(parts)
    return frozenset()


def _joined_status(readings: list[Reading]) -> Reading | None:
    """Per part the most authoritative statements; across parts present if any part says present."""
    by_part: dict[tuple[str, ...], list[Reading]] = {}
    for r in readings:
        by_part.setdefault(r.sentence.parts, []).append(r)
    winners = []
    for group in by_part.values():
        top = max(r.sentence.authority for r in group)
        winners += [r for r in group if r.sentence.authority == top]
    for status in ("present", "possible", "absent"):
        if found := [r for r in winners if r.status == status]:
            return min(found, key=lambda r: r.sentence.index)
    return None


def _best(readings: list[Reading], tumor_parts: frozenset[str]) -> Reading | None:
    return max(readings, key=lambda r: _rank(r, tumor_parts)) if readings else None


def _nodes_total(readings: list[Reading], examined: list[Reading], positive: list[Reading], tumor_parts) -> Fact | None:
    synoptic = [r for r in readings if r.sentence.section == SYNOPTIC or "total" in r.sentence.text.lower()]
    if synoptic:
        return _best(synoptic, tumor_parts).fact()
    if (
        examined and positive
    ):  # synoptic "Lymph nodes examined: 18" ... "Number with macrometastases: 5" on separate lines
        total, pos = _best(examined, tumor_parts), _best(positive, tumor_parts)
        if int(pos.value) <= int(total.value):
            return Fact(
                "nodes",
                f"{pos.value}/{total.value}",
                "present",
                Evidence(total.sentence.section, total.sentence.part, f"{total.sentence.text} {pos.sentence.text}"),
            )
    groups: dict[str, list[Reading]] = {}
    for r in readings:
        low = r.sentence.text.lower()
        key = r.sentence.part or (
            "non-sentinel"
            if re.search(r"non-?sentinel|additional|axillary\s+(?:dissection|contents)", low)
            else "sentinel"
            if "sentinel" in low
            else ""
        )
        groups.setdefault(key, []).append(r)
    if not groups:
        return None
    chosen = {k: max(g, key=lambda r: (r.sentence.authority, -r.sentence.index)) for k, g in groups.items()}
    labelled = {k: r for k, r in chosen.items() if k}
    use = labelled if labelled else chosen
    if "" in chosen and labelled:
        unlabelled_total = int(chosen[""].value.split("/")[1])
        if unlabelled_total >= sum(int(r.value.split("/")[1]) for r in labelled.values()):
            use = {"": chosen[""]}
    pos = sum(int(r.value.split("/")[0]) for r in use.values())
    total = sum(int(r.value.split("/")[1]) for r in use.values())
    first = min(use.values(), key=lambda r: r.sentence.index)
    details = [r.detail for r in use.values() if r.detail]
    if len(use) == 1:
        return first.fact()
    parts = "+".join(sorted(k for k in use))
    sentence = " | ".join(r.sentence.text for r in sorted(use.values(), key=lambda r: r.sentence.index))
    return Fact(
        "nodes",
        f"{pos}/{total}",
        "present",
        Evidence(first.sentence.section, parts, sentence),
        details[0] if details else None,
    )


def _her2_final(readings: list[Reading], tumor_parts) -> Fact | None:
    ish = [r for r in readings if r.kind == "her2_ish"]
    ihc = [r for r in readings if r.kind == "her2_ihc"]
    explicit = [r for r in readings if r.kind == "her2"]
    best_ihc = _best(ihc, tumor_parts)
    if ish:
        r = _best(ish, tumor_parts)
        value = {"amplified": "positive", "not amplified": "negative", "equivocal": "equivocal"}[r.value]
        detail = "; ".join(d for d in (best_ihc.detail if best_ihc else None, r.detail) if d)
        top_explicit = _best(explicit, tumor_parts)
        if top_explicit and top_explicit.sentence.authority > r.sentence.authority and top_explicit.explicit:
            return Fact("her2", top_explicit.value, "present", top_explicit.fact().evidence, detail)
        return Fact("her2", value, "present", r.fact().evidence, detail)
    top_explicit = _best(explicit, tumor_parts)
    if best_ihc and (
        top_explicit is None
        or best_ihc.sentence.authority > top_explicit.sentence.authority
        or not top_explicit.explicit
    ):
        value = {"0": "negative", "1+": "negative", "2+": "equivocal", "3+": "positive"}[best_ihc.value]
        return Fact("her2", value, "present", best_ihc.fact().evidence, best_ihc.detail)
    if top_explicit:
        return Fact(
            "her2",
            top_explicit.value,
            "present",
            top_explicit.fact().evidence,
            best_ihc.detail if best_ihc else top_explicit.detail,
        )
    return None


def join_case(current: list[Reading]) -> dict[str, Fact]:
    """One fact per kind for the case, by the precedence and join rules of this module's docstring."""
    tumor = _tumor_parts(current)
    by_kind: dict[str, list[Reading]] = {}
    for r in current:
        by_kind.setdefault(r.kind, []).append(r)
    facts: dict[str, Fact] = {}
    for kind in FINDING_KINDS:
        if winner := _joined_status(by_kind.get(kind, [])):
            facts[kind] = winner.fact()
    types = by_kind.get("histologic_type", [])
    if winner := _joined_status(types):
        if winner.status != "absent":
            candidates = [r for r in types if r.status == winner.status]
            specific = [r for r in candidates if r.value != "invasive carcinoma"] or candidates
            facts["histologic_type"] = _best(specific, tumor).fact()
        elif facts.get("dcis") and facts["dcis"].status == "present":
            d = facts["dcis"]
            facts["histologic_type"] = Fact(
                "histologic_type", "ductal carcinoma in situ", "present", d.evidence, "no invasive carcinoma"
            )
        elif facts.get("lcis") and facts["lcis"].status == "present":
            d = facts["lcis"]
            facts["histologic_type"] = Fact(
                "histologic_type", "lobular carcinoma in situ", "present", d.evidence, "no invasive carcinoma"
            )
        else:
            facts["histologic_type"] = Fact("histologic_type", "invasive carcinoma", "absent", winner.fact().evidence)
    elif facts.get("dcis") and facts["dcis"].status == "present":
        facts["histologic_type"] = Fact(
            "histologic_type", "ductal carcinoma in situ", "present", facts["dcis"].evidence
        )
    for kind in ("grade", "size", "er", "pr", "margins", "tils", "laterality", "procedure", "pt", "pn"):
        candidates = by_kind.get(kind, [])
        if kind == "margins":  # of the most authoritative statements, a positive margin wins
            top = max((r.sentence.authority for r in candidates), default=0)
            candidates = [r for r in candidates if r.sentence.authority == top]
            candidates = [r for r in candidates if r.value == "positive"] or candidates
        if kind == "procedure":
            candidates = [
                r for r in candidates if "core" not in r.value
            ] or candidates  # the resection, not the earlier biopsy
        if best := _best(candidates, tumor):
            if kind == "procedure":  # a line break may have cut "modified radical | mastectomy": keep the full name
                best = max(
                    (r for r in candidates if r.value.endswith(best.value)),
                    key=lambda r: (len(r.value), _rank(r, tumor)),
                )
            facts[kind] = best.fact()
    if her2 := _her2_final(by_kind.get("her2", []) + by_kind.get("her2_ihc", []) + by_kind.get("her2_ish", []), tumor):
        facts["her2"] = her2
    if nodes := _nodes_total(
        by_kind.get("nodes", []), by_kind.get("nodes_examined", []), by_kind.get("nodes_positive", []), tumor
    ):
        if (
            "pn" in facts
            and re.search(r"mi|i\+", facts["pn"].value)
            and not (nodes.detail or "").lower().startswith("isolated")
        ):
            nodes = Fact(nodes.kind, nodes.value, nodes.status, nodes.evidence, facts["pn"].value)
        facts["nodes"] = nodes
    return facts


@lru_cache(maxsize=256)
def joined_case(report_text: str) -> tuple[dict[str, Fact], dict[str, Fact]]:
    """(kind -> the case's current fact, kind -> the first historical fact) of a report (cached: the
    summariser, the check and `summaries.jsonl` read the same report)."""
    current, history = report_readings(report_text)
    facts = join_case(list(current))
    past: dict[str, Fact] = {}
    for r in history:
        if r.kind in FACT_KINDS and r.kind not in past:
            past[r.kind] = r.fact("historical")
    return facts, past


def case_facts(report_text: str) -> list[Fact]:
    """One fact per kind for the case (FACT_KINDS order), after precedence and the join of parts; a
    kind the report gives only as history comes with status `historical`."""
    facts, past = joined_case(report_text)
    return [facts[k] if k in facts else past[k] for k in FACT_KINDS if k in facts or k in past]


_SUMMARY_CLAUSE = re.compile(r"(?<!\d)\.|\.(?!\d)|;|\n")


def summary_clauses(summary: str) -> list[str]:
    return [c.strip() for c in _SUMMARY_CLAUSE.split(summary) if c.strip()]


def summary_readings(summary: str) -> list[Reading]:
    """Readings of each clause of a summary (a named finding without a status word is asserted)."""
    out: list[Reading] = []
    for i, clause in enumerate(summary_clauses(summary)):
        out += read_sentence(Sentence(clause, BODY, None, i), bare_means_present=True)
    return out


def summary_facts(summary: str) -> list[Fact]:
    """The facts a summary's clauses state, each with the clause as its evidence; HER2 as its final
    status (ISH, else IHC score, else the stated word)."""
    facts = []
    readings = summary_readings(summary)
    in_situ_only = any(r.kind == "dcis" and r.status == "present" for r in readings)
    for r in readings:
        if r.kind == "histologic_type" and r.status == "absent" and in_situ_only:  # "No invasive carcinoma; DCIS"
            facts.append(
                Fact(r.kind, "ductal carcinoma in situ", "present", r.fact().evidence, "no invasive carcinoma")
            )
        elif r.kind in FACT_KINDS and r.kind != "her2":
            facts.append(r.fact())
    by_clause: dict[int, list[Reading]] = {}
    for r in readings:
        if r.kind.startswith("her2"):
            by_clause.setdefault(r.sentence.index, []).append(r)
    for group in by_clause.values():
        if her2 := _her2_final(group, frozenset()):
            facts.append(her2)
    return facts
