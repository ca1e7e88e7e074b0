"""Reports as documents: addenda overrule, history is not current, parts join, notations are read,
and the check reads a summary the same way (issue: summaries true to real reports)."""

from __future__ import annotations

import json
import re

import pytest

from histoldm.summaries.case_facts import case_facts, summary_facts
from histoldm.summaries.config import SummarizeConfig
from histoldm.summaries.consistency import check_summary, contradictions
from histoldm.summaries.extractive import extractive_summary
from histoldm.summaries.report_document import parse_report, repair_ocr
from histoldm.summaries.summarize import run_summarize
from histoldm.text.tokenizer import count_tokens

BUDGETS = (20, 35, 50, 154)

ADDENDUM_REPORT = """SURGICAL PATHOLOGY REPORT
Patient: DOE, JANE   MRN: 0000000   Accession: S26-0451
CLINICAL HISTORY:
58-year-old woman with a left breast mass on screening mammogram; ultrasound-guided core biopsy showed invasive \
carcinoma.
SPECIMENS RECEIVED:
A. Left breast, segmental mastectomy
B. Left axillary sentinel lymph nodes, excision
C. Left axillary contents, dissection
GROSS DESCRIPTION:
A. Received fresh labeled "left breast segmental mastectomy" is a 9.5 x 7.0 x 3.2 cm portion of fibrofatty tissue. \
Serial sectioning reveals a firm stellate mass measuring 2.3 x 2.0 x 1.8 cm, located 0.6 cm from the inked deep \
margin. Representative sections are submitted in cassettes A1-A12.
B. Received are three lymph nodes, the largest 1.8 cm, entirely submitted in B1-B4.
C. Multiple lymph nodes ranging from 0.3 to 2.0 cm are identified and submitted in C1-C15.
MICROSCOPIC DESCRIPTION:
Sections show an infiltrating carcinoma growing in nests and cords with moderate nuclear pleomorphism. Stromal \
tumor-infiltrating lymphocytes are moderate. Lymphovascular invasion is identified in the peritumoral stroma.
FINAL DIAGNOSIS:
A. LEFT BREAST, SEGMENTAL MASTECTOMY:
- Invasive ductal carcinoma, Nottingham grade 2 (tubules 3, nuclei 2, mitoses 1), measuring 2.1 cm in greatest \
dimension.
- Ductal carcinoma in situ, cribriform type, intermediate nuclear grade, comprising <5% of the tumor.
- Lymphovascular invasion present.
- Margins negative for invasive carcinoma and DCIS; closest margin (deep) 4 mm.
B. LEFT AXILLARY SENTINEL LYMPH NODES, EXCISION:
- Metastatic carcinoma in two of three lymph nodes (2/3); largest deposit 4 mm, no extranodal extension.
C. LEFT AXILLARY CONTENTS, DISSECTION:
- Metastatic carcinoma in five of fifteen lymph nodes (5/15).
SYNOPTIC REPORT - INVASIVE CARCINOMA OF THE BREAST
Procedure: Segmental mastectomy
Laterality: Left
Histologic type: Invasive ductal carcinoma (no special type)
Histologic grade (Nottingham): Grade 2
Tumor size: 2.1 cm
Tumor-infiltrating lymphocytes: 40%
Tumor necrosis: Not identified
Lymphovascular invasion: Present
Regional lymph nodes: 7/18 involved
Pathologic stage: pT2 pN2a
Estrogen receptor (ER): Positive (80%, strong intensity)
Progesterone receptor (PR): Weakly positive (10%)
HER2 (IHC): 2+ (equivocal), FISH to follow.
ADDENDUM 1:
HER2 FISH on block A4: HER2/CEP17 ratio 2.8, AMPLIFIED. HER2 POSITIVE.
ADDENDUM 2:
Repeat estrogen receptor testing on block A6 at the request of the oncologist: the ER result previously reported as \
positive (80%) is corrected to NEGATIVE (0%).
Electronically signed by A. Example, MD
"""

HISTORY_REPORT = """FINAL SURGICAL PATHOLOGY REPORT
CLINICAL HISTORY:
History of right breast invasive ductal carcinoma, status post right lumpectomy (2009) and radiation. Now with a new \
left breast mass.
SPECIMEN(S) RECEIVED:
1. Left breast, partial mastectomy
2. Left axillary sentinel lymph node
FINAL DIAGNOSIS:
PART 1: LEFT BREAST, PARTIAL MASTECTOMY:
  Infiltrating lobular carcinoma, grade 2, 1.6 cm.
  Lobular carcinoma in situ with central necrosis.
  Tumor necrosis: not identified in the invasive component.
  No lymphovascular invasion identified.
  Margins: negative; closest margin 3 mm (superior).
PART 2: LEFT AXILLARY SENTINEL LYMPH NODE:
  One lymph node, negative for metastatic carcinoma (0/1).
COMMENT:
The patient's prior right breast carcinoma (2009) was reported as ER positive. The current tumor is ER positive \
(95%), PR positive (60%) and HER2 negative (1+).
"""

