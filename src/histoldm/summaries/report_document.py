"""A pathology report as a document: sections with different authority, specimen parts, sentences.

Real reports are not flat text. The same words mean different things in different places: "right
breast, lumpectomy (2009)" in the clinical history is not the current specimen, "ER positive (80%)"
in the final diagnosis is overruled by an addendum that corrects it to "ER NEGATIVE (0%)", and
"negative for DCIS" in part C says nothing about part A. So before any fact is read, the report is
split here into sentences, each tagged with its section kind and its specimen part (A, B, an A-B
range, "Part 1"), after OCR confusions are repaired (`lnfiltrating` -> `infiltrating`).

Section kinds and their authority (higher overrules lower; docs/summaries.md states the rules):
addendum/amendment 5; synoptic checklist and final diagnosis 4; ancillary studies and comment 3;
microscopic description and text before any heading 2; gross description and intraoperative
consultation 1. Clinical history and the header have none: they never give a current finding. The
specimens-received list names the current parts (laterality, procedure) but states no finding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

HEADER, BODY, CLINICAL_HISTORY, SPECIMENS = "header", "body", "clinical_history", "specimens"
GROSS, INTRAOPERATIVE, MICROSCOPIC, FINAL_DIAGNOSIS = "gross", "intraoperative", "microscopic", "final_diagnosis"
SYNOPTIC, COMMENT, ADDENDUM, ANCILLARY = "synoptic", "comment", "addendum", "ancillary"

AUTHORITY = {
    ADDENDUM: 5,
    SYNOPTIC: 4,
    FINAL_DIAGNOSIS: 4,
    ANCILLARY: 3,
    COMMENT: 3,
    MICROSCOPIC: 2,
    BODY: 2,
    GROSS: 1,
    INTRAOPERATIVE: 1,
    SPECIMENS: 0,
    CLINICAL_HISTORY: 0,
    HEADER: 0,
}
NEVER_CURRENT = frozenset({CLINICAL_HISTORY, HEADER})

# --- OCR repair ------------------------------------------------------------------------------

# Words whose OCR'd forms (l/1/I/| swaps, "rn" for "m", 0 for o) turn up in scanned reports. A token that is
# not one of them but maps to one once the confusions are folded together is replaced by it.
_VOCABULARY = """
infiltrating invasive invasion carcinoma carcinomas lobular ductal mammary lymph lymphovascular lymphatic vascular
identified involved involving involvement situ tumor tumour tumors lymphocytes lymphocytic malignant metastatic
metastasis metastases micrometastasis micrometastases macrometastasis macrometastases isolated immunohistochemical
immunohistochemistry intermediate nuclear nottingham grade margin margins mastectomy lumpectomy modified radical simple
segmental partial total excision excisional left right breast biopsy calcifications calcification microcalcifications
necrosis necrotic clinical final diagnosis microscopic gross specimen specimens received addendum amendment amended
comment medullary mucinous tubular papillary micropapillary cribriform solid comedo residual present absent negative
positive equivocal amplified amplification estrogen progesterone receptor receptors pleomorphism mitoses mitotic
moderately poorly well differentiated histologic sentinel axillary multifocal unifocal focal extensive limited
inflammatory infiltrate stromal intraductal epithelial neoplasm neoplastic lesion lesions nipple skin lateral medial
inferior superior anterior posterior closest distance million examined including complete completely
single files nests cords glands sheets trabeculae tubules clusters pattern growth labeled labelled fibrocystic
""".split()


def _fold(word: str) -> str:
    return word.lower().replace("rn", "m").translate(_FOLD)


_FOLD = str.maketrans({"i": "l", "1": "l", "|": "l", "0": "o"})
_BY_FOLDED = {_fold(w): w for w in _VOCABULARY}
_KNOWN = frozenset(_VOCABULARY)
_OCR_TOKEN = re.compile(r"(?<![\w|])(?=[\w|]*(?:[l1I|0]|rn))[A-Za-z][\w|]{2,}|(?<![\w|])[1|][A-Za-z][\w|]{2,}")


def _repair_token(m: re.Match) -> str:
    return _repair_word(m.group(0))


@lru_cache(maxsize=1 << 16)
def _repair_word(token: str) -> str:
    if token.lower() in _KNOWN or not any(c.isalpha() for c in token):
        return token
    word = _BY_FOLDED.get(_fold(token))
    if word is None:
        return token
    letters = [c for c in token if c.isalpha()]
    if len(letters) > 1 and all(c.isupper() or c == "l" for c in letters[1:]) and letters[1].isupper():
        return word.upper()  # "INVAS1VE", "lNFILTRATING"
    return word.capitalize() if token[0].isupper() and token[0] != "I" else word  # "Lnfiltrating", "lnfiltrating"


@lru_cache(maxsize=64)
def repair_ocr(text: str) -> str:
    """`text` with OCR'd forms of pathology words repaired ("lnfiltrating", "carcinorna", "INVAS1VE")."""
    return _OCR_TOKEN.sub(_repair_token, text)


