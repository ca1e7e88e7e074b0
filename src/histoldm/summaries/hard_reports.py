"""Hard made-up TCGA-BRCA-style reports with a ground truth, to measure whether summaries are true.

`synthetic` writes one tumour part per report, with every diagnostic statement about the current
specimen. Real reports are harder, and a reader that treats them as one flat text states false
things: an addendum corrects a receptor or the grade after the diagnosis was signed; the
clinical history names a prior cancer of the other breast; one specimen part is "negative for
DCIS" while the main part has DCIS; LCIS has central necrosis while the invasive tumour has none;
node counts are split over sentinel and non-sentinel parts and written in many notations; words
arrive OCR'd ("lnfiltrating"). Each `HardReport` carries the case's facts (kind -> canonical
value), the phrasings a correct summary may use for each, and the planted traps: the wrong value
a naive reader would state, with the pattern that plants it. `summary_oracle` scores summaries
against them.

Reports are 366 to 725 words, the range of the reports that showed the problem. Every report
says on its first line that it is synthetic; case ids are `TCGA-SY-H...` (tissue-source code
`SY`, which no TCGA site uses; `H` for hard).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from histoldm.summaries.synthetic import _DISCLAIMERS, _wrap

FACT_KINDS = (
    "laterality",
    "procedure",
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
    "margins",
    "tils",
)
FINDING_KINDS = ("lvi", "dcis", "lcis", "necrosis")
MIN_WORDS, MAX_WORDS = 366, 725

IDC, ILC, DCIS = "invasive ductal carcinoma", "invasive lobular carcinoma", "ductal carcinoma in situ"
_PROCEDURES = [
    "segmental mastectomy",
    "lumpectomy",
    "modified radical mastectomy",
    "simple mastectomy",
    "partial mastectomy",
    "total mastectomy",
]
_NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
    "twenty-one",
    "twenty-two",
    "twenty-three",
    "twenty-four",
    "twenty-five",
]
_FINDING_NAMES = {
    "lvi": (
        "LVI",
        "lymphovascular invasion",
        "lymph-vascular invasion",
        "lymphovascular space invasion",
        "angiolymphatic invasion",
        "LVSI",
    ),
    "dcis": ("DCIS", "ductal carcinoma in situ"),
    "lcis": ("LCIS", "lobular carcinoma in situ"),
    "necrosis": (
        "necrosis",
        "tumour necrosis",
        "tumor necrosis",
        "comedonecrosis",
        "comedo necrosis",
        "comedo-type necrosis",
    ),
}
_TYPE_FORMS = {
    IDC: (
        IDC,
        "IDC",
        "infiltrating ductal carcinoma",
        "invasive carcinoma of no special type",
        "invasive carcinoma NST",
        "invasive ductal carcinoma (NST)",
    ),
    ILC: (ILC, "ILC", "infiltrating lobular carcinoma"),
    DCIS: (DCIS, "DCIS"),
}
_RECEPTOR_FORMS = {
    "er": ("ER", "estrogen receptor", "oestrogen receptor"),
    "pr": ("PR", "PgR", "progesterone receptor"),
    "her2": ("HER2", "HER-2", "HER2/neu"),
}
_MARGIN_FORMS = {
    "negative": (
        "margins negative",
        "margin negative",
        "negative margins",
        "margins free",
        "margins clear",
        "clear margins",
        "margins: negative",
        "margins uninvolved",
        "margins are negative",
        "margins not involved",
    ),
    "positive": (
        "margins positive",
        "margin positive",
        "positive margin",
        "positive margins",
        "margin involved",
        "margins involved",
        "margins: positive",
        "involved margin",
        "margin: positive",
        "margins are positive",
    ),
}
_OCR_SWAPS = (("i", "l"), ("l", "1"), ("I", "l"), ("m", "rn"), ("l", "I"))
_PART_STYLES = ("dot", "dot", "paren", "part", "number", "specimen")  # "A.", "A)", "PART A:", "PART 1:", "Specimen A -"
_DIRECTIONS = ["SUPERIOR", "INFERIOR", "MEDIAL", "LATERAL", "DEEP", "ANTERIOR"]
_LVI_NAMES = (
    "LYMPHOVASCULAR INVASION",
    "LYMPH-VASCULAR INVASION",
    "ANGIOLYMPHATIC INVASION",
    "LYMPHOVASCULAR SPACE INVASION",
)


def _part_id(letter: str, style: str) -> str:
    return str("ABCDEFG".index(letter) + 1) if style == "number" else letter


def _part_heading(letter: str, style: str) -> str:
    """How the diagnosis opens a specimen part, in one of the styles reports use."""
    shown = _part_id(letter, style)
    return {
        "dot": f"{shown}.",
        "paren": f"{shown})",
        "part": f"PART {shown}:",
        "number": f"PART {shown}:",
        "specimen": f"Specimen {shown} -",
    }[style]


@dataclass(frozen=True)
class Trap:
    """A wrong value a naive reader states for `kind` (kind "ocr": an OCR'd word that must not be copied)."""

    kind: str
    wrong: str
    pattern: str  # what plants it: addendum, history, negative_part, in_situ_necrosis, node_part, itc, ...


@dataclass(frozen=True)
class HardReport:
    """A hard report and what a true summary of it may say."""

    case_id: str
    text: str
    facts: dict[str, str]  # kind -> canonical value (FACT_KINDS); a kind the report does not state is missing
    traps: tuple[Trap, ...]
    features: frozenset[str]  # planted patterns, for coverage counts (e.g. "nodes:words", "neoadjuvant_residual")
    parts: tuple[str, ...]  # specimen part letters
    notes: dict[str, str] = field(
        default_factory=dict
    )  # kind -> the report's short qualifier ("weakly positive (10%)", "pN1mi")

    @property
    def surface(self) -> dict[str, tuple[str, ...]]:
        """kind -> phrasings a correct summary may use for the fact's value."""
        return {kind: surface_forms(kind, value, self.facts) for kind, value in self.facts.items()}

    @property
    def words(self) -> int:
        return len(self.text.split())


def number_word(n: int) -> str:
    return _NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else str(n)


def _receptor_forms(kind: str, value: str, facts: dict[str, str]) -> tuple[str, ...]:
    """Phrasings of an ER, PR or HER2 status, with the joint forms (ER/PR, triple negative) the case allows."""
    sign = {"positive": "+", "negative": "-"}.get(value)
    forms = [f"{name} {value}" for name in _RECEPTOR_FORMS[kind]] + [
        f"{name}-{value}" for name in _RECEPTOR_FORMS[kind]
    ]
    forms += [f"{name}: {value}" for name in _RECEPTOR_FORMS[kind]]
    if sign:
        forms += [f"{name}{sign}" for name in _RECEPTOR_FORMS[kind]]
    if kind in ("er", "pr") and value == "positive":
        forms += [f"{name} weakly positive" for name in _RECEPTOR_FORMS[kind]]
        forms += [f"{name} low positive" for name in _RECEPTOR_FORMS[kind]] + [
            f"{name} low-positive" for name in _RECEPTOR_FORMS[kind]
        ]
        if facts.get("er") == facts.get("pr") == "positive":
            forms += ["ER/PR positive", "ER/PR+", "ER and PR positive", "hormone receptor positive", "HR+"]
    if kind in ("er", "pr") and value == "negative" and facts.get("er") == facts.get("pr") == "negative":
        forms += ["ER/PR negative", "ER/PR-", "ER and PR negative", "hormone receptor negative", "HR-"]
    if kind == "her2" and value == "positive":
        forms += ["HER2 3+", "HER2 amplified", "FISH amplified", "ISH amplified", "HER2 2+ FISH amplified"]
    if kind == "her2" and value == "negative":
        forms += [
            "HER2 0",
            "HER2 1+",
            "HER2 not amplified",
            "FISH not amplified",
            "FISH non-amplified",
            "ISH not amplified",
        ]
    if kind == "her2" and value == "equivocal":
        forms = ["HER2 equivocal", "HER2: equivocal", "HER2 2+ (equivocal)", "HER2 2+, equivocal"]
    if value == "negative" and facts.get("er") == facts.get("pr") == facts.get("her2") == "negative":
        forms += ["triple negative", "triple-negative"]
    return tuple(forms)


def surface_forms(kind: str, value: str, facts: dict[str, str] | None = None) -> tuple[str, ...]:
    """Phrasings that state `value` for `kind` (finding kinds: the names; `states` checks the polarity)."""
    facts = facts or {}
    if kind in FINDING_KINDS:
        return _FINDING_NAMES[kind]
    if kind == "laterality":
        return (f"{value} breast", value, f"{value}-sided")
    if kind == "procedure":
        extra = {"modified radical mastectomy": ("MRM",), "segmental mastectomy": ("segmental resection",)}.get(
            value, ()
        )
        return (value, *extra)
    if kind == "histologic_type":
        return _TYPE_FORMS[value]
    if kind == "grade":
        roman = {"1": "I", "2": "II", "3": "III"}[value]
        return (f"grade {value}", f"grade {roman}", f"G{value}", f"Nottingham {value}", f"grade {value}/3")
    if kind == "size":
        cm = float(value.split()[0])
        return (value, f"{cm:g}cm", f"{round(cm * 10):d} mm")
    if kind in ("er", "pr", "her2"):
        return _receptor_forms(kind, value, facts)
    if kind == "nodes":
        k, n = (int(x) for x in value.split("/"))
        forms = [value, f"{k} of {n}", f"{number_word(k)} of {number_word(n)}", f"{k}/{n}"]
        return tuple(dict.fromkeys(forms))
    if kind == "margins":
        return _MARGIN_FORMS["negative" if value == "negative" else "positive"]
    if kind == "tils":
        pct = value
        return (
            f"TILs {pct}",
            f"TILs: {pct}",
            f"TILs ({pct}",
            f"{pct} TILs",
            f"stromal TILs {pct}",
            f"{pct} stromal TILs",
            f"tumour-infiltrating lymphocytes {pct}",
            f"tumor-infiltrating lymphocytes {pct}",
            f"tumour-infiltrating lymphocytes ({pct}",
            f"tumor-infiltrating lymphocytes ({pct}",
            f"TILs, {pct}",
            f"TILs approximately {pct}",
            f"TIL {pct}",
            f"sTILs {pct}",
        )
    if kind == "ocr":
        return (value,)
    raise ValueError(f"unknown fact kind {kind!r}")


# --- writing a report -------------------------------------------------------------------------------


def _ocr_word(word: str, rng: random.Random) -> str | None:
    """The word with one OCR confusion (l/1/I, rn/m), or None when none applies."""
    options = [(a, b) for a, b in _OCR_SWAPS if a in word]
    if not options:
        return None
    a, b = rng.choice(options)
    i = rng.choice([m.start() for m in re.finditer(re.escape(a), word)])
    return word[:i] + b + word[i + len(a) :]


class _Noise:
    """OCR confusions on some words of free text, remembering every noisy word made (each is a trap)."""

    def __init__(self, rng: random.Random, rate: float):
        self.rng, self.rate, self.words = rng, rate, set()

    def __call__(self, text: str) -> str:
        out = []
        for word in text.split(" "):
            core = word.strip(".,;:()")
            if (
                len(core) >= 5
                and core.isalpha()
                and self.rng.random() < self.rate
                and (noisy := _ocr_word(core, self.rng))
            ):
                self.words.add(noisy)
                word = word.replace(core, noisy, 1)
            out.append(word)
        return " ".join(out)


def _pct_phrase(rng: random.Random, kind: str, value: str, weak: str | None) -> tuple[str, str]:
    """(diagnosis phrase, short table value) for ER/PR."""
    name = {
        "er": rng.choice(["ESTROGEN RECEPTOR (ER)", "Estrogen receptor", "ER"]),
        "pr": rng.choice(["PROGESTERONE RECEPTOR (PgR)", "Progesterone receptor", "PR"]),
    }[kind]
    if weak == "weak10":
        return f"{name}: WEAKLY POSITIVE (10%)", "weakly positive (10%)"
    if weak == "low":
        pct = rng.randint(2, 9)
        return f"{name}: LOW POSITIVE (1-10%), {pct}% of tumor nuclei, weak intensity", f"low positive ({pct}%)"
    if weak == "lt1":
        return f"{name}: NEGATIVE (<1% of tumor nuclei staining)", "negative (<1%)"
    if value == "positive":
        pct = rng.choice([70, 80, 85, 90, 95, 100])
        intensity = rng.choice(["strong", "moderate to strong", "strong"])
        return f"{name}: POSITIVE ({pct}%, {intensity} intensity)", f"positive ({pct}%, {intensity})"
    return f"{name}: NEGATIVE (0%)", "negative (0%)"


@dataclass
class _Case:
    """The plan of one case before it is written."""

    rng: random.Random
    facts: dict[str, str] = field(default_factory=dict)
    traps: list[Trap] = field(default_factory=list)
    features: set[str] = field(default_factory=set)

    def trap(self, kind: str, wrong: str, pattern: str) -> None:
        if self.facts.get(kind) != wrong:
            self.traps.append(Trap(kind, wrong, pattern))
        self.features.add(f"trap:{pattern}:{kind}")


def _plan(rng: random.Random) -> _Case:
    case = _Case(rng)
    f = case.facts
    scenario = rng.choices(
        ["invasive", "neoadjuvant_residual", "no_residual_invasive", "dcis_only"], weights=[60, 14, 10, 16]
    )[0]
    case.features.add(scenario)
    f["laterality"] = rng.choice(["left", "right"])
    f["procedure"] = rng.choice(_PROCEDURES)
    if scenario in ("invasive", "neoadjuvant_residual"):
        f["histologic_type"] = rng.choices([IDC, ILC], weights=[3, 1])[0]
        f["grade"] = rng.choice(["1", "2", "3"]) if f["histologic_type"] == IDC else rng.choice(["1", "2", "2"])
        f["size"] = f"{rng.uniform(0.4, 4.8):.1f} cm"
        f["lvi"] = rng.choice(["present", "absent", "absent"])
        if f["histologic_type"] == IDC:
            f["dcis"] = rng.choice(["present", "present", "absent"])
            f["lcis"] = rng.choice(["present", "absent", "absent", "absent"])
        else:
            f["dcis"] = rng.choice(["absent", "absent", "present"])
            f["lcis"] = "present"
        f["necrosis"] = rng.choice(["present", "absent", "absent"]) if f["grade"] != "1" else "absent"
        if rng.random() < 0.6:
            f["tils"] = f"{rng.choice([1, 5, 10, 15, 20, 30, 40, 50, 60, 70])}%"
    else:
        f["histologic_type"] = DCIS
        f["dcis"] = "present"
        f["lvi"] = "absent"
        if scenario == "dcis_only":
            f["necrosis"] = rng.choice(["present", "absent"])
            if rng.random() < 0.3:
                f["lcis"] = "present"
    f["margins"] = rng.choices(["negative", "positive"], weights=[4, 1])[0]
    return case


def _receptor_plan(case: _Case, scenario: str) -> dict[str, str | None]:
    """Receptor values and how they are written; None when the report does not state them (e.g. no residual tumour)."""
    rng, f = case.rng, case.facts
    if scenario == "no_residual_invasive" or (scenario == "dcis_only" and rng.random() < 0.5):
        return {}
    er = rng.choices(["positive", "negative"], weights=[3, 1])[0]
    pr = "positive" if er == "positive" and rng.random() < 0.8 else "negative"
    her2 = rng.choices(["positive", "negative"], weights=[1, 3])[0]
    plan: dict[str, str | None] = {"er": er, "pr": pr, "her2": her2, "er_weak": None, "pr_weak": None, "her2_ihc": None}
    if scenario == "dcis_only":
        plan["her2"] = None  # DCIS: ER (and sometimes PR) only
        if rng.random() < 0.5:
            plan["pr"] = None
    for kind in ("er", "pr"):
        if plan[kind] is None:
            continue
        if rng.random() < 0.3:
            weak = rng.choice(["weak10", "low", "lt1"])
            plan[f"{kind}_weak"] = weak
            plan[kind] = "negative" if weak == "lt1" else "positive"
    if plan["her2"] is not None:
        if rng.random() < 0.35:
            plan["her2_ihc"] = "2+"
        else:
            plan["her2_ihc"] = "3+" if plan["her2"] == "positive" else rng.choice(["0", "1+"])
    for kind in ("er", "pr", "her2"):
        if plan.get(kind) is not None:
            f[kind] = str(plan[kind])
    return plan


def _grade_text(rng: random.Random, grade: str) -> str:
    scores = {"1": (1, 1, 1), "2": (3, 2, 1), "3": (3, 3, 2)}[grade]
    roman = {"1": "I", "2": "II", "3": "III"}[grade]
    diff = {"1": "well", "2": "moderately", "3": "poorly"}[grade]
    return rng.choice(
        [
            f"NOTTINGHAM GRADE {grade} ({scores[0]}+{scores[1]}+{scores[2]} = {sum(scores)}/9)",
            f"HISTOLOGIC GRADE {roman} OF III",
            f"{diff.upper()} DIFFERENTIATED (GRADE {grade})",
            f"MODIFIED BLOOM-RICHARDSON GRADE {grade} OF 3 (SCORE {sum(scores)})",
        ]
    )


def _status_phrase(rng: random.Random, name: str, status: str) -> str:
    if status == "present":
        return rng.choice([f"{name} PRESENT", f"{name}: PRESENT", f"{name} IS IDENTIFIED", f"POSITIVE FOR {name}"])
    return rng.choice([f"NO {name} IDENTIFIED", f"{name}: NOT IDENTIFIED", f"NEGATIVE FOR {name}", f"{name} ABSENT"])


def _nodes(case: _Case, parts: list[tuple[str, str]]) -> tuple[list[tuple[str, str, str]], str]:
    """Node parts (letter, label, diagnosis line) and the synoptic node value; sets the nodes fact."""
    rng, f = case.rng, case.facts
    notation = rng.choice(["slash", "of", "paren", "words", "parts", "pn1mi", "itc"])
    case.features.add(f"nodes:{notation}")
    sentinel_n = rng.randint(1, 5)
    if notation == "parts":
        other_n = rng.randint(4, 16)
        s_pos = rng.randint(0, min(2, sentinel_n))
        o_pos = rng.randint(0, 3) if s_pos else 0
        k, n = s_pos + o_pos, sentinel_n + other_n
        s_text = f"{_status_line(rng, s_pos, sentinel_n)}"
        o_text = f"{_status_line(rng, o_pos, other_n)}"
        lines = [("SENTINEL LYMPH NODE(S)", s_text), ("AXILLARY LYMPH NODES, LEVEL I AND II (NON-SENTINEL)", o_text)]
        case.trap("nodes", f"{s_pos}/{sentinel_n}", "node_part")
        case.trap("nodes", f"{o_pos}/{other_n}", "node_part")
    else:
        n = rng.randint(2, 25) if notation in ("slash", "of", "paren", "words") else sentinel_n + rng.randint(0, 2)
        k = 0 if rng.random() < 0.5 else rng.randint(1, min(n, 7))
        if notation == "pn1mi":
            k = 1
            text = (
                f"MICROMETASTATIC CARCINOMA IN {number_word(k).upper()} OF {number_word(n).upper()} LYMPH NODES "
                f"(LARGEST FOCUS 0.{rng.randint(3, 18):02d} CM; pN1mi), NO EXTRANODAL EXTENSION"
            )
        elif notation == "itc":
            k = 0
            text = (
                f"ISOLATED TUMOR CELLS IN ONE OF {n} LYMPH NODES (CLUSTER 0.01 CM, KERATIN STAIN), "
                f"NEGATIVE FOR METASTATIC CARCINOMA (0/{n}); pN0(i+)"
            )
            case.trap("nodes", f"1/{n}", "itc")
        else:
            text = _status_line(rng, k, n, notation)
        lines = [
            (
                rng.choice(
                    [
                        "SENTINEL LYMPH NODE(S)",
                        f"AXILLARY SENTINEL LYMPH NODES #1-#{max(n, 2)}",
                        "LYMPH NODES, AXILLARY",
                    ]
                ),
                text,
            )
        ]
    f["nodes"] = f"{k}/{n}"
    start = len(parts)
    letters = "ABCDEFG"
    out = []
    for i, (label, text) in enumerate(lines):
        letter = letters[start + i]
        parts.append((letter, label))
        out.append((letter, label, text))
    synoptic = rng.choice([f"{k}/{n}", f"{k} of {n} positive", f"Positive: {k}; examined: {n}"])
    return out, synoptic


def _status_line(rng: random.Random, k: int, n: int, notation: str | None = None) -> str:
    notation = notation or rng.choice(["slash", "of", "paren"])
    if notation == "slash":
        return (
            f"NEGATIVE FOR METASTATIC CARCINOMA. LYMPH NODES: 0/{n}"
            if k == 0
            else f"METASTATIC CARCINOMA. LYMPH NODES: {k}/{n}, LARGEST DEPOSIT {rng.randint(3, 15)} MM"
        )
    if notation == "of":
        return (
            f"NO METASTATIC CARCINOMA IN 0 OF {n} LYMPH NODES"
            if k == 0
            else f"METASTATIC CARCINOMA IN {k} OF {n} LYMPH NODES"
        )
    if notation == "paren":
        return (
            "NEGATIVE FOR METASTATIC CARCINOMA" + f" (0/{n})"
            if k == 0
            else f"METASTATIC CARCINOMA IN {number_word(k).upper()} LYMPH NODE{'S' if k > 1 else ''} ({k}/{n})"
        )
    return (
        f"{number_word(k).upper()} OF {number_word(n).upper()} LYMPH NODES POSITIVE FOR METASTATIC CARCINOMA"
        if k
        else f"NONE OF {number_word(n).upper()} LYMPH NODES INVOLVED BY CARCINOMA"
    )


def _corrections(case: _Case, receptors: dict[str, str | None], other: str) -> dict[str, str]:
    """The values an addendum will correct, kind -> the old value the body of the report shows (each a trap)."""
    rng, f = case.rng, case.facts
    corrections: dict[str, str] = {}
    correctable = [k for k in ("er", "pr", "grade", "laterality") if k in f] + (
        ["her2"] if receptors.get("her2_ihc") == "2+" else []
    )
    if correctable and rng.random() < 0.4:
        for kind in rng.sample(correctable, k=min(len(correctable), rng.choice([1, 1, 2]))):
            if kind in ("er", "pr"):
                if receptors.get(f"{kind}_weak"):
                    continue
                corrections[kind] = "negative" if f[kind] == "positive" else "positive"
            elif kind == "grade":
                corrections[kind] = rng.choice([g for g in "123" if g != f["grade"]])
            elif kind == "laterality":
                corrections[kind] = other
            else:
                corrections[kind] = "equivocal"
            case.trap(kind, corrections[kind], "addendum")
    return corrections


def _history(case: _Case, scenario: str, corrections: dict[str, str], shown_side: str, other: str) -> str:
    """The clinical history: a prior cancer of the other breast, the pre-treatment biopsy, or nothing of note
    (traps planted)."""
    rng, f = case.rng, case.facts
    history_kind = (
        rng.choices(["contralateral", "plain", "family"], weights=[4, 3, 2])[0]
        if scenario in ("invasive", "dcis_only")
        else "neoadjuvant"
    )
    age = rng.randint(34, 84)
    if history_kind == "contralateral" and "laterality" not in corrections:
        year = rng.randint(1998, 2010)
        conserving = ("lumpectomy", "segmental mastectomy", "partial mastectomy")
        prior_proc = rng.choice(
            ["modified radical mastectomy", "simple mastectomy"] if f["procedure"] in conserving else conserving
        )
        prior_type = rng.choice([IDC, ILC])
        prior_er = rng.choice(["positive", "negative"])
        prior_grade = rng.choice("123")
        radiation = " and radiation" if prior_proc in conserving else ""
        history = (
            f"{age}-year-old woman with a history of {other} breast cancer ({prior_type}, grade {prior_grade}, "
            f"ER {prior_er}) treated by {prior_proc}{radiation} in {year}, now with a new {shown_side} breast mass "
            "found on screening mammography. "
            f"{rng.choice(['Core biopsy showed carcinoma.', 'Outside core biopsy reviewed.'])}"
        )
        case.features.add("history_contralateral")
        case.trap("laterality", other, "history")
        case.trap("procedure", prior_proc, "history")
        if f.get("er") and prior_er != f["er"]:
            case.trap("er", prior_er, "history")
        if f.get("grade") and prior_grade != f["grade"]:
            case.trap("grade", prior_grade, "history")
        if f["histologic_type"] != prior_type:
            case.trap("histologic_type", prior_type, "history")
    elif history_kind == "neoadjuvant":
        biopsy_grade = "3"
        bx = (
            f"invasive ductal carcinoma, grade {biopsy_grade}, ER {rng.choice(['positive (95%)', 'negative (0%)'])}, "
            f"HER2 {rng.choice(['positive (3+)', 'negative (1+)'])}"
        )
        history = (
            f"{age}-year-old woman with biopsy-proven {shown_side} breast {bx} on outside core biopsy, "
            "status post neoadjuvant chemotherapy "
            f"({rng.choice(['AC-T', 'TCHP', 'dose-dense AC followed by paclitaxel'])}). "
            f"Clip placed in the tumor. Clinical partial response on MRI."
        )
        case.features.add("history_neoadjuvant")
        if "grade" not in f or f["grade"] != biopsy_grade:
            case.trap("grade", biopsy_grade, "history")
        if f["histologic_type"] != IDC:
            case.trap("histologic_type", IDC, "history")
    elif history_kind == "family":
        history = (
            f"{age}-year-old woman, {shown_side} breast mass. "
            "Family history of breast cancer (mother, sister). BRCA testing pending."
        )
    else:
        history = (
            f"{shown_side.capitalize()} breast mass, {rng.randint(1, 4)}.{rng.randint(0, 9)} cm on ultrasound; "
            "biopsy-proven carcinoma."
        )
    return history


def _invasive_lines(
    case: _Case, scenario: str, shown: dict[str, str], lvi_name: str, noise: _Noise
) -> tuple[list[str], bool]:
    """The invasive tumour's diagnosis lines (type, grade and size, LVI, DCIS, LCIS), and whether its LCIS has
    central necrosis; the type word is sometimes OCR'd, a trap."""
    rng, f = case.rng, case.facts
    a: list[str] = []
    lcis_central = False
    word = rng.choice(["INVASIVE", "INFILTRATING"])
    kind_word = "DUCTAL" if f["histologic_type"] == IDC else "LOBULAR"
    type_text = f"{word} {kind_word} CARCINOMA"
    if f["histologic_type"] == IDC and rng.random() < 0.3:
        type_text = "INVASIVE CARCINOMA OF NO SPECIAL TYPE (DUCTAL)"
    if rng.random() < 0.35:  # the OCR'd type word that must never reach a summary
        bad = rng.choice(["lNFILTRATING", "lNVASIVE", "1NVASIVE", "CARCINORNA", "DUCTA1", "L0BULAR"])
        target = {
            "lNFILTRATING": "INFILTRATING",
            "lNVASIVE": "INVASIVE",
            "1NVASIVE": "INVASIVE",
            "CARCINORNA": "CARCINOMA",
            "DUCTA1": "DUCTAL",
            "L0BULAR": "LOBULAR",
        }[bad]
        if target in type_text:
            type_text = type_text.replace(target, bad, 1)
            noise.words.add(bad)
            case.features.add("ocr_in_diagnosis")
    prefix = "RESIDUAL " if scenario == "neoadjuvant_residual" else ""
    size = f["size"]
    a.append(
        f"{prefix}{type_text}, {_grade_text(rng, shown['grade'])}, "
        f"{rng.choice(['MEASURING', 'SIZE', ''])} {size.upper()}"
        f"{' IN GREATEST DIMENSION' if rng.random() < 0.5 else ''}".replace("  ", " ")
    )
    if scenario == "neoadjuvant_residual":
        a.append(
            f"TREATMENT EFFECT PRESENT; RESIDUAL CANCER CELLULARITY ABOUT {rng.randint(5, 60)}%, "
            f"TUMOR BED {float(size.split()[0]) + rng.uniform(0.8, 2.5):.1f} CM"
        )
    a.append(_status_phrase(rng, lvi_name, f["lvi"]))
    if f["dcis"] == "present":
        comedo = rng.random() < 0.5
        a.append(
            f"DUCTAL CARCINOMA IN SITU, {rng.choice(['CRIBRIFORM', 'SOLID', 'MICROPAPILLARY'])} TYPE, "
            f"{rng.choice(['INTERMEDIATE', 'HIGH'])} NUCLEAR GRADE{', WITH COMEDONECROSIS' if comedo else ''}, "
            f"{rng.randint(5, 30)}% OF TUMOR"
        )
        if comedo and f["necrosis"] == "absent":
            case.trap("necrosis", "present", "in_situ_necrosis")
    else:
        a.append(_status_phrase(rng, "DUCTAL CARCINOMA IN SITU", "absent"))
    if f["lcis"] == "absent" and rng.random() < 0.5:
        a.append(_status_phrase(rng, "LOBULAR CARCINOMA IN SITU", "absent"))
    elif f["lcis"] == "absent":
        del f["lcis"]  # not stated: not a fact of this report
    if f.get("lcis") == "present":
        lcis_central = f["necrosis"] == "absent" and rng.random() < 0.6
        a.append(
            f"LOBULAR CARCINOMA IN SITU, {'PLEOMORPHIC TYPE WITH CENTRAL NECROSIS' if lcis_central else 'CLASSIC TYPE'}"
        )
        if lcis_central:
            case.trap("necrosis", "present", "in_situ_necrosis")
    return a, lcis_central


def _margin_statement(case: _Case, invasive: bool, involved: str) -> str:
    """The tumour part's margin line: negative in one of three phrasings, or the lesion at the involved margin."""
    rng = case.rng
    if case.facts["margins"] == "negative":
        return rng.choice(
            [
                f"MARGINS NEGATIVE; CLOSEST MARGIN {rng.choice(['ANTERIOR', 'POSTERIOR', 'SUPERIOR'])} "
                f"AT {rng.randint(1, 15)} MM",
                "SURGICAL MARGINS FREE OF CARCINOMA",
                f"ALL MARGINS NEGATIVE (CLOSEST {rng.randint(2, 12)} MM, INFERIOR)",
            ]
        )
    lesion = "INVASIVE CARCINOMA" if invasive else "DUCTAL CARCINOMA IN SITU"
    return rng.choice(
        [
            f"{lesion} EXTENDS TO THE INKED {involved} MARGIN (MARGIN POSITIVE)",
            f"MARGINS POSITIVE: {lesion} AT THE {involved} MARGIN",
        ]
    )


def _part_a(
    case: _Case, scenario: str, shown: dict[str, str], lvi_name: str, involved: str, noise: _Noise
) -> tuple[list[str], bool]:
    """The diagnosis lines of the tumour part, and whether its LCIS has central necrosis."""
    rng, f = case.rng, case.facts
    invasive = scenario in ("invasive", "neoadjuvant_residual")
    a = []
    lcis_central = False
    if scenario == "no_residual_invasive":
        a.append("NO RESIDUAL INVASIVE CARCINOMA IDENTIFIED (ypT0 FOR THE INVASIVE COMPONENT)")
        a.append(
            f"RESIDUAL DUCTAL CARCINOMA IN SITU, {rng.choice(['INTERMEDIATE', 'HIGH'])} NUCLEAR GRADE, "
            f"CRIBRIFORM TYPE, SPANNING 0.{rng.randint(2, 9)} CM (ypTis)"
        )
        a.append(
            f"TUMOR BED WITH FIBROSIS AND HEMOSIDERIN-LADEN MACROPHAGES, {rng.uniform(1.5, 4.0):.1f} CM, "
            "CONSISTENT WITH TREATMENT EFFECT"
        )
        a.append(_status_phrase(rng, lvi_name, "absent"))
    elif scenario == "dcis_only":
        nec = ", WITH CENTRAL COMEDONECROSIS" if f["necrosis"] == "present" else ", WITHOUT NECROSIS"
        a.append(
            f"DUCTAL CARCINOMA IN SITU, {rng.choice(['HIGH', 'INTERMEDIATE'])} NUCLEAR GRADE, "
            f"{rng.choice(['SOLID AND CRIBRIFORM', 'CRIBRIFORM', 'SOLID'])} TYPES{nec}, "
            f"SPANNING {rng.uniform(0.5, 4.5):.1f} CM"
        )
        a.append(rng.choice(["NO INVASIVE CARCINOMA IDENTIFIED", "NEGATIVE FOR INVASIVE CARCINOMA"]))
        a.append(_status_phrase(rng, lvi_name, "absent"))
        case.trap("histologic_type", IDC, "in_situ_only")
    else:
        invasive_lines, lcis_central = _invasive_lines(case, scenario, shown, lvi_name, noise)
        a += invasive_lines
    if f.get("lcis") == "present" and not invasive:
        a.append("LOBULAR CARCINOMA IN SITU, CLASSIC TYPE, FOCAL")
    a.append(_margin_statement(case, invasive, involved))
    return a, lcis_central


@dataclass
class _Parts:
    """A case's specimen parts (letter, label) and how the report names them."""

    style: str
    labels: list[tuple[str, str]]
    node_lines: list[tuple[str, str, str]]  # (letter, label, diagnosis line)
    synoptic_nodes: str
    margin: str | None  # the extra margin part's letter, if any

    def id(self, letter: str) -> str:
        return _part_id(letter, self.style)

    def heading(self, letter: str) -> str:
        return _part_heading(letter, self.style)


def _specimen_parts(case: _Case, style: str, shown_side: str, involved: str) -> _Parts:
    """The tumour part, the node parts and maybe an extra margin part; a positive margin is never the one the
    extra margin part re-excises (that would clear it)."""
    rng, f = case.rng, case.facts
    labels: list[tuple[str, str]] = [("A", f"{shown_side.upper()} BREAST, {f['procedure'].upper()}")]
    node_lines, synoptic_nodes = _nodes(case, labels)
    margin = None
    if rng.random() < 0.7 or (f["dcis"] == "present"):
        margin = "ABCDEFG"[len(labels)]
        direction = rng.choice([d for d in _DIRECTIONS if d != involved])
        labels.append((margin, f"ADDITIONAL {direction} MARGIN, {shown_side.upper()} BREAST"))
    if f["dcis"] == "present" and margin:
        case.trap("dcis", "absent", "negative_part")
    case.features.add(f"parts:{len(labels)}")
    return _Parts(style, labels, node_lines, synoptic_nodes, margin)


def _her2_line(case: _Case, ihc: str | None, corrected: bool) -> str:
    """The HER2 result as the diagnosis writes it; an equivocal IHC score is settled by FISH, or by an addendum."""
    rng, f = case.rng, case.facts
    if ihc != "2+":
        return f"HER2 (IHC): {f['her2'].upper()} (SCORE {ihc})"
    ratio = f"{rng.uniform(2.2, 5.0):.1f}" if f["her2"] == "positive" else f"{rng.uniform(1.1, 1.8):.1f}"
    fish = "AMPLIFIED" if f["her2"] == "positive" else "NOT AMPLIFIED"
    case.features.add(f"her2_ish:{f['her2']}")
    case.trap("her2", "equivocal", "her2_ish")
    if corrected:
        return "HER2 (IHC, 4B5): EQUIVOCAL (2+); HER2 FISH HAS BEEN REQUESTED AND WILL BE REPORTED IN AN ADDENDUM"
    return f"HER2 (IHC): EQUIVOCAL (SCORE 2+). HER2 FISH: {fish} (HER2/CEP17 RATIO {ratio}); HER2 {f['her2'].upper()}"


def _receptor_text(
    case: _Case, receptors: dict[str, str | None], shown: dict[str, str], corrections: dict[str, str]
) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """The receptor lines (placed in the diagnosis, ancillary studies or an addendum) and, per kind, its
    (diagnosis line, table value): one draw per case, so every place states the same phrase."""
    rng = case.rng
    lines: list[str] = []
    phrases: dict[str, tuple[str, str]] = {}
    if not receptors:
        return lines, phrases
    for kind in ("er", "pr"):
        if receptors.get(kind) is None:
            continue
        weak = receptors.get(f"{kind}_weak")
        if weak:
            case.features.add(f"weak:{weak}")
            case.trap(kind, "negative" if weak != "lt1" else "positive", "weak_receptor")
        phrases[kind] = _pct_phrase(rng, kind, shown[kind], weak)
        lines.append(phrases[kind][0])
    if receptors.get("her2") is not None:
        lines.append(_her2_line(case, receptors["her2_ihc"], "her2" in corrections))
    return lines, phrases


def _til_line(case: _Case) -> str | None:
    """The stromal TIL estimate in one of its phrasings, when the case states one."""
    f = case.facts
    if "tils" not in f:
        return None
    line = case.rng.choice(
        [
            f"Stromal TILs: {f['tils']}",
            f"Tumor-infiltrating lymphocytes (stromal): approximately {f['tils']}",
            f"TILs estimated at {f['tils']} of the stromal area",
        ]
    )
    case.features.add("tils")
    return line


def _microscopic(
    case: _Case, invasive: bool, lcis_central: bool, til_line: str | None, parts: _Parts, noise: _Noise
) -> list[str]:
    """The microscopic description; about half its sentences get OCR noise."""
    rng, f = case.rng, case.facts
    micro = []
    if invasive:
        growth = "single files and targetoid arrays" if f["histologic_type"] == ILC else "nests, cords and glands"
        micro.append(
            f"Sections of part A show an infiltrating carcinoma arranged in {growth} in a desmoplastic stroma."
        )
        micro.append(
            {
                "present": "Foci of tumor necrosis are present in the invasive carcinoma.",
                "absent": "Tumor necrosis is not identified in the invasive component.",
            }[f["necrosis"]]
        )
        if lcis_central:
            micro.append("The adjacent lobular neoplasia is pleomorphic, with central necrosis and calcifications.")
        if til_line:
            micro.append(til_line + ".")
        micro.append(
            {
                "present": "Tumor emboli are seen in dermal and peritumoral lymphatic spaces.",
                "absent": "No lymphovascular invasion is seen.",
            }[f["lvi"]]
        )
    else:
        micro.append(
            "Sections show ducts distended by atypical epithelial cells with "
            + ("central comedo-type necrosis." if f.get("necrosis") == "present" else "no necrosis.")
            + " No stromal invasion is seen on multiple levels and keratin stains."
        )
    micro.append(
        f"Part {parts.id(parts.margin)} consists of benign breast tissue."
        if parts.margin
        else "The remaining parts are described below."
    )
    return [noise(m) if rng.random() < 0.5 else m for m in micro]


def _synoptic(
    case: _Case,
    scenario: str,
    shown: dict[str, str],
    til_line: str | None,
    parts: _Parts,
    receptor_phrases: dict[str, tuple[str, str]],
) -> list[str]:
    """The CAP-style synoptic summary (always for invasive cases, usually for the others)."""
    rng, f = case.rng, case.facts
    invasive = scenario in ("invasive", "neoadjuvant_residual")
    if not (invasive or rng.random() < 0.7):
        return []
    syn = [rng.choice(["SYNOPTIC REPORT - BREAST (CAP protocol)", "CANCER CASE SUMMARY", "Checklist:"])]
    syn.append(f"Procedure: {f['procedure'].capitalize()}")
    syn.append(f"Specimen laterality: {shown['laterality'].capitalize()}")
    if invasive:
        syn.append(f"Histologic type: {f['histologic_type'].capitalize()}")
        syn.append(f"Histologic grade (Nottingham): {shown['grade']}")
        syn.append(f"Tumor size: {f['size']}")
        absent = ["Not identified", "Absent", "Not identified in the invasive component"]
        syn.append(f"Tumor necrosis: {'Present' if f['necrosis'] == 'present' else rng.choice(absent)}")
        syn.append(f"Lymphovascular invasion: {'Present' if f['lvi'] == 'present' else 'Not identified'}")
        syn.append(f"Ductal carcinoma in situ: {'Present' if f['dcis'] == 'present' else 'Not identified'}")
        if til_line:
            syn.append(f"Stromal TILs: {f['tils']}")
    else:
        syn.append(
            "Histologic type: Ductal carcinoma in situ"
            + (" (residual, post-treatment)" if scenario != "dcis_only" else "")
        )
        if "necrosis" in f:
            syn.append(
                f"Necrosis: {'Present (central, comedo-type)' if f['necrosis'] == 'present' else 'Not identified'}"
            )
    syn.append(f"Margins: {'Negative for carcinoma' if f['margins'] == 'negative' else 'Positive (involved)'}")
    syn.append(f"Regional lymph nodes: {parts.synoptic_nodes}")
    if rng.random() < 0.5:
        syn += [f"{kind.upper()}: {value}" for kind, (_, value) in receptor_phrases.items()]
    return syn


def _correction(case: _Case, corrections: dict[str, str], kind: str, old: str) -> str:
    """The addendum sentence that corrects `kind` from `old` to the true value."""
    rng, f = case.rng, case.facts
    new = f[kind]
    if kind in ("er", "pr"):
        name = {"er": "estrogen receptor", "pr": "progesterone receptor"}[kind]
        extra = (
            " The tumor is therefore triple negative."
            if f.get("er") == f.get("pr") == f.get("her2") == "negative"
            and kind == [k for k in corrections if k in ("er", "pr")][-1]
            else ""
        )  # said once, after the last
        return rng.choice(
            [
                f"The {name} result in the original report was recorded in error as {old}. "
                f"Corrected result: {kind.upper()} {new.upper()} "
                f"({'0%' if new == 'negative' else '85%, strong'}).{extra}",
                f"{name.capitalize()} was repeated on block A{rng.randint(2, 6)} with appropriate controls: "
                f"{new.upper()}. This supersedes the result reported above.{extra}",
            ]
        )
    if kind == "grade":
        return (
            "On review at the breast tumor board, the Nottingham histologic grade is revised "
            f"from grade {old} to grade {new}. The remaining diagnosis is unchanged."
        )
    if kind == "laterality":
        return (
            f"AMENDED: the specimen laterality was transcribed incorrectly as {old.upper()}. "
            f"All parts of this case are from the {new.upper()} breast. The diagnoses are otherwise unchanged."
        )
    ratio = f"{rng.uniform(2.2, 5.0):.1f}" if f["her2"] == "positive" else f"{rng.uniform(1.1, 1.8):.1f}"
    verdict = "AMPLIFIED. HER2 POSITIVE" if f["her2"] == "positive" else "NOT AMPLIFIED. HER2 NEGATIVE"
    return (
        f"HER2 FISH (block A{rng.randint(2, 6)}): HER2/CEP17 ratio {ratio}, average HER2 copy number "
        f"{rng.uniform(2, 9):.1f} per cell: {verdict} "
        "(ASCO/CAP 2018)."
    )


def _gross(case: _Case, parts: _Parts, shown_side: str, invasive: bool, noise: _Noise) -> list[str]:
    """The gross description, full of sizes that are not the tumour size."""
    rng = case.rng
    gross = [
        noise(
            f"{parts.id('A')}. Received fresh labeled '{shown_side} breast' is a {case.facts['procedure']} specimen, "
            f"{rng.uniform(8, 22):.1f} x {rng.uniform(6, 15):.1f} x {rng.uniform(2, 6):.1f} cm. "
            "Inked: superior blue, inferior green, deep black. "
            f"Sectioning shows a firm tan-white {'tumor bed' if not invasive else 'mass'} measuring "
            f"{rng.uniform(0.8, 5.5):.1f} cm, {rng.randint(2, 20)} mm from the deep margin. "
            f"Representative sections in A1-A{rng.randint(6, 18)}."
        )
    ]
    for letter, label in parts.labels[1:]:
        gross.append(
            noise(
                f"{parts.id(letter)}. Received in formalin labeled '{label.lower()}' is fibroadipose tissue, "
                f"{rng.uniform(1, 8):.1f} x {rng.uniform(1, 5):.1f} cm. "
                f"Entirely submitted in {letter}1-{letter}{rng.randint(2, 6)}."
            )
        )
    return gross


def _intraop(case: _Case) -> str | None:
    """The intraoperative consultation, when there was one; its frozen section may miss a positive margin."""
    rng, f = case.rng, case.facts
    if rng.random() >= 0.45:
        return None
    fs = "NEGATIVE FOR CARCINOMA" if f["nodes"].startswith("0/") else "POSITIVE FOR METASTATIC CARCINOMA"
    intraop = f"FSB1 (sentinel node, touch prep and frozen section): {fs}. Called to the operating room by Dr. Example."
    if f["margins"] == "positive" and rng.random() < 0.6:  # the frozen section missed what the permanent sections show
        intraop += (
            " FSA1 (closest margin, frozen section): NEGATIVE FOR CARCINOMA; "
            "FINAL DIAGNOSIS DEFERRED TO PERMANENT SECTIONS."
        )
        case.trap("margins", "negative", "intraoperative")
    return intraop


def _headings(rng: random.Random) -> dict[str, str]:
    """Each section's heading, in one of the wordings reports use."""
    return {
        "history": rng.choice(["CLINICAL HISTORY:", "Clinical Information:", "HISTORY:", "Clinical Data:"]),
        "specimens": rng.choice(["SPECIMENS RECEIVED:", "Specimen(s):", "SOURCE OF SPECIMEN:", "Specimens submitted:"]),
        "gross": rng.choice(["GROSS DESCRIPTION:", "Gross Examination:", "MACROSCOPIC DESCRIPTION:"]),
        "intraop": rng.choice(
            ["INTRAOPERATIVE CONSULTATION:", "Frozen Section Diagnosis:", "INTRAOPERATIVE DIAGNOSIS:"]
        ),
        "micro": rng.choice(["MICROSCOPIC DESCRIPTION:", "Microscopic Examination:", "MICROSCOPIC:"]),
        "diagnosis": rng.choice(["FINAL DIAGNOSIS:", "DIAGNOSIS:", "Final Pathologic Diagnosis:"]),
        "comment": rng.choice(["COMMENT:", "Comment(s):", "NOTE:"]),
        "ancillary": rng.choice(["ANCILLARY STUDIES:", "Immunohistochemistry:", "BIOMARKER STUDIES:"]),
        "addendum": rng.choice(
            [
                f"ADDENDUM ({rng.randint(1, 12):02d}/{rng.randint(10, 28)}/2010):",
                "AMENDMENT #1:",
                "ADDENDUM REPORT:",
                "REVISED REPORT - AMENDMENT:",
            ]
        ),
    }


def _diagnosis(
    rng: random.Random,
    heading: str,
    parts: _Parts,
    part_a: list[str],
    receptor_lines: list[str],
    til_line: str | None,
    margin_line: str,
) -> tuple[list[str], bool]:
    """The final diagnosis per part, and whether it states the receptor lines (about half the time)."""
    diagnosis = [heading, f"{parts.heading('A')} {parts.labels[0][1]}:", *[f"   - {line}." for line in part_a]]
    stated = bool(receptor_lines) and rng.random() < 0.5
    if stated:
        diagnosis += [f"   - {line}." for line in receptor_lines]
    for letter, label, text in parts.node_lines:
        diagnosis += [f"{parts.heading(letter)} {label}:", f"   - {text}."]
    if parts.margin:
        diagnosis += [f"{parts.heading(parts.margin)} {dict(parts.labels)[parts.margin]}:", f"   - {margin_line}."]
    if til_line and rng.random() < 0.5:
        diagnosis += [f"NOTE: {til_line}."]
    return diagnosis, stated


def _comment(heading: str, rng: random.Random, noise: _Noise) -> list[str]:
    return [
        heading,
        noise(
            rng.choice(
                [
                    "Controls stain appropriately. The case was reviewed with a second pathologist, who concurs.",
                    "Results were discussed with the surgeon on the day of sign-out. "
                    "Prior material reviewed where available.",
                    "Tumor board presentation requested. Block A3 is the best block for further studies.",
                ]
            )
        ),
    ]


def _assemble(
    case_id: str, rng: random.Random, sections: dict[str, list[str]], addendum: list[str], heading: str, corrected: bool
) -> str:
    """The report: a header, the sections in one of three orders, the addendum (at the top of some reports that
    correct a result, otherwise after the sections) and the signature."""
    amended_top = corrected and rng.random() < 0.25
    order = rng.choice(
        [
            ["history", "specimens", "intraop", "gross", "micro", "diagnosis", "synoptic", "comment", "ancillary"],
            ["diagnosis", "synoptic", "comment", "ancillary", "history", "specimens", "gross", "intraop", "micro"],
            ["specimens", "history", "diagnosis", "comment", "micro", "gross", "intraop", "synoptic", "ancillary"],
        ]
    )
    lines = [
        "*** SYNTHETIC HARD REPORT - MADE UP BY histoldm FOR TESTING - NOT PATIENT DATA ***",
        rng.choice(["SURGICAL PATHOLOGY REPORT", "Surgical Pathology Consultation Report", "PATHOLOGY REPORT - FINAL"]),
        f"Case: {case_id}    Accession: S10-{rng.randint(1000, 99999)}    "
        f"Collected: {rng.randint(1, 12):02d}/{rng.randint(10, 28)}/2010",
        "Pathology Department, 100 Example Street, Sample City, ST 00000",
        "",
    ]
    if amended_top:
        lines += ["**AMENDED REPORT** Reason for amendment:", *addendum, ""]
    for name in order:
        if sections.get(name):
            lines += [*sections[name], ""]
    if addendum and not amended_top:
        lines += [heading, *addendum, ""]
    lines.append(f"Electronically signed by {rng.choice(['A. Synthetic, MD', 'B. Example, MD', 'D. Fictional, MD'])}")
    return "\n".join(lines)


def _ocr_traps(case: _Case, noise: _Noise, text: str) -> None:
    """Each OCR'd word that made it into the final text is a trap: a summary must not copy it."""
    for word in sorted(noise.words):
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])", text):
            case.traps.append(Trap("ocr", word, "ocr"))
            case.features.add("trap:ocr:ocr")


