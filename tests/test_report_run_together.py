"""Reports run together on one line (as OCR'd TCGA text arrives) read as their twins with line breaks:
the same parts, addenda, history and case facts, and summaries as true."""

from __future__ import annotations

import pytest

from histoldm.summaries.case_facts import case_facts
from histoldm.summaries.consistency import contradictions
from histoldm.summaries.extractive import diagnostic_text, extractive_summary
from histoldm.summaries.hard_reports import make_hard_reports
from histoldm.summaries.report_document import ADDENDUM, CLINICAL_HISTORY, parse_report, split_run_together
from test_report_facts import ADDENDUM_REPORT, DCIS_PARTS_REPORT, HISTORY_REPORT

BUDGETS = (20, 35, 50, 154)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _facts(report: str) -> dict[str, tuple[str, str]]:
    return {f.kind: (f.value, f.status) for f in case_facts(report)}


def _words_in(report: str, section: str) -> str:
    return " ".join(w for s in parse_report(report).sentences if s.section == section for w in s.text.split())


@pytest.fixture(scope="module")
def corpus():
    return make_hard_reports(150, seed=3)


def test_every_hard_report_run_together_parses_as_its_twin(corpus):
    for case in corpus:
        one = _one_line(case.text)
        assert parse_report(one).part_headings == parse_report(case.text).part_headings, case.case_id
        assert _words_in(one, CLINICAL_HISTORY) == _words_in(case.text, CLINICAL_HISTORY), case.case_id
        assert _facts(one) == _facts(case.text), case.case_id


def test_addenda_history_and_parts_of_a_one_line_report():
    one = _one_line(ADDENDUM_REPORT)
    doc = parse_report(one)
    assert set(doc.part_headings) == {"A", "B", "C"}
    assert doc.part_headings["B"].upper() == "LEFT AXILLARY SENTINEL LYMPH NODES, EXCISION"
    addendum = _words_in(one, ADDENDUM)
    assert "AMPLIFIED" in addendum and "corrected to NEGATIVE (0%)" in addendum
    facts = _facts(one)
    assert facts["er"][0] == "negative" and facts["her2"][0] == "positive"  # the addenda overrule the synoptic
    assert facts["nodes"][0] == "7/18" and facts["laterality"][0] == "left"
    assert facts == _facts(ADDENDUM_REPORT)


def test_a_contralateral_prior_lumpectomy_in_one_line_history_is_not_the_current_specimen():
    one = _one_line(HISTORY_REPORT)
    assert "right lumpectomy (2009)" in _words_in(one, CLINICAL_HISTORY)
    facts = _facts(one)
    assert facts["laterality"][0] == "left" and facts["procedure"][0] == "partial mastectomy"
    assert facts == _facts(HISTORY_REPORT)
    assert "lumpectomy (2009)" not in diagnostic_text(one)  # the summariser's text drops the history too


def test_one_part_negative_for_dcis_on_one_line_leaves_the_case_dcis():
    one = _one_line(DCIS_PARTS_REPORT)
    assert set(parse_report(one).part_headings) == {"A", "B", "C"}
    assert _facts(one)["dcis"][1] == "present"


@pytest.mark.parametrize("report", [ADDENDUM_REPORT, HISTORY_REPORT, DCIS_PARTS_REPORT])
def test_one_line_summaries_are_true_at_every_budget(report):
    one = _one_line(report)
    for budget in BUDGETS:
        summary, _ = extractive_summary(one, budget)
        assert summary and not contradictions(report, summary), (budget, summary)
        assert summary == extractive_summary(report, budget)[0], budget


def test_the_splitter_restores_headings_part_labels_keys_and_bullets():
    text = (
        "FINAL DIAGNOSIS: A. LEFT BREAST, LUMPECTOMY: - INVASIVE DUCTAL CARCINOMA, GRADE 2. - MARGINS NEGATIVE. "
        "B. SENTINEL LYMPH NODE: - NEGATIVE (0/2). Signed by A. Example, MD. Checklist: Procedure: Lumpectomy "
        "Specimen laterality: Left Tumor necrosis: Not identified ER: positive (90%)"
    )
    assert split_run_together(text).splitlines() == [
        "FINAL DIAGNOSIS:",
        "A. LEFT BREAST, LUMPECTOMY:",
        "- INVASIVE DUCTAL CARCINOMA, GRADE 2.",
        "- MARGINS NEGATIVE.",
        "B. SENTINEL LYMPH NODE:",
        "- NEGATIVE (0/2). Signed by A. Example, MD.",
        "Checklist:",
        "Procedure: Lumpectomy",
        "Specimen laterality: Left",
        "Tumor necrosis: Not identified",
        "ER: positive (90%)",
    ]
    numbered = (
        "FINAL DIAGNOSIS: PART 1: LEFT BREAST, LUMPECTOMY: INFILTRATING DUCTAL CARCINOMA, GRADE 2. LYMPHOVASCULAR "
        "INVASION: PRESENT. Pathologic stage: pT1c pN0 PART 2: SENTINEL LYMPH NODE: NEGATIVE (0/2)."
    )
    assert [line for line in split_run_together(numbered).splitlines() if line.startswith("PART")] == [
        "PART 1: LEFT BREAST, LUMPECTOMY:",
        "PART 2: SENTINEL LYMPH NODE:",
    ]  # "GRADE 2." is no part
    short = "A. Left breast: carcinoma. B. Node: negative."
    assert split_run_together(short) == short  # a report line of ordinary length keeps its own breaks
