"""Made-up TCGA-BRCA-style surgical pathology reports with a known ground truth, for demos, tests
and benchmarks.

No real TCGA report may ship with this project, yet the summariser must be exercised on text that
looks like the real thing: real reports are OCR'd documents of hundreds to a couple of thousand
words, and most of that is not about the tumour. Each report here has a header, clinical history,
intraoperative consultation, a gross description per specimen part with a cassette key (full of
sizes that are NOT the tumour size), a microscopic description (growth pattern, pleomorphism,
mitoses, necrosis, lymphocytes), a final diagnosis in one of four formats (narrative bullets, CAP
synoptic "Key: value", dotted leaders, value on the next line), comments, addenda, signatures
and disclaimers, with OCR-like artefacts (l/1 and O/0 swaps, "rn" for "m", hyphenated line
breaks, page headers repeated mid-text, stray marks). Negative findings are written in many
phrasings ("Ductal carcinoma in situ, absent.", "No lymphovascular invasion is identified.",
"negative for necrosis"), and some are uncertain ("cannot be excluded", "suspicious for").

The artefacts hit the boilerplate, gross and comment text; the diagnostic statements keep their
words (line breaks and case vary), so the ground truth stays recoverable. Every report says on
its first line that it is synthetic, and case ids use the tissue-source code "SY", which no TCGA
site uses. Lengths: see docs/summaries.md (`report_word_counts`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from histoldm.data.synthetic_facts import CaseFacts

_TYPES = [
    ("invasive ductal carcinoma", "Invasive ductal carcinoma", "nests, cords and glands"),
    ("infiltrating ductal carcinoma", "Invasive ductal carcinoma", "solid sheets and nests"),
    ("invasive lobular carcinoma", "Invasive lobular carcinoma", "single files and targetoid cords"),
    ("infiltrating lobular carcinoma", "Invasive lobular carcinoma", "single files"),
    (
        "invasive carcinoma with mixed ductal and lobular features",
        "Invasive mixed ductal and lobular carcinoma",
        "nests and single files",
    ),
    ("mucinous carcinoma", "Mucinous carcinoma", "clusters floating in pools of extracellular mucin"),
]
_TYPE_WEIGHTS = [40, 20, 12, 6, 8, 4]
_DCIS_PATTERNS = ["cribriform", "solid", "comedo", "micropapillary", "papillary"]
_SIDES = ["left", "right"]
_PROCEDURES = ["modified radical mastectomy", "simple mastectomy", "lumpectomy", "partial mastectomy"]
_PATHOLOGISTS = ["A. Synthetic, MD", "B. Example, MD", "C. Placeholder, MD, PhD", "D. Fictional, MD"]
_TIL_WORDS = {
    "low": ("sparse", 5),
    "moderate": ("moderate", 25),
    "high": ("brisk", 60),
}  # level -> word, stromal % centre
_PLEO_WORDS = {1: "mild", 2: "moderate", 3: "marked"}
_MITOSIS_WORDS = {1: "low", 2: "intermediate", 3: "high"}
_MITOSES_PER_10HPF = {1: (1, 7), 2: (8, 14), 3: (15, 40)}

# Absent / possible findings in many phrasings ({X} is the finding's name); the summariser must keep each.
_ABSENT = [
    "{X}, absent",
    "{X}: absent",
    "{X}: not identified",
    "{X} is not identified",
    "No {x} is identified",
    "Negative for {x}",
    "No evidence of {x}",
    "{X}: none seen",
    "{X} is not seen",
    "{X}, negative",
    "There is no {x}",
]
_POSSIBLE = ["Suspicious for {x}", "{X} cannot be excluded", "Focus suspicious for {x}", "{X}: cannot be ruled out"]
_PRESENT = ["{X}, present", "{X}: present", "{X} is identified", "{X}: identified", "{X} present"]

_DISCLAIMERS = [
    "This test was developed and its performance characteristics determined by the Department of Pathology. It has "
    "not been cleared or approved by the U.S. Food and Drug Administration. The FDA has determined that such clearance "
    "or approval is not necessary. This test is used for clinical purposes. It should not be regarded as "
    "investigational or for research.",
    "The laboratory is certified under the Clinical Laboratory Improvement Amendments of 1988 (CLIA-88) as qualified "
    "to perform high complexity clinical laboratory testing. Immunohistochemical stains were performed on "
    "formalin-fixed, paraffin-embedded tissue with appropriate positive and negative controls.",
    "Fixation: the specimen was placed in 10% neutral buffered formalin within one hour of excision and fixed for 6 to "
    "72 hours, in keeping with ASCO/CAP guidelines for hormone receptor and HER2 testing.",
    "Confidentiality notice: this report contains privileged health information. If you have received it in error, "
    "notify the sender and destroy all copies. Unauthorised review, use or disclosure is prohibited.",
]


@dataclass(frozen=True)
class SyntheticCase:
    """A synthetic report with the facts it was written from (tests and benchmarks score summaries on them)."""

    case_id: str
    text: str
    histologic_type: str
    grade: int
    tubules: int
    pleomorphism: int
    mitoses: int
    growth_pattern: str
    til_level: str  # low / moderate / high
    necrosis: str  # present / absent / possible
    size_cm: float
    lvi: str  # present / absent / possible
    dcis: str  # present / absent / possible
    dcis_pattern: str | None
    er: bool
    pr: bool
    her2: bool
    margins_negative: bool
    nodes_positive: int
    nodes_total: int


def _case_ids(n: int, rng: random.Random) -> list[str]:
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    ids = []
    for k in rng.sample(range(36**4), n):
        digits = "".join(alphabet[(k // 36**p) % 36] for p in (3, 2, 1, 0))
        ids.append(f"TCGA-SY-{digits}")
    return ids


def _state(rng: random.Random, status: str, name: str, short: str | None = None) -> str:
    """One statement of a finding's status in a random phrasing (sometimes the abbreviation)."""
    shown = short if short and rng.random() < 0.25 else name
    template = rng.choice({"absent": _ABSENT, "possible": _POSSIBLE, "present": _PRESENT}[status])
    return template.replace("{X}", shown[0].upper() + shown[1:]).replace("{x}", shown)