DCIS_PARTS_REPORT = """CLINICAL INFORMATION: Calcifications, right breast.
SPECIMENS: A. Right breast, lumpectomy. B. Right breast, additional lateral margin. C. Right breast, additional \
inferior margin.
FINAL DIAGNOSIS:
A. Right breast, lumpectomy:
   Ductal carcinoma in situ, high nuclear grade, solid and cribriform types, with comedo necrosis and calcifications.
   No invasive carcinoma identified.
   DCIS is 2 mm from the closest (superior) margin.
B. Right breast, additional lateral margin, excision:
   Benign breast tissue with fibrocystic changes. Negative for ductal carcinoma in situ.
C. Right breast, additional inferior margin, excision:
   Ductal carcinoma in situ, high grade, focal.
ANCILLARY STUDIES:
Estrogen receptor: weakly positive (10%). Progesterone receptor: negative (<1%).
"""

NO_RESIDUAL_REPORT = """SURGICAL PATHOLOGY REPORT
CLINICAL HISTORY:
49-year-old woman with left breast invasive ductal carcinoma, grade 3, on outside core biopsy (2025), ER negative,
PR negative, HER2 negative; status post neoadjuvant chemotherapy.
SPECIMENS RECEIVED:
A. Left breast, total mastectomy
B. Left axillary sentinel lymph nodes
FINAL DIAGNOSIS:
A. LEFT BREAST, TOTAL MASTECTOMY:
   - No residual invasive carcinoma identified (ypT0).
   - Tumor bed with fibrosis, hemosiderin-laden macrophages and chronic inflammation, 2.4 cm.
   - Ductal carcinoma in situ is not identified.
   - Margins negative.
B. LEFT AXILLARY SENTINEL LYMPH NODES:
   - Isolated tumor cells in one of four lymph nodes, negative for metastatic carcinoma (0/4); ypN0(i+).
COMMENT:
The findings are consistent with a complete pathologic response of the breast to neoadjuvant therapy.
"""

MICROMET_REPORT = """FINAL DIAGNOSIS:
A. Right breast, lumpectomy:
   lnfiltrating ductal carcinorna, Nottingham grade 3 (score 8/9), 1.4 cm.
   Stromal tumor-infiltrating lymphocytes (TILs): 40%.
   Lymphovascular invasion: not identified.
B. Right axillary sentinel lymph node, excision:
   Micrometastatic carcinoma in one of two lymph nodes (1/2), largest focus 1.5 mm.
SYNOPTIC REPORT - BREAST
Pathologic stage: pT1c pN1mi
Estrogen receptor: weakly positive (10%)
Progesterone receptor: negative (<1%)
HER2 (IHC): 1+, negative
"""


def _fact(report: str, kind: str):
    return next((f for f in case_facts(report) if f.kind == kind), None)


def test_sections_and_parts_are_parsed():
    doc = parse_report(ADDENDUM_REPORT)
    sections = {s.section for s in doc.sentences}
    assert {
        "header",
        "clinical_history",
        "specimens",
        "gross",
        "microscopic",
        "final_diagnosis",
        "synoptic",
        "addendum",
    } <= sections
    lvi = next(s for s in doc.sentences if s.text == "- Lymphovascular invasion present.")
    assert (lvi.section, lvi.part) == ("final_diagnosis", "A")
    assert doc.part_headings["C"].lower().startswith("left axillary contents")
    assert next(s for s in doc.sentences if "five of fifteen" in s.text).part == "C"


def test_an_addendum_that_corrects_a_receptor_wins():
    er, her2 = _fact(ADDENDUM_REPORT, "er"), _fact(ADDENDUM_REPORT, "her2")
    assert (er.value, er.evidence.section) == ("negative", "addendum") and "0%" in er.detail
    assert (her2.value, her2.evidence.section) == ("positive", "addendum") and "amplified" in her2.detail.lower()
    for budget in BUDGETS:
        summary = extractive_summary(ADDENDUM_REPORT, budget)[0]
        assert "ER+" not in summary and "HER2 equivocal" not in summary, (budget, summary)
        assert not contradictions(ADDENDUM_REPORT, summary), (budget, summary)
    assert "ER-" in extractive_summary(ADDENDUM_REPORT, 154)[0]
    (problem,) = contradictions(ADDENDUM_REPORT, "Invasive ductal carcinoma, grade 2; ER+ (80%).")
    assert '"ER+ (80%)"' in problem and "corrected to NEGATIVE (0%)" in problem  # both sides quoted
    assert contradictions(ADDENDUM_REPORT, "IDC, grade 2; HER2 equivocal (2+).")
    assert not contradictions(ADDENDUM_REPORT, "IDC, grade 2; ER-, PR+, HER2+ (IHC 2+, FISH amplified).")


