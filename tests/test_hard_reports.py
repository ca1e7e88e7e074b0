"""The hard report generator: deterministic, every planted pattern present, lengths in range, and a
ground truth that agrees with the text (the addendum's value wins, node parts add up, history is
another breast); and the oracle that scores summaries against it."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from histoldm.summaries.hard_reports import DCIS, FACT_KINDS, MAX_WORDS, MIN_WORDS, make_hard_reports
from histoldm.summaries.loading import normalise_case_id
from histoldm.summaries.summary_oracle import planted_contradictions, states, trap_fallen, true_summaries, write_summary
from histoldm.summaries.synthetic import make_synthetic_cases


@pytest.fixture(scope="module")
def corpus():
    return make_hard_reports(500, seed=0)


def test_same_seed_same_reports_and_ids_of_their_own():
    a, b, c = make_hard_reports(30, 1), make_hard_reports(30, 1), make_hard_reports(30, 2)
    assert a == b
    assert [r.text for r in a] != [r.text for r in c]
    ids = [r.case_id for r in make_hard_reports(500, 0)]
    assert len(set(ids)) == 500 and all(
        re.fullmatch(r"TCGA-SY-H[0-9A-Z]{3}", i) and normalise_case_id(i) == i for i in ids
    )
    assert not set(ids) & {c.case_id for c in make_synthetic_cases(500, 0)}


def test_word_counts_in_the_range_of_the_reports_that_failed(corpus):
    words = [r.words for r in corpus]
    assert MIN_WORDS <= min(words) and max(words) <= MAX_WORDS
    assert all(r.text.startswith("*** SYNTHETIC HARD REPORT") for r in corpus)


def test_every_planted_pattern_occurs(corpus):
    traps = Counter((t.pattern, t.kind) for r in corpus for t in r.traps)
    for pattern_kind in [
        ("addendum", "er"),
        ("addendum", "pr"),
        ("addendum", "her2"),
        ("addendum", "grade"),
        ("addendum", "laterality"),
        ("history", "laterality"),
        ("history", "procedure"),
        ("history", "er"),
        ("history", "grade"),
        ("history", "histologic_type"),
        ("negative_part", "dcis"),
        ("in_situ_necrosis", "necrosis"),
        ("node_part", "nodes"),
        ("itc", "nodes"),
        ("her2_ish", "her2"),
        ("weak_receptor", "er"),
        ("weak_receptor", "pr"),
        ("in_situ_only", "histologic_type"),
        ("intraoperative", "margins"),
        ("ocr", "ocr"),
    ]:
        assert traps[pattern_kind] >= 10, (pattern_kind, traps[pattern_kind])
    features = Counter(f for r in corpus for f in r.features)
    for feature in [
        "invasive",
        "neoadjuvant_residual",
        "no_residual_invasive",
        "dcis_only",
        "history_contralateral",
        "addendum_correction",
        "tils",
        "ocr_in_diagnosis",
        "weak:weak10",
        "weak:low",
        "weak:lt1",
        "her2_ish:positive",
        "her2_ish:negative",
        "nodes:slash",
        "nodes:of",
        "nodes:paren",
        "nodes:words",
        "nodes:parts",
        "nodes:pn1mi",
        "nodes:itc",
        "parts:3",
        "parts:4",
        "part_style:dot",
        "part_style:paren",
        "part_style:part",
        "part_style:number",
        "part_style:specimen",
    ]:
        assert features[feature] >= 10, (feature, features[feature])
    assert sum(1 for r in corpus if "lcis" in r.facts) >= 50
    assert all(len(r.parts) >= 2 for r in corpus) and all(set(r.facts) <= set(FACT_KINDS) for r in corpus)
    assert all(set(r.surface) == set(r.facts) and r.facts["nodes"] in r.surface["nodes"] for r in corpus)


def _addendum(text: str) -> str:
    m = re.search(
        r"^(?:ADDENDUM|AMENDMENT|REVISED REPORT|\*\*AMENDED REPORT)[^\n]*\n(.*?)(?:\n\n|\Z)",
        text,
        re.MULTILINE | re.DOTALL,
    )
    assert m, text
    return m[1]


def test_an_addendum_states_the_truth_and_the_body_the_old_value(corpus):
    checked = Counter()
    for r in corpus:
        for t in (t for t in r.traps if t.pattern == "addendum"):
            addendum, body = _addendum(r.text), r.text.replace(_addendum(r.text), "")
            truth = r.facts[t.kind]
            if t.kind in ("er", "pr"):
                assert re.search(rf"{t.kind.upper()} {truth.upper()}|: {truth.upper()}\.", addendum), (t, addendum)
            elif t.kind == "grade":
                assert f"from grade {t.wrong} to grade {truth}" in addendum, addendum
            elif t.kind == "laterality":
                assert (
                    f"incorrectly as {t.wrong.upper()}" in addendum and f"from the {truth.upper()} breast" in addendum
                )
                assert f"{t.wrong.upper()} BREAST, " in body and f"{truth.upper()} BREAST" not in body
            else:
                assert (
                    f"HER2 {truth.upper()}" in addendum
                    and "EQUIVOCAL (2+)" in r.text
                    and "WILL BE REPORTED IN AN ADDENDUM" in r.text
                )
            checked[t.kind] += 1
    assert min(checked.values()) >= 10 and len(checked) == 5, checked


def test_node_parts_add_up_to_the_node_fact(corpus):
    parts_cases = [r for r in corpus if "nodes:parts" in r.features]
    assert len(parts_cases) >= 30
    for r in parts_cases:
        lines = re.findall(r"(?:SENTINEL|AXILLARY)[^\n]*:\n   - ([^\n]*)", r.text)
        counts = [re.search(r"(\d+)\s*(?:/|OF)\s*(\d+)", line) for line in lines]
        assert len(lines) == 2 and all(counts), (r.case_id, lines)
        k, n = sum(int(c[1]) for c in counts), sum(int(c[2]) for c in counts)
        assert r.facts["nodes"] == f"{k}/{n}", (r.case_id, lines, r.facts["nodes"])
    for r in corpus:
        if "nodes:itc" in r.features:
            assert (
                "ISOLATED TUMOR CELLS" in r.text and r.facts["nodes"].startswith("0/") and r.notes["nodes"] == "pN0(i+)"
            )
        if "nodes:words" in r.features:
            k, n = (int(x) for x in r.facts["nodes"].split("/"))
            assert re.search(r"\b(?:[A-Z-]+ OF|NONE OF) [A-Z-]+ LYMPH NODES", r.text), r.case_id


def test_history_is_never_the_current_specimen(corpus):
    history = [r for r in corpus if "history_contralateral" in r.features]
    assert len(history) >= 50
    for r in history:
        m = re.search(
            r"\S+ of (\S+) \S+ \S+ \(([^,]+), grade (\d), ER (\w+)\) \S+ by ([A-Za-z1 ]+?)(?: and radiation)? in \d{4}",
            r.text,
        )  # words may be OCR'd
        assert m, r.case_id
        assert m[1] != r.facts["laterality"] and m[5] != r.facts["procedure"]
        assert f"{r.facts['laterality'].upper()} BREAST, {r.facts['procedure'].upper()}" in r.text
    for r in (r for r in corpus if "no_residual_invasive" in r.features):
        assert (
            r.facts["histologic_type"] == DCIS and "grade" not in r.facts and "NO RESIDUAL INVASIVE CARCINOMA" in r.text
        )
        assert {("history", "grade", "3"), ("history", "histologic_type", "invasive ductal carcinoma")} <= {
            (t.pattern, t.kind, t.wrong) for t in r.traps
        }  # the pre-treatment biopsy, in the history only
        assert re.search(
            r"grade 3, ER \S+ \(\d+%\), HER2", r.text.split("NO RESIDUAL INVASIVE")[0] + r.text.split("CM (ypTis)")[-1]
        )


def test_findings_receptors_and_ocr_as_written(corpus):
    for r in corpus:
        f = r.facts
        if any(t.pattern == "negative_part" for t in r.traps):
            assert f["dcis"] == "present"
            assert re.search(
                r"ADDITIONAL [A-Z]+ MARGIN[^\n]*:\n   - [^\n]*(?:NEGATIVE FOR DUCTAL CARCINOMA IN SITU|NO DCIS)", r.text
            )
        if any(t.pattern == "in_situ_necrosis" for t in r.traps):
            assert f["necrosis"] == "absent" and re.search(r"CENTRAL NECROSIS|COMEDONECROSIS", r.text)
            assert re.search(
                r"^Tumor necrosis: (?:Not identified|Absent)", r.text, re.MULTILINE
            )  # the synoptic, never OCR'd
        if "weak:weak10" in r.features:
            assert "WEAKLY POSITIVE (10%)" in r.text
        if "weak:lt1" in r.features:
            assert "NEGATIVE (<1% of tumor nuclei staining)" in r.text
        if "her2_ish:positive" in r.features and not any(t.pattern == "addendum" and t.kind == "her2" for t in r.traps):
            assert "EQUIVOCAL (SCORE 2+). HER2 FISH: AMPLIFIED" in r.text and f["her2"] == "positive"
        if "tils" in r.features:
            assert f"{f['tils']}" in r.text and re.search(r"TILs|lymphocytes", r.text)
        for t in r.traps:
            if t.kind == "ocr":
                assert re.search(rf"(?<![A-Za-z0-9]){re.escape(t.wrong)}(?![A-Za-z0-9])", r.text), t
                assert t.wrong.lower() not in {"infiltrating", "invasive", "carcinoma", "ductal", "lobular"}


def test_true_summaries_state_every_fact_and_no_trap(corpus):
    for r in corpus[:200]:
        for summary in true_summaries(r):
            missing = [k for k, v in r.facts.items() if not states(summary, k, v, r.facts)]
            fallen = [t for t in r.traps if trap_fallen(summary, t, r.facts)]
            assert not missing and not fallen, (r.case_id, summary, missing, fallen)
    abbreviated = " ".join(true_summaries(r)[0] for r in corpus)
    for token in ("IDC", "ILC", "DCIS", "LVI", "TILs", "ER+ (", "HER2 2+, FISH amplified", "low positive", "pN1mi"):
        assert token in abbreviated, token


def test_each_planted_contradiction_states_its_wrong_value(corpus):
    kinds = Counter()
    for r in corpus[:200]:
        for kind, summary in planted_contradictions(r):
            kinds[kind] += 1
            assert summary not in true_summaries(r)
            assert any(not states(summary, k, v, r.facts) for k, v in r.facts.items()) or any(
                trap_fallen(summary, t, r.facts) for t in r.traps
            ), (kind, summary)
    for kind in (
        "reversed_negation",
        "wrong_receptor",
        "wrong_laterality",
        "history_as_current",
        "pre_addendum",
        "negative_part",
    ):
        assert kinds[kind] >= 20, kinds


def test_oracle_reads_polarity_and_in_situ_necrosis():
    facts = {"histologic_type": "invasive ductal carcinoma", "necrosis": "absent", "dcis": "present", "grade": "2"}
    assert states("IDC, grade 2; DCIS present; no tumour necrosis.", "necrosis", "absent", facts)
    assert not states("IDC; LCIS with central necrosis; no tumour necrosis.", "necrosis", "present", facts)
    assert states("IDC; tumour necrosis present.", "necrosis", "present", facts)
    assert states("DCIS: present.", "dcis", "present", facts) and states("Negative for DCIS.", "dcis", "absent", facts)
    assert not states("No DCIS.", "dcis", "present", facts)
    assert not states("IDC; DCIS, nuclear grade 2.", "grade", "2", facts) and states("Grade: 2.", "grade", "2", facts)
    assert not states("IDC, Nottingham grade 2/3.", "nodes", "2/3", facts) and states(
        "Nodes: 2 of 3 positive.", "nodes", "2/3", facts
    )
    assert not states("No invasive ductal carcinoma; DCIS.", "histologic_type", "invasive ductal carcinoma", facts)
    assert states("ER+ (80%), PR-, HER2 2+ FISH amplified.", "her2", "positive") and not states(
        "ER-positive.", "er", "negative"
    )
    assert (
        write_summary({"laterality": "left", "nodes": "2/15"}, {}, "prose")
        == "Left breast; two of fifteen lymph nodes positive."
    )