def _notes(
    case: _Case,
    receptors: dict[str, str | None],
    receptor_phrases: dict[str, tuple[str, str]],
    corrections: dict[str, str],
) -> dict[str, str]:
    """kind -> the report's short qualifier of the fact (a weak receptor's percent, the HER2 score, pN1mi)."""
    f = case.facts
    notes = {
        kind: re.sub(r", [a-z ]+\)$", ")", value)
        for kind, (_, value) in receptor_phrases.items()
        if kind not in corrections
    }
    if receptors.get("her2_ihc"):
        ihc = receptors["her2_ihc"]
        notes["her2"] = (
            f"2+, FISH {'amplified' if f['her2'] == 'positive' else 'not amplified'}" if ihc == "2+" else ihc
        )
    notation = next(x.split(":")[1] for x in case.features if x.startswith("nodes:"))
    if notation in ("pn1mi", "itc"):
        notes["nodes"] = {"pn1mi": "pN1mi", "itc": "pN0(i+)"}[notation]
    return notes


def make_hard_report(case_id: str, rng: random.Random) -> HardReport:
    """One hard report: plan the case's facts, then write each section (the draws from `rng` in a fixed order)."""
    case = _plan(rng)
    f = case.facts
    scenario = next(
        s for s in ("invasive", "neoadjuvant_residual", "no_residual_invasive", "dcis_only") if s in case.features
    )
    receptors = _receptor_plan(case, scenario)
    noise = _Noise(rng, rng.choice([0.0, 0.02, 0.05]))
    other = "right" if f["laterality"] == "left" else "left"
    invasive = scenario in ("invasive", "neoadjuvant_residual")
    part_style = rng.choice(_PART_STYLES)
    lvi_name = rng.choice(_LVI_NAMES)
    case.features.add(f"part_style:{part_style}")

    corrections = _corrections(case, receptors, other)
    shown = {**f, **corrections}  # what the body of the report says
    shown_side = shown["laterality"]
    history = _history(case, scenario, corrections, shown["laterality"], other)

    involved = rng.choice(_DIRECTIONS)
    parts = _specimen_parts(case, part_style, shown_side, involved)
    part_a, lcis_central = _part_a(case, scenario, shown, lvi_name, involved, noise)
    margin_line = (
        "BENIGN BREAST TISSUE WITH FIBROCYSTIC CHANGE; NEGATIVE FOR DUCTAL CARCINOMA IN SITU AND INVASIVE CARCINOMA"
        if rng.random() < 0.6
        else "NO DCIS OR INVASIVE CARCINOMA IDENTIFIED IN THE ADDITIONAL TISSUE"
    )
    receptor_lines, receptor_phrases = _receptor_text(case, receptors, shown, corrections)
    til_line = _til_line(case)
    micro = _microscopic(case, invasive, lcis_central, til_line, parts, noise)
    synoptic = _synoptic(case, scenario, shown, til_line, parts, receptor_phrases)
    addendum = [_correction(case, corrections, kind, old) for kind, old in corrections.items()]
    receptors_in_addendum = bool(receptor_lines) and rng.random() < 0.35
    if corrections:
        case.features.add("addendum_correction")
    gross = _gross(case, parts, shown_side, invasive, noise)
    intraop = _intraop(case)

    heads = _headings(rng)
    sections: dict[str, list[str]] = {
        "history": [heads["history"], noise(history)],
        "specimens": [heads["specimens"], *[f"{parts.id(letter)}: {label.title()}" for letter, label in parts.labels]],
        "gross": [heads["gross"], *gross],
        "intraop": [heads["intraop"], intraop] if intraop else [],
        "micro": [heads["micro"], *micro],
    }
    in_diagnosis = [] if receptors_in_addendum else receptor_lines
    sections["diagnosis"], stated = _diagnosis(
        rng, heads["diagnosis"], parts, part_a, in_diagnosis, til_line, margin_line
    )
    receptor_lines_left = [] if stated else receptor_lines
    sections["synoptic"] = synoptic
    sections["comment"] = _comment(heads["comment"], rng, noise)
    if receptor_lines_left and not receptors_in_addendum:
        sections["ancillary"] = [heads["ancillary"], *receptor_lines_left]
    addendum_lines = []
    if receptors_in_addendum and receptor_lines_left:
        addendum_lines += [f"Hormone receptor and HER2 studies (block A{rng.randint(2, 6)}):", *receptor_lines_left]
    addendum_lines += addendum

    report = _assemble(case_id, rng, sections, addendum_lines, heads["addendum"], bool(addendum))
    text = _fit_length(report, rng, noise)
    _ocr_traps(case, noise, text)
    return HardReport(
        case_id=case_id,
        text=text,
        facts=dict(f),
        traps=tuple(case.traps),
        features=frozenset(case.features),
        parts=tuple(parts.id(letter) for letter, _ in parts.labels),
        notes=_notes(case, receptors, receptor_phrases, corrections),
    )