# --- sections and parts ------------------------------------------------------------------------

_SECTION_NAMES: list[tuple[str, str]] = [  # (regex on a heading, kind); checked in order
    (
        r"addend(?:um|a)\b[^:]{0,40}?|amend(?:ed|ment)\b[^:]{0,40}?"
        r"|(?:revised|corrected|amended) (?:report|diagnosis)\b[^:]{0,40}?",
        ADDENDUM,
    ),
    (
        r"[^:]{0,40}?\bsynoptic\b[^:]{0,80}?|[^:]{0,40}?\bchecklist\b[^:]{0,80}?|cancer case summary|tumou?r summary"
        r"|summary of (?:findings|tumou?r)",
        SYNOPTIC,
    ),
    (
        r"clinical (?:history|information|data|notes?|indications?|diagnosis)|(?:pertinent )?(?:medical )?history"
        r"|indications?(?: for (?:procedure|surgery|study))?|pre-?operative diagnosis|post-?operative diagnosis",
        CLINICAL_HISTORY,
    ),
    (
        r"specimens?(?: \(?s\)?)?(?: received| submitted| source)?|specimen\(s\)(?: received)?|source of specimens?"
        r"|parts? received"
        r"|tissue(?:s)? (?:received|submitted)",
        SPECIMENS,
    ),
    (r"gross(?: description| examination| findings)?|macroscopic(?: description)?", GROSS),
    (
        r"intra-?operative (?:consultation|diagnosis)|frozen section(?: diagnosis| consultation)?"
        r"|touch preps?(?: diagnosis)?",
        INTRAOPERATIVE,
    ),
    (r"microscopic(?: description| examination| findings)?|histology", MICROSCOPIC),
    (
        r"(?:final |pathologic(?:al)? |surgical pathology )*diagnos[ie]s(?: \(.*\))?"
        r"|final pathologic(?:al)? diagnosis|interpretation",
        FINAL_DIAGNOSIS,
    ),
    (
        r"ancillary (?:studies|testing|tests)|immunohistochemi\w+(?: (?:studies|results|stains))?"
        r"|(?:special|immuno) ?stains|biomarkers?"
        r"|(?:breast )?(?:cancer )?(?:prognostic |predictive )?markers?(?: studies)?|(?:hormone )?receptor studies",
        ANCILLARY,
    ),
    (r"comments?(?:\(s\))?|notes?", COMMENT),
    (
        r"patient(?: information)?|case|accession(?: number)?|report|surgical pathology(?: report)?|pathology report",
        HEADER,
    ),
]
_HEADING = re.compile(
    r"^[\s*#=_\-]*(" + "|".join(f"(?:{p})" for p, _ in _SECTION_NAMES) + r")[\s*#=_\-]*(?::|$)(.*)$", re.IGNORECASE
)
_SECTION_KINDS = [(re.compile(f"^(?:{p})$", re.IGNORECASE), kind) for p, kind in _SECTION_NAMES]
_SHORT_HEADING = 90  # "SYNOPTIC REPORT - BREAST" is a heading; a sentence naming a checklist is not

