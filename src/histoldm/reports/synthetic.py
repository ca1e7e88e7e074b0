"""Made-up TCGA-BRCA-style surgical pathology reports, for demos, tests and benchmarks.

No real TCGA report may ship with this project, yet the summariser must be exercised on text that
looks like the real thing: boilerplate headers, gross descriptions full of sizes that are NOT the
tumour size, synoptic lines, receptor panels and signatures. Every report says it is synthetic,
and case ids use the tissue-source code "SY", which no TCGA site uses.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_TYPES = [
    ("invasive ductal carcinoma", "Invasive ductal carcinoma"),
    ("infiltrating ductal carcinoma", "Invasive ductal carcinoma"),
    ("invasive lobular carcinoma", "Invasive lobular carcinoma"),
    ("infiltrating lobular carcinoma", "Invasive lobular carcinoma"),
    ("invasive carcinoma with mixed ductal and lobular features", "Invasive mixed ductal and lobular carcinoma"),
    ("mucinous carcinoma", "Mucinous carcinoma"),
]
_TYPE_WEIGHTS = [40, 20, 12, 6, 8, 4]
_DCIS_PATTERNS = ["cribriform", "solid", "comedo", "micropapillary", "papillary"]
_SIDES = ["left", "right"]
_PROCEDURES = ["modified radical mastectomy", "simple mastectomy", "lumpectomy", "partial mastectomy"]
_PATHOLOGISTS = ["A. Synthetic, MD", "B. Example, MD", "C. Placeholder, MD, PhD", "D. Fictional, MD"]


@dataclass(frozen=True)
class SyntheticCase:
    """A synthetic report with the facts it was written from (tests compare summaries to them)."""

    case_id: str
    text: str
    histologic_type: str
    grade: int
    size_cm: float
    lvi: bool
    dcis_pattern: str | None
    er: bool
    pr: bool
    her2: bool
    margins_negative: bool


def _case_ids(n: int, rng: random.Random) -> list[str]:
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    ids = []
    for k in rng.sample(range(36**4), n):
        digits = "".join(alphabet[(k // 36**p) % 36] for p in (3, 2, 1, 0))
        ids.append(f"TCGA-SY-{digits}")
    return ids


def _receptor_lines(rng: random.Random, er: bool, pr: bool, her2: bool) -> list[str]:
    er_pct = rng.randint(60, 100) if er else 0
    pr_pct = rng.randint(10, 95) if pr else 0
    her2_score = rng.choice(["3+"]) if her2 else rng.choice(["0", "1+"])
    if rng.random() < 0.5:
        return [
            f"ESTROGEN RECEPTOR: {'POSITIVE' if er else 'NEGATIVE'} ({er_pct}% of tumor nuclei, strong intensity)",
            f"PROGESTERONE RECEPTOR: {'POSITIVE' if pr else 'NEGATIVE'} ({pr_pct}% of tumor nuclei)",
            f"HER2/NEU (IHC): {'POSITIVE' if her2 else 'NEGATIVE'} (score {her2_score})",
        ]
    return [
        f"Immunohistochemistry performed on block A3 shows the tumor cells to be estrogen receptor "
        f"{'positive' if er else 'negative'} ({er_pct}%), progesterone receptor {'positive' if pr else 'negative'} "
        f"({pr_pct}%) and HER2 {'positive' if her2 else 'negative'} ({her2_score})."
    ]


def _diagnosis_list(raw_type, grade, scores, size, lvi, dcis, dcis_grade, margins_negative, margin_mm, rng) -> list[str]:
    """The narrative bullet style of many TCGA-BRCA reports."""
    t, p, m = scores
    lines = [
        f"   - {raw_type.upper()}, NOTTINGHAM GRADE {grade} OF 3 (TUBULES {t}, NUCLEAR PLEOMORPHISM {p}, "
        f"MITOSES {m}; TOTAL SCORE {t + p + m}/9).",
        f"   - TUMOR SIZE: {size} CM IN GREATEST DIMENSION.",
        f"   - LYMPHOVASCULAR INVASION: {'PRESENT' if lvi else 'NOT IDENTIFIED'}.",
    ]
    if dcis:
        lines.append(
            f"   - DUCTAL CARCINOMA IN SITU, {dcis.upper()} TYPE, NUCLEAR GRADE {dcis_grade}, "
            f"COMPRISING {rng.randint(5, 30)}% OF THE TUMOR."
        )
    else:
        lines.append("   - DUCTAL CARCINOMA IN SITU: NOT IDENTIFIED.")
    if margins_negative:
        lines.append(f"   - SURGICAL MARGINS ARE NEGATIVE; CLOSEST MARGIN (DEEP) {margin_mm} MM.")
    else:
        lines.append("   - INVASIVE CARCINOMA IS PRESENT AT THE DEEP MARGIN (MARGIN POSITIVE).")
    return lines


def _diagnosis_synoptic(raw_type, grade, scores, size, lvi, dcis, dcis_grade, margins_negative, margin_mm) -> list[str]:
    """The CAP synoptic-checklist style."""
    t, p, m = scores
    return [
        "   SYNOPTIC REPORT - INVASIVE CARCINOMA OF THE BREAST",
        f"   Histologic type: {raw_type.capitalize()}",
        f"   Histologic grade (Nottingham): Grade {grade} (tubule formation {t}, nuclear pleomorphism {p}, mitotic count {m})",
        f"   Tumor size: greatest dimension of invasive component {size} cm",
        f"   Lymph-vascular invasion: {'Present' if lvi else 'Not identified'}",
        f"   Ductal carcinoma in situ: {f'Present, {dcis} pattern, nuclear grade {dcis_grade}' if dcis else 'Absent'}",
        f"   Margins: {f'Uninvolved by invasive carcinoma; distance from closest margin {margin_mm} mm' if margins_negative else 'Involved by invasive carcinoma (deep margin)'}",
    ]


def make_synthetic_case(case_id: str, rng: random.Random) -> SyntheticCase:
    raw_type, histologic_type = rng.choices(_TYPES, weights=_TYPE_WEIGHTS)[0]
    grade = rng.choices([1, 2, 3], weights=[2, 5, 4])[0]
    size = round(rng.uniform(0.6, 6.5), 1)
    lvi = rng.random() < 0.4
    dcis = rng.choice(_DCIS_PATTERNS) if rng.random() < 0.65 and "lobular carcinoma" not in histologic_type else None
    er = rng.random() < 0.75
    pr = er and rng.random() < 0.8
    her2 = rng.random() < 0.18
    margins_negative = rng.random() < 0.85
    side = rng.choice(_SIDES)
    procedure = rng.choice(_PROCEDURES)
    specimen = [round(rng.uniform(8, 25), 1) for _ in range(3)]
    nodes_total = rng.randint(1, 22)
    nodes_pos = rng.randint(0, min(nodes_total, 6)) if rng.random() < 0.5 else 0
    tubule, pleo, mitoses = {1: (2, 1, 1), 2: (3, 2, 1), 3: (3, 3, 3)}[grade]
    margin_mm = round(rng.uniform(0.5, 25.0), 1)

    lines = [
        "*** SYNTHETIC REPORT - MADE UP BY histoldm FOR TESTING - NOT PATIENT DATA ***",
        "SURGICAL PATHOLOGY REPORT",
        f"Patient: SYNTHETIC, PATIENT    Case: {case_id}    MRN: 000-{rng.randint(10000, 99999)}",
        f"Submitting physician: Dr. Example    Received: 01/{rng.randint(10, 28)}/2009",
        "Pathology Department, 100 Example Street, Sample City, ST 00000   Tel (000) 555-0100",
        "",
        "CLINICAL HISTORY:",
        f"{rng.randint(35, 82)}-year-old female with a palpable {side} breast mass; core biopsy showed carcinoma.",
        "",
        "SPECIMEN(S) RECEIVED:",
        f"A: {side.capitalize()} breast, {procedure}",
        "B: Sentinel lymph node(s)",
        "",
        "GROSS DESCRIPTION:",
        f"The specimen is received fresh in a container labeled with the patient's name and '{side} breast'. "
        f"It consists of a {procedure} specimen measuring {specimen[0]} x {specimen[1]} x {specimen[2]} cm. "
        f"The margins are inked: superior blue, inferior green, deep black. Serial sectioning reveals a firm, "
        f"tan-white, stellate mass measuring {size} x {round(size * 0.8, 1)} x {round(size * 0.6, 1)} cm. "
        f"Representative sections are submitted in cassettes A1-A{rng.randint(8, 20)}.",
        "",
        "MICROSCOPIC DESCRIPTION:",
        "Sections show an infiltrative neoplasm arranged in nests, cords and glands within a desmoplastic stroma.",
        "",
        "FINAL DIAGNOSIS:",
        f"A. BREAST, {side.upper()}, {procedure.upper()}:",
    ]
    dcis_grade = rng.randint(1, 3)
    if rng.random() < 0.6:
        lines += _diagnosis_list(raw_type, grade, (tubule, pleo, mitoses), size, lvi, dcis, dcis_grade, margins_negative, margin_mm, rng)
    else:
        lines += _diagnosis_synoptic(raw_type, grade, (tubule, pleo, mitoses), size, lvi, dcis, dcis_grade, margins_negative, margin_mm)
    lines += [
        f"B. LYMPH NODES, SENTINEL: {nodes_pos} OF {nodes_total} LYMPH NODES POSITIVE FOR METASTATIC CARCINOMA.",
        "",
        "ANCILLARY STUDIES:",
        *_receptor_lines(rng, er, pr, her2),
        "",
        "COMMENT: Controls stained appropriately. Results reviewed with Dr. Example on the day of sign-out.",
        "",
        "I attest that I have personally reviewed the slides and that this report reflects my interpretation.",
        f"Electronically signed by {rng.choice(_PATHOLOGISTS)} on 02/{rng.randint(10, 28)}/2009",
        "*** END OF SYNTHETIC REPORT ***",
    ]
    return SyntheticCase(
        case_id=case_id,
        text="\n".join(lines),
        histologic_type=histologic_type,
        grade=grade,
        size_cm=size,
        lvi=lvi,
        dcis_pattern=dcis,
        er=er,
        pr=pr,
        her2=her2,
        margins_negative=margins_negative,
    )


def make_synthetic_cases(n: int, seed: int = 0) -> list[SyntheticCase]:
    """n synthetic cases with unique ids; the same seed always gives the same cases."""
    if n < 0 or n > 36**4:
        raise ValueError(f"n must be between 0 and {36**4}")
    rng = random.Random(seed)
    return [make_synthetic_case(cid, rng) for cid in _case_ids(n, rng)]


def make_synthetic_reports(n: int, seed: int = 0) -> list[dict[str, str]]:
    """n synthetic reports as `{case_id, text}` dicts, the shape of the JSONL input."""
    return [{"case_id": c.case_id, "text": c.text} for c in make_synthetic_cases(n, seed)]