_FILLER = [
    "The slides and blocks were reviewed in their entirety. Levels were examined where indicated.",
    "Specimen fixation time and cold ischemia time are within the recommended limits for biomarker testing.",
    "Cassette key: A1-A3 tumor with deep margin; A4 superior margin; A5 inferior margin; A6 nipple; "
    "A7-A9 random sections.",
    "Breast imaging correlation: the lesion corresponds to the biopsy clip seen on the specimen radiograph.",
    "Gross photographs were taken. Residual tissue is retained for four weeks after sign-out.",
    *_DISCLAIMERS,
]


def _fit_length(text: str, rng: random.Random, noise: _Noise) -> str:
    """Pad with boilerplate (before the signature) until MIN_WORDS, wrap as a scanner does; long reports lose
    filler first."""
    body, _, signature = text.rpartition("\n")
    fillers = rng.sample(_FILLER, len(_FILLER))
    extra: list[str] = []
    while len((body + " " + " ".join(extra)).split()) < MIN_WORDS + rng.randint(0, 260) and fillers:
        extra.append(noise(fillers.pop()))
    if len((body + " " + " ".join(extra)).split()) + 4 > MAX_WORDS:
        extra = []
    block = f"\n{_wrap(' '.join(extra), rng)}\n" if extra else "\n"
    out = body + block + signature
    while len(out.split()) < MIN_WORDS:  # a body too long for a filler paragraph yet short: one line at a time
        out = out.replace("\n" + signature, "\nThe report was reviewed and approved.\n" + signature)
    return out


def _case_ids(n: int, rng: random.Random) -> list[str]:
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return [
        f"TCGA-SY-H{alphabet[k // 36**2]}{alphabet[k // 36 % 36]}{alphabet[k % 36]}"
        for k in rng.sample(range(36**3), n)
    ]


def make_hard_reports(n: int, seed: int = 0) -> list[HardReport]:
    """n hard reports with unique ids; the same seed always gives the same reports."""
    if n < 0 or n > 36**3:
        raise ValueError(f"n must be between 0 and {36**3}")
    rng = random.Random(seed)
    return [make_hard_report(cid, rng) for cid in _case_ids(n, rng)]