# --- run-together reports ----------------------------------------------------------------------
# OCR'd reports (TCGA text often) arrive with every line run into one. Line starts are restored before what
# starts a line in a report: a section heading, a specimen part's label, a checklist key, a bullet.
_RUN_HEADING = re.compile(  # section headings and the common checklist keys, by name and colon
    r"(?=[ \t])(?<=[^\s•-])(?<!final)(?<!pathologic)(?<!pathological)(?<!surgical)(?<!clinical)(?<!medical)"
    r"(?<!pertinent)(?<!specimen)(?<!stromal)(?<!histologic)(?<!tumor)(?<!tumour)(?<!source of)(?<!section)"
    r"(?<!operative)(?<!superior)(?<!inferior)(?<!medial)(?<!lateral)(?<!deep)(?<!anterior)(?<!posterior)[ \t]+"
    r"(?=(?:(?:final |pathologic(?:al)? |surgical pathology )*diagnos[ie]s|gross (?:description|examination)"
    r"|macroscopic description|clinical (?:history|information|data|notes?)|(?:pertinent )?(?:medical )?history"
    r"|microscopic(?: description| examination)?|specimens?(?:\(s\))?(?: received| submitted)?|source of specimens?"
    r"|comments?(?:\(s\))?|note|addend(?:um|a)(?: \d)?|amend(?:ed|ment(?: #?\d)?)|ancillary studies"
    r"|immunohistochemistry|biomarker studies|intra-?operative (?:consultation|diagnosis)|frozen section diagnosis"
    r"|synoptic report"
    r"|histologic (?:type|grade)[^:.]{0,20}|tumou?r size|(?:tumou?r )?necrosis|tumou?r-infiltrating lymphocytes"
    r"|(?:stromal )?tils|lympho?-?\s?vascular invasion|ductal carcinoma in situ|margins?|regional lymph nodes"
    r"|growth pattern"
    r"|pathologic stage|(?:specimen )?laterality|procedure|(?:estrogen|progesterone) receptors?(?: \([^()]{1,12}\))?"
    r"|er|pr|her-?2[^:.]{0,12})\s*:|electronically signed\b|I attest\b|page \d+ of \d+\b)"
    r"|(?=[ \t])(?<=\S)[ \t]+(?=(?:case|accession|collected|patient|mrn)\s*:)",  # the header's keys, after any word
    re.IGNORECASE,
)
_RUN_UPPER_HEADING = re.compile(  # headings known only in capitals: "ADDENDUM (03/14/2010):", "CANCER CASE SUMMARY"
    r"(?=\s)(?<=\S)(?<!FINAL)(?<!PATHOLOGIC)(?<!PATHOLOGICAL)(?<!CLINICAL)(?<!MEDICAL)(?<!-)(?<!SURGICAL)\s+"
    r"(?=(?:ADDENDUM\b[^:.a-z]{0,30}|AMENDMENT\b[^:.a-z]{0,30}|(?:REVISED|CORRECTED) REPORT\b[^:.a-z]{0,30})\s*:"
    r"|\*\*AMENDED REPORT\b|(?:SYNOPTIC REPORT|CANCER CASE SUMMARY)\b|Checklist:)"
)
_RUN_KEY = re.compile(  # any other "Key: value" with a capitalised key of at most four words
    r"(?= )(?<=[^\s•-]) (?=(?P<key>[A-Z][A-Za-z-]*(?: (?:[A-Za-z-]+|\([^()]{1,20}\))){0,3}):(?!\d))"
)
_ABBREVIATION = re.compile(r"(?:^|\s)(?:[A-Z]|Dr|Drs|Mr|Mrs|Ms|Prof|St|No|vs)\.$")  # "by A.", "Dr." before a name


