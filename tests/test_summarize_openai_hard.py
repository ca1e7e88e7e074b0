"""The openai backend on hard multi-part reports, against a real chat-completions server on
127.0.0.1: a correct summary is accepted at once, and a reversed finding is caught with feedback
that quotes the summary's clause and the report's sentence, so the model can see what to fix."""

from __future__ import annotations

import re
from contextlib import suppress

from histoldm.errors import UserError
from histoldm.fileio import read_jsonl
from histoldm.summaries.hard_reports import HardReport, make_hard_reports
from histoldm.summaries.summarize import run_summarize
from histoldm.summaries.summary_oracle import SUMMARY_STYLES, write_summary
from test_summarize import ScriptedChatServer, _llm_cfg, _write_jsonl


def _hard_cases(n: int = 5) -> list[HardReport]:
    """n reports with at least three specimen parts and a planted trap (addendum, history, a negative part...)."""
    cases = [r for r in make_hard_reports(60, seed=25) if len(r.parts) >= 3 and any(t.kind != "ocr" for t in r.traps)]
    return cases[:n]


def _served(case: HardReport) -> dict[str, str]:
    # the scripted server finds the case by this line (as test_summarize's reports carry it)
    return {"case_id": case.case_id, "text": f"CASE {case.case_id} MODE script-{case.case_id}\n{case.text}"}


def test_correct_summaries_of_hard_reports_are_accepted_at_once(tmp_path):
    cases = _hard_cases()
    patterns = {t.pattern for c in cases for t in c.traps}
    assert len(cases) == 5 and {"negative_part", "addendum", "history"} <= patterns, (
        patterns
    )  # the hard kinds are there
    script = {
        c.case_id: [write_summary(c.facts, c.notes, SUMMARY_STYLES[i % len(SUMMARY_STYLES)])]
        for i, c in enumerate(cases)
    }
    _write_jsonl(tmp_path / "reports.jsonl", [_served(c) for c in cases])
    with ScriptedChatServer(script) as server, suppress(UserError):  # a run whose every case fails exits 2
        run_summarize(_llm_cfg(tmp_path, server.url, budget=154, prompt="pathldm", max_attempts=3))
    records = {r["case_id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    wrong = {
        cid: (r["status"], r["attempts"], r["error"])
        for cid, r in records.items()
        if (r["status"], r["attempts"]) != ("ok", 1)
    }
    assert not wrong, wrong  # every reply was true to its report
    assert all(records[c.case_id]["summary"] == script[c.case_id][0] for c in cases)
    assert all(server.requests[c.case_id] == 1 for c in cases)


def _report_sentences(text: str, name: str) -> list[str]:
    """The report's sentences (lines, or sentences within a line) that name the finding."""
    pieces = [p.strip(" -.") for line in text.splitlines() for p in re.split(r"(?<=[a-z])\.\s+", line)]
    return [p for p in pieces if re.search(name, p, re.IGNORECASE) and len(p) > 8]


def test_a_reversed_finding_is_caught_and_the_feedback_quotes_both_sides(tmp_path):
    case = next(c for c in _hard_cases() if "lvi" in c.facts)
    truth = case.facts["lvi"]
    reversed_facts = {**case.facts, "lvi": "present" if truth == "absent" else "absent"}
    wrong, right = write_summary(reversed_facts, case.notes), write_summary(case.facts, case.notes)
    clause = "LVI present" if truth == "absent" else "no LVI"
    assert clause in wrong
    _write_jsonl(tmp_path / "reports.jsonl", [_served(case)])
    with (
        ScriptedChatServer({case.case_id: [wrong, right]}) as server,
        suppress(UserError),
    ):  # a run whose every case fails exits 2
        run_summarize(_llm_cfg(tmp_path, server.url, budget=154, prompt="pathldm", max_attempts=3))
    (rec,) = read_jsonl(tmp_path / "out.jsonl")
    assert server.requests[case.case_id] >= 2, rec  # the reversed reply was caught
    feedback = server.bodies[case.case_id][1]["messages"][-1]["content"]
    assert feedback.startswith("That summary contradicts the report") and "at most 154 tokens" in feedback
    assert clause in feedback, feedback  # the summary's own words
    sentences = _report_sentences(case.text, r"lympho?-?vascular|\bLVI\b|tumor emboli")
    assert sentences and any(s.lower() in feedback.lower() for s in sentences), (
        feedback,
        sentences,
    )  # the report's own words
    assert not re.search(r"ductal carcinoma in situ|DCIS", feedback), (
        feedback
    )  # no false complaint about the negative part
    assert (rec["status"], rec["attempts"], rec["summary"]) == ("regenerated", 2, right), (
        rec
    )  # the true rewrite is accepted