def test_history_of_a_prior_lumpectomy_is_not_the_current_specimen():
    assert (_fact(HISTORY_REPORT, "laterality").value, _fact(HISTORY_REPORT, "procedure").value) == (
        "left",
        "partial mastectomy",
    )
    summary = extractive_summary(HISTORY_REPORT, 154)[0]
    assert (
        "left breast, partial mastectomy" in summary and "right" not in summary.lower() and "lumpectomy" not in summary
    )
    side, procedure = contradictions(HISTORY_REPORT, "ILC, grade 2; right breast, lumpectomy.")
    assert "laterality right" in side and "LEFT BREAST, PARTIAL MASTECTOMY" in side
    assert "procedure lumpectomy" in procedure and "prior specimen" in procedure and "lumpectomy (2009)" in procedure


def test_one_part_negative_for_dcis_does_not_make_the_case_negative():
    dcis = _fact(DCIS_PARTS_REPORT, "dcis")
    assert dcis.status == "present" and dcis.evidence.part in ("A", "C")
    assert _fact(DCIS_PARTS_REPORT, "histologic_type").value == "ductal carcinoma in situ"
    for budget in BUDGETS:
        summary = extractive_summary(DCIS_PARTS_REPORT, budget)[0]
        assert "no DCIS" not in summary and "no ductal carcinoma in situ" not in summary.lower(), summary
    assert not contradictions(
        DCIS_PARTS_REPORT, "Ductal carcinoma in situ, high grade; no invasive carcinoma; right breast."
    )
    assert contradictions(DCIS_PARTS_REPORT, "No invasive carcinoma; no DCIS.")
    assert contradictions(DCIS_PARTS_REPORT, "IDC.")


def test_necrosis_in_lcis_is_not_tumor_necrosis():
    assert _fact(HISTORY_REPORT, "necrosis").status == "absent" and _fact(HISTORY_REPORT, "lcis").status == "present"
    for budget in BUDGETS:
        summary = extractive_summary(HISTORY_REPORT, budget)[0]
        assert "necrosis present" not in summary, summary
    assert not contradictions(HISTORY_REPORT, "Invasive lobular carcinoma, grade 2; no tumour necrosis; LCIS.")
    assert contradictions(HISTORY_REPORT, "Invasive lobular carcinoma, grade 2; tumour necrosis present.")


@pytest.mark.parametrize(
    "sentence, count",
    [
        ("Lymph nodes: 0/14.", "0/14"),
        ("Metastatic carcinoma in two lymph nodes (2/15).", "2/15"),
        ("Metastatic carcinoma involving 7/18 lymph nodes.", "7/18"),
        ("Metastatic carcinoma in two of fifteen lymph nodes.", "2/15"),
        ("Sentinel lymph nodes: 0 of 3 positive.", "0/3"),
    ],
)
def test_node_counts_in_every_notation(sentence, count):
    report = (
        "FINAL DIAGNOSIS:\nLeft breast, modified radical mastectomy:\nInvasive ductal carcinoma, grade 2, 2.2 cm.\n"
        f"{sentence}\nMargins negative.\nER positive (90%), PR positive (40%), HER2 negative (1+)."
    )
    assert _fact(report, "nodes").value == count
    assert count in extractive_summary(report, 154)[0]
    k, n = count.split("/")
    assert contradictions(report, f"IDC, grade 2; nodes {int(k) + 1}/{n}.")


def test_node_parts_add_up_and_a_synoptic_total_wins():
    nodes = _fact(ADDENDUM_REPORT, "nodes")
    assert nodes.value == "7/18" and nodes.evidence.section == "synoptic"
    without_synoptic = ADDENDUM_REPORT.replace("Regional lymph nodes: 7/18 involved\n", "")
    assert _fact(without_synoptic, "nodes").value == "7/18"  # B (2/3) + C (5/15)
    assert not contradictions(ADDENDUM_REPORT, "IDC; sentinel nodes 2/3.")  # a part's own count is true too


def test_weak_receptors_tils_and_short_qualifiers_are_kept_verbatim():
    er = _fact(DCIS_PARTS_REPORT, "er")
    assert (er.value, er.detail) == ("positive", "weakly positive (10%)")
    assert _fact(DCIS_PARTS_REPORT, "pr").detail == "negative (<1%)"
    summary = extractive_summary(MICROMET_REPORT, 154)[0]
    assert "ER weakly positive (10%)" in summary and "PR- (<1%)" in summary
    assert "40%" in summary and _fact(MICROMET_REPORT, "tils").value == "40%"
    assert "pN1mi" in summary and _fact(MICROMET_REPORT, "nodes").detail == "pN1mi"
    assert "<5%" in extractive_summary(ADDENDUM_REPORT, 154)[0]  # DCIS comprising <5% of the tumour
    assert contradictions(MICROMET_REPORT, "IDC, grade 3; TILs 10%.")