def _key_break(m: re.Match) -> str:
    """A break before a checklist key where the word before it ends a sentence or a lowercase value
    ("... in situ Necrosis: ..."), not where it is a capitalised word that may start the key itself
    ("Clinical Information:") or "(S)" of "SPECIMEN(S) RECEIVED:"."""
    before = m.string[max(0, m.start() - 40) : m.start()]
    word = before.rsplit(" ", 1)[-1]
    if word.endswith((".", ";")) and not _ABBREVIATION.search(before):
        return "\n"
    if word.endswith(")") and not m["key"].isupper():
        return "\n"
    if (word[-1:].isalnum() or word.endswith("%")) and not any(c.isupper() for c in word):
        return "\n"
    return " "


# A sentence after a checklist value with no full stop between them ("ER: NEGATIVE (0%) Estrogen receptor was ...").
_RUN_VALUE_END = re.compile(
    r"^([A-Za-z][^:.]{0,40}:[ \t]*\S(?:[^.:]|(?<=\d)\.(?=\d))*?) (?=[A-Z][a-z]+ [a-z]+\b)"
    r"(?!(?:Positive|Negative|Present|Absent|Equivocal|Amplified|Not|No|Weakly|Strongly|Low|High|Moderate)\b)"
)
_RUN_BULLET = re.compile(r"(?<=[.:;])[ \t]+(?=[-•][ \t])")  # "... 2.6 CM. - LYMPHOVASCULAR INVASION ..."
_NAME_BEFORE = re.compile(r"\b(?:by|dr\.?|and|of|in|see)\s*$", re.IGNORECASE)
_PART_HEADING_END = re.compile(r"[^:.]{1,80}:\s+(?=\S)")  # a part's heading, then its text on the same line
_UPPER_PART_HEADING = re.compile(  # "LYMPH NODES, SENTINEL:", a specimen named in capitals (not "LVI: PRESENT")
    r"(?=[A-Z][A-Z0-9 ,()/#'&-]{3,80}:)[^:]*?(?:BREAST|LYMPH|NODE|MARGIN|AXILL|SENTINEL|TISSUE|SKIN|NIPPLE|EXCISION)"
)
_HEADING_END = re.compile(r"^[^:]{1,80}:\s*")  # where the heading of a restored section line ends
_LONG_LINE = 160
_DOT_LEADER = re.compile(r"[ \t]*\.{3,}[ \t]*")  # "LYMPH-VASCULAR INVASION ....... Present": dots are not full stops
_VALUE_ON_NEXT_LINE = re.compile(
    r"^([ \t]*[A-Za-z][^:\n]{0,60}):[ \t]*\n[ \t]*(?=\S)(?![-•*]|[A-L][.)]\s|part\b)(?=[^\n]{1,60}$)",
    re.MULTILINE | re.IGNORECASE,
)

_PART_LABEL = r"(?:[A-L]|\d{1,2})"
# "A. Left breast, ...", "B) Sentinel ...", "A-B: ...", "A and B.", "PART 1: ...", "Specimen C - ..."; letters need a
# capital or a site word after them so "A 2.1 cm mass" and initials stay text.
_PART_START = re.compile(
    rf"^[\s\-*•]*(?:(?:part|specimen)\s*#?\s*(?P<p1>{_PART_LABEL})(?:\s*(?:-|–|through|to|and|&|,)\s*(?P<p2>{_PART_LABEL}))?\s*[.):\-]?"
    rf"|(?P<l1>[A-L])(?:\s*(?:-|–|through|to|and|&|,)\s*(?P<l2>[A-L]))?\s*[.):])\s+(?=[A-Z(\"']|(?:left|right|breast|lymph|sentinel|axill))",
    re.IGNORECASE,
)