def _value(rng: random.Random, status: str) -> str:
    """A finding's status as a synoptic checklist value."""
    return rng.choice(
        {
            "absent": ["Absent", "Not identified", "None seen", "Negative", "Not present"],
            "possible": ["Cannot be excluded", "Indeterminate", "Cannot be ruled out", "Equivocal"],
            "present": ["Present", "Identified", "Present, focal"],
        }[status]
    )


def _ocr(text: str, rng: random.Random, rate: float) -> str:
    """OCR-like character confusions in free text (never in the diagnosis lines)."""
    swaps = [("l", "1"), ("O", "0"), ("m", "rn"), ("ti", "fi"), ("e", "c"), (" ", "  ")]
    out = []
    for word in text.split(" "):
        if rng.random() < rate:
            a, b = rng.choice(swaps)
            word = word.replace(a, b, 1)
        if rng.random() < rate / 3:
            word += rng.choice(["|", "~", "'", ","])
        out.append(word)
    return " ".join(out)


def _wrap(text: str, rng: random.Random) -> str:
    """Fixed-width lines as a scanner's page gives them, sometimes with a hyphenated break."""
    width, lines, line = rng.randint(68, 96), [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            if len(word) > 7 and word.isalpha() and rng.random() < 0.15:
                line, word = f"{line} {word[:3]}-", word[3:]
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return "\n".join([*lines, line])


_NOTES = (
    "Explanatory notes. The Nottingham combined histologic grade adds scores for tubule formation, nuclear "
    "pleomorphism and mitotic count, each from one to three; totals of three to five are low, six to seven "
    "intermediate and eight to nine high. Mitotic counts depend on the field diameter of the microscope, which for "
    "this instrument is 0.55 mm. Tumor size is the largest dimension of the invasive component measured on the "
    "slide and correlated with the gross and imaging findings; when several foci are present the largest is used "
    "for staging and the others are listed separately. Hormone receptor results follow the ASCO/CAP guideline, "
    "with one to ten percent staining reported as low positive. HER2 immunohistochemistry is scored from zero to "
    "three plus; equivocal results are reflexed to in situ hybridization and reported in an addendum. Stromal "
    "tumor-infiltrating lymphocytes are scored over the stromal area within the tumor borders following the "
    "international working group recommendations. Pathologic staging follows the AJCC eighth edition and is "
    "based on the information available to the pathologist at the time of this report."
)


def _receptor_lines(rng: random.Random, er: bool, pr: bool, her2: bool) -> list[str]:
    er_pct = rng.randint(60, 100) if er else 0
    pr_pct = rng.randint(10, 95) if pr else 0
    ki67 = rng.randint(3, 70)
    her2_score = "3+" if her2 else rng.choice(["0", "1+"])
    style = rng.random()
    if style < 0.4:
        lines = [
            f"ESTROGEN RECEPTOR: {'POSITIVE' if er else 'NEGATIVE'} "
            f"({er_pct}% of tumor nuclei, {'strong' if er else 'no'} staining)",
            f"PROGESTERONE RECEPTOR: {'POSITIVE' if pr else 'NEGATIVE'} ({pr_pct}% of tumor nuclei)",
            f"HER2/NEU (IHC): {'POSITIVE' if her2 else 'NEGATIVE'} (score {her2_score})",
            f"Ki-67 proliferation index: {ki67}%",
        ]
    elif style < 0.7:
        lines = [
            f"Immunohistochemistry performed on block A3 shows the tumor cells to be estrogen receptor "
            f"{'positive' if er else 'negative'} ({er_pct}%), progesterone receptor {'positive' if pr else 'negative'} "
            f"({pr_pct}%) and HER2 {'positive' if her2 else 'negative'} ({her2_score}). Ki-67: {ki67}%."
        ]
    else:
        lines = [
            "Marker      Result      Percent     Intensity",
            f"ER          {'Positive' if er else 'Negative'}    {er_pct}%         {'3+' if er else '0'}",
            f"PR          {'Positive' if pr else 'Negative'}    {pr_pct}%         {'2+' if pr else '0'}",
            f"HER2        {'Positive' if her2 else 'Negative'}    score {her2_score}",
            f"Ki-67       {ki67}%",
        ]
    return lines


def _stage(size: float, nodes_positive: int) -> str:
    t = "pT1c" if size <= 2 else "pT2" if size <= 5 else "pT3"
    n = "pN0" if nodes_positive == 0 else "pN1a" if nodes_positive <= 3 else "pN2a"
    return f"{t} {n}"


@dataclass(frozen=True)
class _Draw:
    """Everything drawn for one synthetic case before its report is written."""

    raw_type: str  # as the report words it
    histologic_type: str
    growth: str
    grade: int
    tubules: int
    pleo: int
    mitoses: int
    til_level: str
    necrosis: str
    size: float
    lvi: str
    dcis: str
    dcis_pattern: str | None
    dcis_grade: int
    er: bool
    pr: bool
    her2: bool
    margins_negative: bool
    margin_mm: float
    nodes_total: int
    nodes_positive: int
    calcifications: bool
    side: str
    procedure: str
    ocr: float
    verbosity: int  # 0 terse, 1 usual, 2 long-winded report
    stromal_tils: int
    mitoses_count: int


def _draw(rng: random.Random, facts: CaseFacts) -> _Draw:
    """The case's findings; `facts`, where set, fix the type (lobular or ductal), grade and necrosis."""
    raw_type, histologic_type, growth = rng.choices(_TYPES, weights=_TYPE_WEIGHTS)[0]
    if facts.lobular is not None:
        raw_type, histologic_type, growth = rng.choice(_TYPES[2:4] if facts.lobular else _TYPES[0:2])
    lobular = "lobular" in histologic_type
    grade = rng.choices([1, 2, 3], weights=[2, 5, 4])[0] if facts.grade is None else facts.grade
    scores = {
        1: [(1, 1, 1), (2, 1, 1), (1, 2, 1)],
        2: [(3, 2, 1), (2, 2, 2), (3, 3, 1)],
        3: [(3, 3, 3), (3, 3, 2), (2, 3, 3)],
    }[grade]
    tubules, pleo, mitoses = rng.choice(scores if facts.grade is None else [s for s in scores if s[1] == grade])
    til_level = rng.choices(["low", "moderate", "high"], weights=[5, 3, 2] if grade < 3 else [2, 3, 4])[0]
    necrosis = rng.choices(["present", "absent", "possible"], weights=[3 if grade == 3 else 1, 6, 1])[0]
    if facts.necrosis is not None:
        necrosis = "present" if facts.necrosis else "absent"
    size = round(rng.uniform(0.6, 6.5), 1)
    lvi = rng.choices(["present", "absent", "possible"], weights=[4, 5, 1])[0]
    dcis = "absent" if lobular else rng.choices(["present", "absent", "possible"], weights=[13, 6, 1])[0]
    dcis_pattern = rng.choice(_DCIS_PATTERNS) if dcis == "present" else None
    dcis_grade = rng.randint(1, 3)
    er = rng.random() < 0.75
    pr = er and rng.random() < 0.8
    her2 = rng.random() < 0.18
    margins_negative = rng.random() < 0.85
    margin_mm = round(rng.uniform(0.5, 25.0), 1)
    nodes_total = rng.randint(1, 22)
    nodes_positive = rng.randint(1, min(nodes_total, 6)) if rng.random() < 0.4 else 0
    calcifications = rng.random() < 0.5
    side, procedure = rng.choice(_SIDES), rng.choice(_PROCEDURES)
    ocr = rng.choice([0.0, 0.01, 0.03, 0.06])
    verbosity = rng.choices([0, 1, 2], weights=[3, 5, 2])[0]
    stromal_tils = max(1, min(90, _TIL_WORDS[til_level][1] + rng.randint(-4, 15)))
    mitoses_count = rng.randint(*_MITOSES_PER_10HPF[mitoses])
    return _Draw(
        raw_type,
        histologic_type,
        growth,
        grade,
        tubules,
        pleo,
        mitoses,
        til_level,
        necrosis,
        size,
        lvi,
        dcis,
        dcis_pattern,
        dcis_grade,
        er,
        pr,
        her2,
        margins_negative,
        margin_mm,
        nodes_total,
        nodes_positive,
        calcifications,
        side,
        procedure,
        ocr,
        verbosity,
        stromal_tils,
        mitoses_count,
    )


class _Writer:
    """Writes one report's free text (OCR noise, then scanner line wrapping) and numbers its page breaks."""

    def __init__(self, case_id: str, rng: random.Random, d: _Draw):
        self.case_id, self.rng, self.d, self.page = case_id, rng, d, 0
        self.parts = ["A"] + ["B", "C", "D", "E"][: rng.randint(1, 1 + 3 * min(d.verbosity, 1))]
        self.part_names = {
            "A": f"{d.side.capitalize()} breast, {d.procedure}",
            "B": "Sentinel lymph node(s)",
            "C": "Additional superior margin",
            "D": "Axillary contents, level I and II",
            "E": "Additional deep margin",
        }

    def free(self, text: str) -> str:
        return _wrap(_ocr(text, self.rng, self.d.ocr), self.rng)

    def page_break(self) -> list[str]:
        self.page += 1
        return ["", f"Page {self.page} of 4      {self.case_id}      SURGICAL PATHOLOGY      (continued)", ""]


def _opening(w: _Writer) -> list[str]:
    """Header, clinical history, the specimen list and (in wordier reports) the intraoperative consultation."""
    rng, d = w.rng, w.d
    lines = [
        "*** SYNTHETIC REPORT - MADE UP BY histoldm FOR TESTING - NOT PATIENT DATA ***",
        "SURGICAL PATHOLOGY REPORT",
        f"Patient: SYNTHETIC, PATIENT    Case: {w.case_id}    MRN: 000-{rng.randint(10000, 99999)}",
        f"Submitting physician: Dr. Example    Received: 01/{rng.randint(10, 28)}/2009",
        "Pathology Department, 100 Example Street, Sample City, ST 00000   Tel (000) 555-0100   Fax (000) 555-0101",
        "",
        "CLINICAL HISTORY:",
        w.free(
            f"{rng.randint(35, 82)}-year-old female with a palpable {d.side} breast mass, first noticed "
            f"{rng.randint(2, 14)} months ago. The mammogram showed a spiculated mass with "
            f"{'associated' if d.calcifications else 'no'} "
            f"calcifications. Core biopsy at an outside institution showed carcinoma. "
            + rng.choice(
                [
                    "No prior history of malignancy.",
                    "Family history of breast cancer (mother).",
                    "History of hypertension and type 2 diabetes.",
                ]
            )
        ),
        "",
        "SPECIMEN(S) RECEIVED:",
        *[f"{p}: {w.part_names[p]}" for p in w.parts],
        "",
    ]
    if "B" in w.parts and d.verbosity:
        found = "metastatic carcinoma present" if d.nodes_positive else "no tumor seen"
        lines += [
            "INTRAOPERATIVE CONSULTATION:",
            w.free(
                f"Frozen section of the sentinel lymph node(s) by Dr. Example: "
                f"{found} (FSB1). Touch preparation performed."
            ),
            "",
        ]
    return lines


def _gross(w: _Writer) -> list[str]:
    """The gross description with its cassette key: full of sizes that are NOT the tumour size."""
    rng, d = w.rng, w.d
    dims = f"{round(rng.uniform(8, 25), 1)} x {round(rng.uniform(6, 18), 1)} x {round(rng.uniform(2, 7), 1)} cm"
    skin = (
        ""
        if "mastectomy" not in d.procedure
        else f" with an overlying skin ellipse of {round(rng.uniform(10, 20), 1)} x {round(rng.uniform(3, 8), 1)} "
        "cm and an unremarkable nipple"
    )
    size = d.size
    gross = [
        "A. The specimen is received fresh in a container labeled with the patient's name and "
        f"'{d.side} breast'. It consists of a {d.procedure} specimen measuring {dims}{skin}. "
        "The margins are inked as follows: superior blue, inferior green, medial yellow, lateral orange, anterior red "
        f"and deep black. Serial sectioning reveals a firm, tan-white, stellate mass measuring {size} x "
        f"{round(size * 0.8, 1)} x {round(size * 0.6, 1)} cm, located {rng.randint(1, 9)} cm from the nipple and "
        f"{d.margin_mm / 10 + 0.1:.1f} cm from the closest (deep) margin. The remaining breast parenchyma is "
        f"composed of {rng.randint(30, 90)}% adipose tissue and "
        f"{rng.choice(['fibrous', 'fibrocystic', 'unremarkable'])} tissue. "
        "A biopsy clip is identified within the mass. Representative sections are submitted as follows:",
    ]
    n_cassettes = rng.randint(3, [6, 20, 70][d.verbosity])
    for k in range(1, n_cassettes + 1):
        gross.append(
            f"A{k}: "
            + rng.choice(
                [
                    "mass with deep margin",
                    "mass, full face",
                    "superior margin, perpendicular",
                    "inferior margin",
                    "nipple",
                    "upper outer quadrant, random",
                    "lower inner quadrant",
                    "biopsy site",
                    "skin",
                    "medial margin",
                    "lateral margin",
                ]
            )
        )
    for p in w.parts[1:]:
        count = rng.randint(1, 8)
        gross.append(
            f"{p}. Received in formalin labeled '{w.part_names[p].lower()}' is a {round(rng.uniform(1, 9), 1)} x "
            f"{round(rng.uniform(1, 6), 1)} x {round(rng.uniform(0.5, 3), 1)} cm portion of fibroadipose tissue. "
            f"{count} possible lymph node candidates ranging from {round(rng.uniform(0.2, 0.6), 1)} to "
            f"{round(rng.uniform(0.7, 2.5), 1)} cm are identified. Entirely submitted in cassettes {p}1-{p}{count + 1}."
        )
    return ["GROSS DESCRIPTION:", *[w.free(g) if not re.match(r"^[A-E]\d+:", g) else g for g in gross], *w.page_break()]


def _microscopic(w: _Writer) -> list[str]:
    """The microscopic description (drawn for every report, written only in the wordier ones)."""
    rng, d = w.rng, w.d
    tubules = ["", "prominent (more than 75%)", "moderate (10-75%)", "minimal (less than 10%)"][d.tubules]
    calcifications = (
        "Microcalcifications are present in benign ducts and in the tumor"
        if d.calcifications
        else "No microcalcifications are seen"
    )
    micro = [
        f"Sections of the breast show an infiltrating carcinoma growing in {d.growth} within a desmoplastic stroma.",
        f"Tubule formation is {tubules}.",
        f"The tumor cells show {_PLEO_WORDS[d.pleo]} nuclear pleomorphism.",
        f"Mitotic activity is {_MITOSIS_WORDS[d.mitoses]}, {d.mitoses_count} mitoses per 10 high-power fields.",
        f"There is a {_TIL_WORDS[d.til_level][0]} lymphocytic infiltrate "
        f"(stromal tumor-infiltrating lymphocytes about {d.stromal_tils}%).",
        _state(rng, d.necrosis, "tumor necrosis") + ".",
        f"{calcifications}.",
        "The background breast shows "
        + rng.choice(
            ["fibrocystic change.", "columnar cell change.", "usual ductal hyperplasia.", "no significant abnormality."]
        ),
    ]
    lines = ["MICROSCOPIC DESCRIPTION:", *micro, ""] if d.verbosity else []
    if d.verbosity == 2:
        lines += [
            w.free(
                f"Part {p}: sections of the {w.part_names[p].lower()} show {rng.randint(1, 9)} lymph nodes and "
                "fibroadipose tissue with dilated vessels, focal fat necrosis related to the prior procedure, and "
                "scattered benign ducts. Levels were cut on each block and reviewed together with a keratin stain "
                "where the hematoxylin and eosin appearance was not conclusive."
            )
            for p in w.parts[1:]
        ]
    return lines


def _diagnosis(rng: random.Random, d: _Draw) -> list[str]:
    """Part A's final diagnosis as narrative bullets in capitals or one of three synoptic layouts."""
    dcis_text = (
        f"Ductal carcinoma in situ, {d.dcis_pattern} type, nuclear grade {d.dcis_grade}, comprising "
        f"{rng.randint(5, 30)}% of the tumor"
        if d.dcis == "present"
        else _state(rng, d.dcis, "ductal carcinoma in situ", "DCIS")
    )
    lvi_text = _state(rng, d.lvi, "lymphovascular invasion", "LVI")
    nec_text = _state(rng, d.necrosis, "tumor necrosis")
    margin_text = (
        f"Margins negative for carcinoma; closest margin (deep) {d.margin_mm} mm"
        if d.margins_negative
        else "Invasive carcinoma is present at the deep margin (margin positive)"
    )
    til_word = _TIL_WORDS[d.til_level][0]
    til_text = f"Tumor-infiltrating lymphocytes: {til_word} ({d.stromal_tils}% of stroma)"
    total = d.tubules + d.pleo + d.mitoses
    score = f"tubules {d.tubules}, nuclear pleomorphism {d.pleo}, mitoses {d.mitoses}; total score {total}/9"
    style = rng.random()
    if style < 0.35:  # narrative bullets in capitals
        return [
            f"A. BREAST, {d.side.upper()}, {d.procedure.upper()}:",
            f"   - {d.raw_type.upper()}, NOTTINGHAM GRADE {d.grade} OF 3 ({score.upper()}).",
            f"   - TUMOR SIZE: {d.size} CM IN GREATEST DIMENSION.",
            f"   - {lvi_text.upper()}.",
            f"   - {dcis_text.upper()}.",
            f"   - {nec_text.upper()}.",
            f"   - {til_text.upper()}.",
            f"   - {margin_text.upper()}.",
        ]
    fields = [
        ("Histologic type", d.raw_type.capitalize()),
        ("Histologic grade (Nottingham)", f"Grade {d.grade} ({score})"),
        ("Tumor size", f"{d.size} cm (greatest dimension of invasive component)"),
        ("Growth pattern", d.growth),
        ("Tumor necrosis", _value(rng, d.necrosis)),
        ("Tumor-infiltrating lymphocytes", f"{til_word} ({d.stromal_tils}% of stroma)"),
        ("Lymph-vascular invasion", _value(rng, d.lvi)),
        (
            "Ductal carcinoma in situ",
            _value(rng, d.dcis) + (f", {d.dcis_pattern} type, nuclear grade {d.dcis_grade}" if d.dcis_pattern else ""),
        ),
        ("Margins", margin_text),
        ("Regional lymph nodes", f"{d.nodes_positive}/{d.nodes_total} positive"),
        ("Pathologic stage", _stage(d.size, d.nodes_positive)),
    ]
    if style < 0.6:
        return ["SYNOPTIC REPORT - INVASIVE CARCINOMA OF THE BREAST (CAP)"] + [f"   {k}: {v}" for k, v in fields]
    if style < 0.8:
        return ["BREAST CANCER SYNOPTIC CHECKLIST"] + [f"{k.upper()} {'.' * (34 - len(k))} {v}" for k, v in fields]
    return ["Synoptic report:"] + [f"{k}:\n   {v}" for k, v in fields]


def _other_parts(w: _Writer) -> list[str]:
    """The diagnosis of the node parts (the first holds the positive nodes) and the extra margin parts."""
    d = w.d
    nodes_text = f"{d.nodes_positive} of {d.nodes_total} lymph nodes positive for metastatic carcinoma"
    lines = []
    node_parts = [p for p in w.parts if p in "BD"]
    for p in node_parts:
        lines.append(
            f"{p}. LYMPH NODES, {w.part_names[p].upper()}: "
            + (nodes_text.upper() if p == node_parts[0] else "NEGATIVE FOR METASTATIC CARCINOMA (0 OF 3)")
            + "."
        )
    for p in (p for p in w.parts if p in "CE"):
        lines.append(f"{p}. {w.part_names[p].upper()}: BENIGN BREAST TISSUE, NEGATIVE FOR CARCINOMA.")
    if d.verbosity == 2:
        lines += ["", w.free(_NOTES)]
    return lines


def _closing(w: _Writer, receptors: list[str]) -> list[str]:
    """Comment, the receptor studies (in ancillary studies or an addendum), signature and disclaimers."""
    rng, verbosity = w.rng, w.d.verbosity
    lines = ["", *w.page_break()]
    if verbosity:
        lines += [
            "COMMENT:",
            w.free(
                "Controls stained appropriately. The case was reviewed at the breast tumor board. "
                "Results were communicated to Dr. Example by telephone on the day of sign-out. "
                + " ".join(_DISCLAIMERS[2 : 2 + verbosity])
            ),
            "",
        ]
    addenda = rng.randint(0, 2)
    if addenda == 0:
        lines += ["ANCILLARY STUDIES:", *receptors, ""]
    else:
        lines += ["ADDENDUM 1:", f"Hormone receptor and HER2 studies on block A{rng.randint(1, 5)}:", *receptors, ""]
        if addenda == 2:
            lines += [
                "ADDENDUM 2:",
                w.free(
                    "Additional levels were examined on the sentinel lymph node at the request of the "
                    "clinician; the findings do not change the diagnosis above."
                ),
                "",
            ]
    return lines + [
        "I attest that I have personally reviewed the slides and that this report reflects my interpretation.",
        f"Electronically signed by {rng.choice(_PATHOLOGISTS)} on 02/{rng.randint(10, 28)}/2009",
        *w.page_break(),
        *[w.free(x) for x in _DISCLAIMERS[:verbosity]],
        "*** END OF SYNTHETIC REPORT ***",
    ]


def make_synthetic_case(case_id: str, rng: random.Random, facts: CaseFacts | None = None) -> SyntheticCase:
    """One report; `facts` (the visible facts its tiles were drawn with) replace the drawn type, grade and
    necrosis, so the report states them: lobular or ductal, grade 1 (pleomorphism 1) or 3, necrosis
    present or absent."""
    d = _draw(rng, facts or CaseFacts())
    receptors = _receptor_lines(rng, d.er, d.pr, d.her2)
    w = _Writer(case_id, rng, d)
    lines = _opening(w) + _gross(w) + _microscopic(w)
    lines += ["FINAL DIAGNOSIS:", *_diagnosis(rng, d), *_other_parts(w), *_closing(w, receptors)]
    return SyntheticCase(
        case_id=case_id,
        text="\n".join(lines),
        histologic_type=d.histologic_type,
        grade=d.grade,
        tubules=d.tubules,
        pleomorphism=d.pleo,
        mitoses=d.mitoses,
        growth_pattern=d.growth,
        til_level=d.til_level,
        necrosis=d.necrosis,
        size_cm=d.size,
        lvi=d.lvi,
        dcis=d.dcis,
        dcis_pattern=d.dcis_pattern,
        er=d.er,
        pr=d.pr,
        her2=d.her2,
        margins_negative=d.margins_negative,
        nodes_positive=d.nodes_positive,
        nodes_total=d.nodes_total,
    )


def make_synthetic_cases(n: int, seed: int = 0, facts: Sequence[CaseFacts | None] = ()) -> list[SyntheticCase]:
    """n synthetic cases with unique ids; the same seed always gives the same cases. facts[i], where given,
    are the visible facts the i-th case states."""
    if n < 0 or n > 36**4:
        raise ValueError(f"n must be between 0 and {36**4}")
    rng = random.Random(seed)
    return [
        make_synthetic_case(cid, rng, facts[i] if i < len(facts) else None) for i, cid in enumerate(_case_ids(n, rng))
    ]


def make_synthetic_reports(n: int, seed: int = 0, facts: Sequence[CaseFacts | None] = ()) -> list[dict[str, str]]:
    """n synthetic reports as `{case_id, text}` dicts, the shape of the JSONL input."""
    return [{"case_id": c.case_id, "text": c.text} for c in make_synthetic_cases(n, seed, facts)]