def test_ocr_confusions_are_repaired_never_copied():
    assert repair_ocr("lnfiltrating ductal carcinorna, INVAS1VE, 1ymph nodes, A1-A12, 10%") == (
        "infiltrating ductal carcinoma, INVASIVE, lymph nodes, A1-A12, 10%"
    )
    summary = extractive_summary(MICROMET_REPORT, 154)[0]
    assert summary.startswith("Invasive ductal carcinoma, Nottingham grade 3") and "lnfiltrating" not in summary
    assert _fact(MICROMET_REPORT, "histologic_type").value == "invasive ductal carcinoma"


def test_idc_in_a_summary_is_checked_against_a_report_without_residual_invasion():
    assert _fact(NO_RESIDUAL_REPORT, "histologic_type").status == "absent"
    assert _fact(NO_RESIDUAL_REPORT, "er").status == "historical"  # the pre-treatment biopsy is history
    (problem,) = contradictions(NO_RESIDUAL_REPORT, "IDC.")
    assert '"IDC"' in problem and "No residual invasive carcinoma identified" in problem
    for budget in BUDGETS:
        summary = extractive_summary(NO_RESIDUAL_REPORT, budget)[0]
        assert not re.search(r"\bIDC\b|Invasive ductal|ER-", summary) and not contradictions(
            NO_RESIDUAL_REPORT, summary
        ), summary
    assert "0/4 lymph nodes positive (isolated tumor cells)" in extractive_summary(NO_RESIDUAL_REPORT, 154)[0]


def test_unsupported_is_not_a_contradiction():
    check = check_summary(DCIS_PARTS_REPORT, "DCIS, high grade; no lymphovascular invasion; nodes 0/3.")
    assert not check.contradictions
    assert {f.kind for f in check.unsupported} == {"lvi", "nodes"}
    said = {
        f.kind: f for f in summary_facts("IDC, grade 2; ER weakly positive (10%); HER2 2+, FISH amplified; nodes 0/14.")
    }
    assert (
        said["her2"].value == "positive"
        and said["er"].detail == "weakly positive (10%)"
        and said["nodes"].value == "0/14"
    )
    assert said["grade"].evidence.sentence == "IDC, grade 2"


def test_summaries_jsonl_carries_facts_with_evidence(tmp_path):
    reports = tmp_path / "reports.jsonl"
    reports.write_text(json.dumps({"case_id": "TCGA-SY-A001", "text": ADDENDUM_REPORT}) + "\n", encoding="utf-8")
    out = tmp_path / "summaries.jsonl"
    run_summarize(SummarizeConfig(input=reports, out=out, budget=154))
    (record,) = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert record["status"] == "ok" and count_tokens(record["summary"]) <= 154
    by_kind = {f["kind"]: f for f in record["facts"]}
    assert by_kind["er"]["value"] == "negative" and by_kind["er"]["evidence"]["section"] == "addendum"
    assert by_kind["er"]["evidence"]["sentence"] in repair_ocr(ADDENDUM_REPORT)
    assert by_kind["er"]["summary_clause"] in record["summary"]
    assert by_kind["nodes"]["value"] == "7/18" and record["unsupported"] == []


def test_a_frozen_section_overruled_by_the_final_diagnosis_does_not_excuse_a_margin():
    report = (
        "INTRAOPERATIVE CONSULTATION:\n"
        "A. Left breast, lumpectomy, frozen section of the inferior margin: negative for carcinoma.\n"
        "FINAL DIAGNOSIS:\nA. Left breast, lumpectomy:\n- Invasive ductal carcinoma, grade 2, 1.8 cm.\n"
        "- Invasive carcinoma extends to the inked inferior margin; margins positive.\n"
        "B. Left breast, additional superior margin:\n- Benign breast tissue; margin negative for carcinoma.\n"
    )
    assert _fact(report, "margins").value == "positive"
    (problem,) = contradictions(report, "IDC, grade 2; margins negative.")
    assert "margins positive" in problem and "extends to the inked inferior margin" in problem
    assert not contradictions(report, "IDC, grade 2; margins positive.")


def test_summaries_keep_their_length_after_a_text_encoder_padded_the_shared_tokenizer():
    from histoldm.text.tokenizer import clip_tokenizer

    before = extractive_summary(MICROMET_REPORT, 154)[0]
    clip_tokenizer()(["a caption"], max_length=77, padding="max_length", truncation=True)  # what the text encoders do
    assert extractive_summary(HISTORY_REPORT, 154)[0].count(";") >= 8  # every phrase not counted as 77 tokens
    assert extractive_summary(MICROMET_REPORT, 154)[0] == before