_RUN_LABEL = re.compile(  # "A." "B)" "C:" "A-B:" "PART 1:" "Part C" "Specimen C -", then a word
    rf"(?<![\w./#-])(?:(?P<word>(?i:part|specimen))\s*#?\s*)?(?P<first>{_PART_LABEL})"
    rf"(?:\s*(?:-|–|and|&)\s*(?P<last>{_PART_LABEL}))?"
    r"(?P<mark>\s*[.):]|\s+-)?\s+(?=[A-Za-z(\"'])",
)


@dataclass(frozen=True)
class Sentence:
    """One sentence (or checklist line) of the report, where it stands and what part it is about."""

    text: str
    section: str  # a section kind above
    part: str | None  # "A", "A-B", "1"; None when the text names no part
    index: int  # order in the report

    @property
    def authority(self) -> int:
        return AUTHORITY[self.section]

    @property
    def parts(self) -> tuple[str, ...]:
        """The single parts a range covers: "A-C" -> (A, B, C)."""
        if self.part is None or "-" not in self.part:
            return (self.part,) if self.part else ()
        lo, hi = self.part.split("-")
        if lo.isdigit() and hi.isdigit():
            return tuple(str(i) for i in range(int(lo), int(hi) + 1))
        return tuple(chr(c) for c in range(ord(lo), ord(hi) + 1))


@dataclass(frozen=True)
class ParsedReport:
    """The report's sentences in order, each with its section and part, and each part's heading."""

    text: str  # the report after OCR repair
    sentences: tuple[Sentence, ...]
    part_headings: dict[str, str]  # part -> the first line that names it ("Left breast, segmental mastectomy")

    def current(self) -> tuple[Sentence, ...]:
        """Sentences that may state a current finding (not clinical history, not the header)."""
        return tuple(s for s in self.sentences if s.section not in NEVER_CURRENT)


def _section_kind(name: str) -> str:
    name = " ".join(name.split())
    return next((kind for pattern, kind in _SECTION_KINDS if pattern.match(name)), BODY)


def _part_label(m: re.Match) -> str:
    first, second = (m["p1"], m["p2"]) if m["p1"] else (m["l1"], m["l2"])
    first = first.upper()
    return f"{first}-{second.upper()}" if second else first


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(*\"'<>\d])|(?<=[.;])\s+(?=[A-Z][a-z]+:)")


def _next_label(label: str) -> str:
    """The label after `label` in its list: "A" -> "B", "1" -> "2"."""
    return str(int(label) + 1) if label.isdigit() else chr(ord(label.upper()) + 1)


def _split_parts(lines: list[str]) -> list[str]:
    """Line breaks before the part labels of run-together lines, and after a part's heading where its text
    follows on the same line. A label starts a part where it opens a section, where "A", "1" or "Part C"
    follows a full stop, where a letter is followed by a specimen named in capitals ("B. LYMPH NODES:"), or
    where it is the next label of the section in the same style ("A:" ... "B:", "PART 1:" ... "PART 2:"), so
    "by A. Example" and "grade 2. Lymph..." stay text."""
    out: list[str] = []
    last = style = None
    for line in lines:
        head = _HEADING_END.match(line)
        opening = -1
        if head and _HEADING.match(line[: head.end()].strip()) and _section_kind(line[: head.end() - 1]) != BODY:
            opening, last, style = len(head.group(0)), None, None  # a new section: its labels start again
        starts = [0]
        for m in _RUN_LABEL.finditer(line):
            first, this_style = m["first"], ((m["word"] or "").lower(), (m["mark"] or "").strip())
            if not m["word"] and (not m["mark"] or line[m.end()].islower()):
                continue  # "A. the" and "A 2 cm mass" are not parts; "Part C consists of ..." is
            before = line[max(0, m.start() - 12) : m.start()].rstrip()
            after_stop = before.endswith((".", ":", ";"))
            in_turn = last is not None and first == _next_label(last) and this_style == style
            in_turn = in_turn and not _NAME_BEFORE.search(before)  # "signed by D. Fictional"
            heading = first.isalpha() and _UPPER_PART_HEADING.match(line, m.end())  # "pN0 B. LYMPH NODES:"
            if m.start() in (0, opening) or in_turn or heading or after_stop and (first in ("A", "1") or m["word"]):
                starts.append(m.start())
                last, style = m["last"] or first, this_style
                if head := _PART_HEADING_END.match(line, m.end(), _next_start(line, m.end())):
                    starts.append(head.end())  # "A. Right breast, lumpectomy: Ductal carcinoma ..."
        out += [line[i:j] for i, j in zip(starts, [*starts[1:], len(line)])]
    return [x.rstrip() for x in out if x.strip()]


def _next_start(line: str, pos: int) -> int:
    """Where the next part label candidate after `pos` begins (the end of the line if none)."""
    m = _RUN_LABEL.search(line, pos)
    return m.start() if m else len(line)


@lru_cache(maxsize=64)
def split_run_together(text: str) -> str:
    """`text` with line starts restored in lines longer than a report line (OCR runs whole reports into one):
    before section headings, checklist keys, bullets and specimen part labels. The reader and the extractive
    summariser's diagnostic text both read reports through this, so a report run together reads as its twin
    with line breaks does."""
    lines = []
    for line in text.splitlines():
        if len(line) > _LONG_LINE:
            line = _RUN_UPPER_HEADING.sub("\n", _RUN_HEADING.sub("\n", line))
            line = _RUN_BULLET.sub("\n", _RUN_KEY.sub(_key_break, line))
            line = "\n".join(_RUN_VALUE_END.sub("\\1\n", x) for x in _split_parts(line.splitlines()))
        lines.append(line)
    return "\n".join(lines)


def _lines(report: str) -> list[str]:
    """The report's lines, dot leaders read as colons, a value on the line under its key joined to it, and
    run-together text split again (`split_run_together`)."""
    if "..." in report:
        report = _DOT_LEADER.sub(": ", report)
    report = _VALUE_ON_NEXT_LINE.sub(r"\1: ", report)  # "Margins:\n  negative" -> "Margins: negative"
    return split_run_together(report).splitlines()


@lru_cache(maxsize=64)
def parse_report(text: str) -> ParsedReport:
    """Sections, parts and sentences of a report (after OCR repair). Cached: the summariser and the
    consistency check read the same report."""
    text = repair_ocr(text)
    section, part = HEADER, None
    seen_heading = False
    sentences: list[Sentence] = []
    headings: dict[str, str] = {}
    for line in _lines(text):
        if not line.strip():
            continue
        heading = _HEADING.match(line) if len(line) <= _SHORT_HEADING or ":" in line[:60] else None
        if heading:
            kind = _section_kind(heading.group(1))
            if kind != BODY:
                section, part, seen_heading = kind, None, True
                line = heading.group(2)
        if not line.strip():
            continue
        if section == HEADER and not seen_heading and not _looks_like_header(line):
            section = BODY  # text under no heading: read as a diagnosis of low authority
        if m := _PART_START.match(line):
            part = _part_label(m)
            line = line[m.end() :]
            for label in Sentence("", section, part, 0).parts:
                headings.setdefault(label, line.strip().rstrip(":"))
        for sentence in _SENTENCE_END.split(line):
            if sentence.strip():
                sentences.append(Sentence(sentence.strip(), section, part, len(sentences)))
    return ParsedReport(text, tuple(sentences), headings)


_HEADER_LINE = re.compile(
    r"^\s*(?:case|mode|patient|name|mrn|dob|age|sex|date|accession|physician|surgeon|hospital|"
    r"institution|synthetic|tcga|report|page)\b",
    re.IGNORECASE,
)


def _looks_like_header(line: str) -> bool:
    return (
        bool(_HEADER_LINE.match(line))
        or line.isupper()
        and len(line) < 60
        and not re.search(r"carcinoma|breast|node", line, re.I)
    )
