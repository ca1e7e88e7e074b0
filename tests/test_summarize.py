"""Report summaries: loading, the extractive summariser, prompts, and the LLM driver against a real
HTTP chat-completions server on 127.0.0.1 that fails on purpose."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from histoldm.cli import main
from histoldm.errors import UserError
from histoldm.fileio import read_jsonl
from histoldm.summaries.budget import truncate_to_budget
from histoldm.summaries.config import SummarizeConfig
from histoldm.summaries.consistency import contradictions
from histoldm.summaries.extractive import RELEVANCE_ORDER, extractive_summary, summarize
from histoldm.summaries.loading import load_reports, normalise_case_id
from histoldm.summaries.prompts import load_prompt, render
from histoldm.summaries.scoring import facts_stated, stated_opposite
from histoldm.summaries.summarize import run_summarize
from histoldm.summaries.synthetic import make_synthetic_cases, make_synthetic_reports
from histoldm.text.tokenizer import count_tokens

SHORT = "Invasive ductal carcinoma, Nottingham grade 2, 2.1 cm; DCIS, cribriform; ER+, PR+, HER2-."
LONG = "; ".join(f"finding number {i} described at considerable length with many words" for i in range(12)) + "."


# --- a chat-completions server that misbehaves on request ---------------------------------------


class FlakyChatServer:
    """Speaks POST /v1/chat/completions. Each report says `MODE <mode>`; the server counts requests per
    case and answers by mode and attempt number."""

    def __init__(self, hang_s: float = 3.0):
        self.requests: Counter = Counter()
        self.bodies: dict[str, list[dict]] = {}
        self.lock = threading.Lock()
        self.hang_s = hang_s
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                report = next(m["content"] for m in body["messages"] if "MODE" in m["content"])
                case, mode = re.search(r"CASE (\S+) MODE (\S+)", report).groups()
                with server.lock:
                    server.requests[case] += 1
                    n = server.requests[case]
                    server.bodies.setdefault(case, []).append(body)
                try:
                    server.answer(self, mode, n)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def send(handler, status: int, payload: bytes, headers: dict[str, str] | None = None):
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(payload)

    def reply(self, handler, content: str):
        payload = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": "flaky",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
        }
        self.send(handler, 200, json.dumps(payload).encode())

    def answer(self, handler, mode: str, n: int):
        error = {"error": {"message": "boom", "type": "server_error"}}
        if mode == "e500" and n <= 2 or mode == "always500":
            return self.send(handler, 500, json.dumps(error).encode())
        if mode == "r429" and n == 1:
            return self.send(handler, 429, json.dumps(error).encode(), {"Retry-After": "1"})
        if mode == "hang" and n == 1:
            time.sleep(self.hang_s)
            return self.reply(handler, SHORT)
        if mode == "badjson" and n == 1:
            return self.send(handler, 200, b'{"choices": [ {"message": ')
        if mode == "auth":
            return self.send(handler, 401, json.dumps({"error": {"message": "bad key"}}).encode())
        if mode == "long" or (mode == "long_once" and n == 1):
            return self.reply(handler, LONG)
        if mode == "empty" or (mode == "empty_once" and n == 1):
            return self.reply(handler, "")
        return self.reply(handler, f'"{SHORT}"')


MODES = ["ok", "e500", "r429", "hang", "badjson", "long", "long_once", "empty", "empty_once", "always500", "auth"]


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def _llm_cfg(tmp_path, url, **kw) -> SummarizeConfig:
    base = dict(
        input=tmp_path / "reports.jsonl",
        out=tmp_path / "out.jsonl",
        budget=35,
        backend="openai",
        model="flaky",
        base_url=url,
        api_key_env="HISTOLDM_TEST_NO_SUCH_KEY",
        timeout_s=1.5,  # generous: the machine running the tests may be busy
        max_attempts=4,
        backoff_base_s=0.01,
        concurrency=8,
    )
    return SummarizeConfig(**{**base, **kw})


def test_llm_driver_survives_a_failing_server_and_resumes(tmp_path, capsys):
    reports = [
        {"case_id": f"TCGA-T{i % 10}-{i:04d}.some-uuid", "text": f"CASE c{i} MODE {m}\nFINAL DIAGNOSIS: carcinoma"}
        for i, m in enumerate(MODES)
    ]
    reports.append({"case_id": "TCGA-ZZ-EMPT", "text": "   "})
    reports.append({"case_id": "TCGA-ZZ-HUGE", "text": "CASE huge MODE ok " + "x" * 100_000})
    _write_jsonl(tmp_path / "reports.jsonl", reports)
    with open(tmp_path / "reports.jsonl", "ab") as f:  # a line with bytes that are not UTF-8
        f.write(b'{"case_id": "TCGA-ZZ-BYTE", "text": "CASE bytes MODE ok caf\xe9 carcinoma"}\n')

    with FlakyChatServer() as server:
        started = time.time()
        result = run_summarize(_llm_cfg(tmp_path, server.url))
        assert time.time() - started >= 1.0  # the 429 case waited for Retry-After, not the 10 ms backoff
        records = {r["case_id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
        assert len(records) == len(MODES) + 3  # no case dropped
        by_mode = {m: records[f"TCGA-T{i % 10}-{i:04d}"] for i, m in enumerate(MODES)}

        for rec in records.values():
            assert set(rec) == {
                "case_id",
                "summary",
                "tokens",
                "budget",
                "backend",
                "model",
                "prompt_sha256",
                "attempts",
                "status",
                "usage",
                "error",
                "facts",
                "unsupported",
            }
            if rec["status"] == "failed":
                assert rec["error"] and rec["summary"] == ""
            else:
                assert rec["status"] in ("ok", "regenerated", "truncated")
                assert 0 < rec["tokens"] <= 35 and rec["tokens"] == count_tokens(rec["summary"])
        assert by_mode["ok"]["status"] == "ok" and by_mode["ok"]["summary"] == SHORT  # quotes stripped
        assert by_mode["ok"]["usage"] == {"prompt_tokens": 100, "completion_tokens": 20}
        for mode, attempts in (("e500", 3), ("r429", 2), ("hang", 2), ("badjson", 2)):
            assert (by_mode[mode]["status"], by_mode[mode]["attempts"]) == ("ok", attempts), mode
        assert by_mode["long_once"]["status"] == by_mode["empty_once"]["status"] == "regenerated"
        feedback = server.bodies["c6"][1]["messages"][-1]["content"]
        assert re.match(r"That was \d+ tokens; rewrite it in at most 35 tokens", feedback)
        assert by_mode["long"]["status"] == "truncated" and by_mode["long"]["attempts"] == 4
        assert by_mode["long"]["summary"].startswith("Finding number 0") or by_mode["long"]["summary"].startswith(
            "finding number 0"
        )
        assert by_mode["empty"]["status"] == "failed" and "empty reply" in by_mode["empty"]["error"]
        assert by_mode["always500"]["status"] == "failed" and "HTTP 500" in by_mode["always500"]["error"]
        assert (
            by_mode["auth"]["status"] == "failed"
            and by_mode["auth"]["attempts"] == 1
            and "401" in by_mode["auth"]["error"]
        )
        assert records["TCGA-ZZ-EMPT"]["status"] == "failed" and "empty report" in records["TCGA-ZZ-EMPT"]["error"]
        assert (
            records["TCGA-ZZ-HUGE"]["status"] == "failed" and "100,018 characters" in records["TCGA-ZZ-HUGE"]["error"]
        )
        assert records["TCGA-ZZ-BYTE"]["status"] == "ok"
        assert any("not valid UTF-8" in w for w in result.warnings)
        assert server.requests["huge"] == 0
        manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
        assert manifest["stage"] == "summarize" and manifest["produced"]["cases"] == len(records)
        assert "HISTOLDM_TEST_NO_SUCH_KEY" not in (tmp_path / "out.jsonl").read_text()

        # a second run sends nothing for finished cases (failed ones included)
        before = sum(server.requests.values())
        again = run_summarize(_llm_cfg(tmp_path, server.url))
        assert sum(server.requests.values()) == before and again.written == 0
        # --retry-failed asks again only for the failed ones; their new line comes last
        before = dict(server.requests)
        with pytest.raises(UserError, match="all 5 cases of this run failed"):  # they fail again: not a success
            run_summarize(_llm_cfg(tmp_path, server.url, retry_failed=True))
        asked = {c for c in server.requests if server.requests[c] != before.get(c, 0)}
        assert asked == {"c7", "c9", "c10"}  # empty, always500, auth (the bad inputs fail before any request)
        manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
        assert manifest["produced"]["by_status"]["failed"] == 5 and manifest["produced"]["this_run"] == {"failed": 5}
        # one line per case, as docs/formats.md promises: the retried cases' old lines are gone
        ids = [json.loads(line)["case_id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert len(ids) == len(set(ids)) == len(records)


def test_out_file_with_other_settings_and_torn_line(tmp_path, capsys):
    _write_jsonl(tmp_path / "r.jsonl", make_synthetic_reports(3, seed=1))
    cfg = SummarizeConfig(input=tmp_path / "r.jsonl", out=tmp_path / "s.jsonl", budget=35)
    run_summarize(cfg)
    with pytest.raises(UserError, match="budget 35.*budget 20"):
        run_summarize(cfg.model_copy(update={"budget": 20}))
    lines = (tmp_path / "s.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "s.jsonl").write_text("".join(lines[:2]) + lines[2][:30])  # a crash mid-append
    capsys.readouterr()
    result = run_summarize(cfg)
    assert result.written == 1 and len(list(read_jsonl(tmp_path / "s.jsonl"))) == 3
    assert f"{tmp_path / 's.jsonl'}:3: ignored a torn last line" in capsys.readouterr().err  # said, not silent


def test_an_outage_is_an_error_and_the_table_covers_the_whole_file(tmp_path, capsys):
    """A wrong --base-url used to print '3 written (failed 3)' and exit 0."""
    _write_jsonl(
        tmp_path / "reports.jsonl", [{"case_id": f"TCGA-AA-000{i}", "text": f"CASE c{i} MODE ok"} for i in range(3)]
    )
    args = [
        "summarize",
        str(tmp_path / "reports.jsonl"),
        "--out",
        str(tmp_path / "out.jsonl"),
        "--backend",
        "openai",
        "--model",
        "m",
        "--api-key-env",
        "HISTOLDM_TEST_NO_SUCH_KEY",
        "--timeout",
        "1.5",
        "--max-attempts",
        "1",
        "--limit",
        "2",
    ]
    with FlakyChatServer() as server:
        url = server.url
    assert main([*args, "--base-url", url]) == 2  # the server is gone: every request is refused
    err = capsys.readouterr().err
    assert (
        f"{tmp_path / 'out.jsonl'}: all 2 cases of this run failed (first: TCGA-AA-000" in err.strip().splitlines()[-1]
    )
    with FlakyChatServer() as server:
        assert main([*args[:-2], "--base-url", server.url]) == 0  # the third case only: the failed ones stay
        assert "3 cases in the whole file (one line each), 1 written by this run" in capsys.readouterr().err
        assert main([*args[:-2], "--base-url", server.url, "--retry-failed"]) == 0
    statuses = [json.loads(line)["status"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert statuses == ["ok", "ok", "ok"]  # one line per case after the retry


def test_counting_long_texts_does_not_warn_about_clip_length(caplog):
    """Budgets count texts longer than CLIP's 77 on purpose; transformers' warning was a false alarm."""
    from histoldm.text.tokenizer import clip_tokenizer, count_tokens_batch

    clip_tokenizer().deprecation_warnings.clear()  # transformers warns once per tokenizer
    with caplog.at_level("WARNING"):
        assert count_tokens(LONG) > 77 and count_tokens_batch([LONG])[0] > 77
    assert "longer than the specified maximum" not in caplog.text


# --- inputs ---------------------------------------------------------------------------------


def test_case_ids_csv_folder_and_duplicates(tmp_path):
    assert normalise_case_id("TCGA-BH-A0B3.4E6F-XXXX-uuid") == "TCGA-BH-A0B3"
    assert normalise_case_id("tcga-bh-a0b3-01Z-00-DX1") == "TCGA-BH-A0B3"
    assert normalise_case_id("  my-case 7 ") == "my-case_7"  # as tiling names a slide "my-case 7.svs"
    assert normalise_case_id("S-01 (HE)") == "S-01_HE"
    csv = tmp_path / "TCGA_Reports.csv"
    csv.write_bytes(
        b'patient_filename,text\nTCGA-BH-A0B3.uuid-1,"Invasive ductal carcinoma, grade 2"\n'
        b'TCGA-BH-A0B3.uuid-2,"a second report"\nTCGA-A2-A0T2.uuid-3,"caf\xe9 ""quoted"", carcinoma"\n'
    )
    loaded = load_reports(csv)
    assert [r.case_id for r in loaded.reports] == ["TCGA-BH-A0B3", "TCGA-A2-A0T2"]
    assert loaded.duplicates == [
        {"case_id": "TCGA-BH-A0B3", "source": "TCGA_Reports.csv:row 3", "kept": "TCGA_Reports.csv:row 2"}
    ]
    assert (
        loaded.reports[1].text == 'caf\ufffd "quoted", carcinoma' and "not valid UTF-8" in loaded.reports[1].warnings[0]
    )
    assert loaded.reports[0].warnings == []
    folder = tmp_path / "txt"
    folder.mkdir()
    (folder / "TCGA-E2-A1B1.abc.txt").write_text("report one")
    (folder / "other.txt").write_bytes(b"\xff\xfe bad")
    loaded = load_reports(folder)
    assert sorted(r.case_id for r in loaded.reports) == ["TCGA-E2-A1B1", "other"]


def test_csv_without_columns_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("filename,body\nx,y\n")
    assert main(["summarize", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "bad.csv: CSV needs columns 'patient_filename'" in err and len(err.strip().splitlines()) == 1


def test_api_key_pasted_as_variable_name_is_refused_without_echo(tmp_path, capsys):
    _write_jsonl(tmp_path / "r.jsonl", make_synthetic_reports(1, seed=3))
    secret = "sk-proj-SECRET123"
    assert (
        main(
            [
                "summarize",
                str(tmp_path / "r.jsonl"),
                "--out",
                str(tmp_path / "s.jsonl"),
                "--backend",
                "openai",
                "--model",
                "m",
                "--base-url",
                "http://127.0.0.1:9/v1",
                "--api-key-env",
                secret,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "name of an environment variable" in err and secret not in err
    assert not list(tmp_path.glob("s.jsonl*"))


def test_cli_extractive_and_dry_run(tmp_path, capsys):
    _write_jsonl(tmp_path / "r.jsonl", make_synthetic_reports(4, seed=3))
    out = tmp_path / "s.jsonl"
    assert main(["summarize", str(tmp_path / "r.jsonl"), "--out", str(out), "--budget", "35"]) == 0
    assert [r["status"] for r in read_jsonl(out)] == ["ok"] * 4
    assert (
        main(
            [
                "summarize",
                str(tmp_path / "r.jsonl"),
                "--out",
                str(tmp_path / "d.jsonl"),
                "--backend",
                "openai",
                "--model",
                "m",
                "--base-url",
                "http://127.0.0.1:9/v1",
                "--prompt",
                "pathldm",
                "--dry-run",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "--- system ---" in printed and "SYNTHETIC REPORT" in printed and "(35 tokens)" in printed
    assert not (tmp_path / "d.jsonl").exists()


# --- extractive ------------------------------------------------------------------------------


BUDGETS = (20, 35, 50, 154)
ADMIN_WORDS = ("synthetic", "cassette", "signed", "fda", "clia", "formalin", "page ", "mrn", "dr.", "guideline")


def test_extractive_fills_each_budget_with_nested_facts_by_relevance():
    cases = make_synthetic_cases(30, seed=7)
    kept = {b: 0 for b in BUDGETS}
    for case in cases:
        summaries = [summarize(case.text, b) for b in BUDGETS]
        for budget, summary in zip(BUDGETS, summaries):
            assert not summary.used_fallback and count_tokens(summary.text) <= budget, (budget, summary.text)
            assert list(summary.facts) == sorted(summary.facts, key=RELEVANCE_ORDER.index)  # relevance order
            assert not stated_opposite(case, summary.text), (summary.text, case)
            assert not any(w in summary.text.lower() for w in ADMIN_WORDS), summary.text
            kept[budget] += sum(facts_stated(case, summary.text).values())
        for shorter, longer in zip(summaries, summaries[1:]):
            assert longer.facts[: len(shorter.facts)] == shorter.facts  # nested: a prefix in relevance order
            assert len(longer.facts) > len(shorter.facts) and longer.text != shorter.text
        assert summaries[0].facts[:2] == ("histologic_type", "grade")
        assert all(facts_stated(case, summaries[0].text)[k] for k in ("histologic_type", "grade")), summaries[0].text
        stated = facts_stated(case, summaries[-1].text)  # at 154 every fact the report states is kept
        missing = {k for k, ok in stated.items() if not ok}
        assert missing <= {"growth"}, (missing, summaries[-1].text)  # terse narrative reports give no growth pattern
        assert count_tokens(summaries[-1].text) >= 0.65 * 154
        one_line = " ".join(case.text.split())  # OCR'd reports often lose their line breaks
        assert summarize(one_line, 154).text == summaries[-1].text
    assert (
        kept[20]
        < kept[35]
        < kept[50]
        < kept[154]
        == sum(13 - (not facts_stated(c, summarize(c.text, 154).text)["growth"]) for c in cases)
    )


def test_synthetic_reports_are_long_noisy_and_deterministic():
    assert make_synthetic_reports(5, seed=7) == make_synthetic_reports(5, seed=7) != make_synthetic_reports(5, seed=8)
    cases = make_synthetic_cases(60, seed=3)
    words = [len(c.text.split()) for c in cases]
    assert min(words) >= 300 and max(words) >= 1200  # hundreds to well over a thousand words, like TCGA's
    texts = "\n".join(c.text for c in cases)
    for section in (
        "GROSS DESCRIPTION:",
        "MICROSCOPIC DESCRIPTION:",
        "FINAL DIAGNOSIS:",
        "COMMENT:",
        "ADDENDUM 1:",
        "Electronically signed",
        "Food and Drug Administration",
        "SYNOPTIC REPORT",
        "CHECKLIST",
        " ....",
        "Page 2 of 4",
    ):
        assert section in texts, section
    assert re.search(r"\w{3}-\n\w", texts) and ("rn" in texts and "1" in texts)  # hyphenated breaks, OCR swaps
    assert {c.dcis for c in cases} == {"present", "absent", "possible"} and {c.lvi for c in cases} == {
        "present",
        "absent",
        "possible",
    }
    assert {c.til_level for c in cases} == {"low", "moderate", "high"}


# --- negation and doubt: a table of phrasings x budgets x every backend's check -------------------

NEGATION_TABLE = [  # (sentence in the report, finding, truth)
    ("Ductal carcinoma in situ, absent.", "dcis", "absent"),
    ("Ductal carcinoma in situ: absent.", "dcis", "absent"),
    ("DUCTAL CARCINOMA IN SITU, NEGATIVE.", "dcis", "absent"),
    ("Ductal carcinoma in situ is not identified.", "dcis", "absent"),
    ("No ductal carcinoma in situ is identified.", "dcis", "absent"),
    ("Negative for ductal carcinoma in situ.", "dcis", "absent"),
    ("No evidence of ductal carcinoma in situ.", "dcis", "absent"),
    ("DCIS: not seen.", "dcis", "absent"),
    ("There is no associated DCIS.", "dcis", "absent"),
    ("Ductal carcinoma in situ:\n   None seen", "dcis", "absent"),
    ("DUCTAL CARCINOMA IN SITU ........ Not identified", "dcis", "absent"),
    ("Negative for lymphovascular invasion, tumor necrosis and ductal carcinoma in situ.", "dcis", "absent"),
    ("Negative for lymphovascular invasion, tumor necrosis and ductal carcinoma in situ.", "lvi", "absent"),
    ("Negative for lymphovascular invasion, tumor necrosis and ductal carcinoma in situ.", "necrosis", "absent"),
    ("Suspicious for ductal carcinoma in situ.", "dcis", "possible"),
    ("Ductal carcinoma in situ cannot be excluded.", "dcis", "possible"),
    ("Ductal carcinoma in situ, cribriform type, nuclear grade 2, present.", "dcis", "present"),
    ("Lymphovascular invasion, absent.", "lvi", "absent"),
    ("Lymphovascular invasion is not seen.", "lvi", "absent"),
    ("No lymphovascular invasion identified.", "lvi", "absent"),
    ("Lymph-vascular invasion: not identified.", "lvi", "absent"),
    ("Lymphovascular invasion cannot be ruled out.", "lvi", "possible"),
    ("Focus suspicious for lymphovascular invasion.", "lvi", "possible"),
    ("No DCIS, lymphovascular invasion present.", "lvi", "present"),
    ("No DCIS, lymphovascular invasion present.", "dcis", "absent"),
    ("Lymphovascular invasion present, no DCIS.", "dcis", "absent"),
    ("Tumor necrosis, absent.", "necrosis", "absent"),
    ("Tumor necrosis: not identified.", "necrosis", "absent"),
    ("No evidence of tumor necrosis.", "necrosis", "absent"),
    ("Tumor necrosis cannot be excluded.", "necrosis", "possible"),
    ("Tumor necrosis is present.", "necrosis", "present"),
    ("The tumor shows extensive necrosis.", "necrosis", "present"),
    ("No extensive tumor necrosis.", "necrosis", "absent"),
    ("Lymph-vascular space invasion is not identified.", "lvi", "absent"),
    ("Negative for focal necrosis or extensive lymphovascular invasion.", "lvi", "absent"),
]
# How a caption names each finding; the first word of a match says its status ("no X", "possible X", "X").
_CAPTION_NAMES = {
    "dcis": r"DCIS|ductal carcinoma in situ",
    "lvi": r"LVI|lymphovascular invasion",
    "necrosis": r"(?:tumou?r )?necrosis",
}


def _caption_says(summary: str, finding: str) -> str | None:
    """An oracle independent of the project's reader, for captions: the status of the first mention."""
    m = re.search(
        rf"\b(?:(no|possible) )?(?:{_CAPTION_NAMES[finding]})\b"
        r"(,?:? (?:absent|not identified|negative|cannot be excluded))?",
        summary,
        re.IGNORECASE,
    )
    if not m:
        return None
    if m[2]:
        return "possible" if "cannot" in m[2] else "absent"
    return {"no": "absent", "possible": "possible", None: "present"}[m[1] and m[1].lower()]


def _table_report(key: str, sentence: str) -> str:
    return (
        f"CASE {key} MODE script-{key}\nGROSS DESCRIPTION: a 3.1 cm mass, sections A1-A9.\nFINAL DIAGNOSIS:\n"
        "Invasive ductal carcinoma, Nottingham grade 2, 2.1 cm.\n" + sentence + "\n"
        "Estrogen receptor positive, progesterone receptor positive, HER2 negative.\nMargins negative."
    )


def test_negation_and_doubt_survive_every_budget_extractive():
    for i, (sentence, finding, truth) in enumerate(NEGATION_TABLE):
        report = _table_report(f"row{i}", sentence)
        for budget in BUDGETS:
            summary, _ = extractive_summary(report, budget)
            said = _caption_says(summary, finding)
            assert said in (None, truth), (sentence, budget, summary)
            if budget >= 50:
                assert said == truth, (sentence, budget, summary)
            assert not contradictions(report, summary), (sentence, budget, summary)


def test_fallback_cut_never_drops_a_negation():
    report = (
        "FINAL DIAGNOSIS: Breast, excision: fibroadenoma with sclerosis; ductal carcinoma in situ, absent; "
        "atypia not seen."
    )
    assert extractive_summary(report, 154)[1]  # no known facts: whole diagnosis clauses
    cut = truncate_to_budget("Breast, excision: fibroadenoma with sclerosis; ductal carcinoma in situ, absent", 18)
    assert cut.endswith("ductal carcinoma in situ.")  # the plain cut reverses the finding...
    for budget in range(1, 40):
        summary = extractive_summary(report, budget)[0]
        assert count_tokens(summary) <= budget and _caption_says(summary, "dcis") in (None, "absent"), (budget, summary)


# (diagnosis, what every budget's summary must not say, what the 154-token one says, a reversed caption)
OTHER_FACTS = [
    (
        "Suspicious for invasive ductal carcinoma, grade 2. Ductal carcinoma in situ, solid type, present.",
        r"^(?:Invasive|IDC)",
        "Possible invasive ductal carcinoma, grade 2",
        "Invasive ductal carcinoma, grade 2; DCIS.",
    ),
    (
        "Ductal carcinoma in situ, solid type, nuclear grade 3. Negative for invasive carcinoma. Margins negative.",
        r"^Invasive",
        "No invasive carcinoma",
        "Invasive carcinoma; DCIS, solid.",
    ),
    (
        "Invasive ductal carcinoma, grade 3. "
        "Tumor cells are negative for estrogen receptor and progesterone receptor, positive for HER2.",
        r"ER\+|PR\+|HER2-",
        "ER-, PR-, HER2+",
        "Invasive ductal carcinoma, grade 3; ER+, PR-, HER2+.",
    ),
    (
        "Invasive ductal carcinoma, grade 3. Carcinoma is close to but does not involve the margin.",
        r"margins positive",
        "margins negative",
        "Invasive ductal carcinoma, grade 3; margins positive.",
    ),
    (
        "Invasive ductal carcinoma, grade 1. Lymph nodes: 0/5 positive. ER: negative.",
        r"ER\+|[1-5]/5",
        "0/5 lymph nodes positive",
        "Invasive ductal carcinoma, grade 1; nodes 2/5 positive; ER-.",
    ),
]


def test_type_receptors_margins_and_nodes_follow_the_same_rule():
    for diagnosis, never, at_154, reversed_caption in OTHER_FACTS:
        report = "FINAL DIAGNOSIS:\n" + diagnosis
        for budget in BUDGETS:
            summary = extractive_summary(report, budget)[0]
            assert not re.search(never, summary), (diagnosis, budget, summary)
            assert not contradictions(report, summary), (diagnosis, budget, summary)
        assert at_154 in extractive_summary(report, 154)[0], diagnosis
        assert contradictions(report, reversed_caption), (
            diagnosis,
            reversed_caption,
        )  # every backend's check catches it


def _reversed(finding: str, truth: str) -> str:
    name = {"dcis": "DCIS", "lvi": "lymphovascular invasion", "necrosis": "tumour necrosis"}[finding]
    return f"{name} present" if truth != "present" else f"no {name}"


def _faithful(finding: str, truth: str) -> str:
    name = {"dcis": "DCIS", "lvi": "lymphovascular invasion", "necrosis": "tumour necrosis"}[finding]
    return {"present": f"{name} present", "absent": f"no {name}", "possible": f"possible {name}"}[truth]


class ScriptedChatServer(FlakyChatServer):
    """Replies from a script per case (`MODE script-<key>`): the n-th request gets the n-th reply, the last repeats."""

    def __init__(self, script: dict[str, list[str]]):
        super().__init__()
        self.script = script

    def answer(self, handler, mode: str, n: int):
        if not mode.startswith("script-"):
            return super().answer(handler, mode, n)
        replies = self.script[mode[len("script-") :]]
        return self.reply(handler, replies[min(n, len(replies)) - 1])


@pytest.mark.parametrize("budget", BUDGETS)
def test_llm_replies_that_reverse_a_finding_are_regenerated(tmp_path, budget):
    head = "Invasive ductal carcinoma, grade 2"
    script = {}
    for i, (_, finding, truth) in enumerate(NEGATION_TABLE):
        script[f"row{i}"] = [f"{head}; {_reversed(finding, truth)}.", f"{head}; {_faithful(finding, truth)}."]
    script["always"] = [f"{head}; DCIS present."]  # never fixed: the case fails, its caption is not used
    script["bare"] = [f"{head}; DCIS; ER+.", f"{head}; no DCIS; ER+."]  # a dropped negation: a bare name asserts
    reports = [
        {"case_id": f"row{i}", "text": _table_report(f"row{i}", s)} for i, (s, _, _) in enumerate(NEGATION_TABLE)
    ]
    reports += [
        {"case_id": key, "text": _table_report(key, "Ductal carcinoma in situ, absent.")} for key in ("always", "bare")
    ]
    _write_jsonl(tmp_path / "reports.jsonl", reports)
    with ScriptedChatServer(script) as server:
        run_summarize(_llm_cfg(tmp_path, server.url, budget=budget, max_attempts=3))
    records = {r["case_id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    for i, (sentence, finding, truth) in enumerate(NEGATION_TABLE):
        rec = records[f"row{i}"]
        assert rec["status"] == "regenerated" and rec["attempts"] == 2, (sentence, rec)
        assert _caption_says(rec["summary"], finding) == truth, (sentence, rec["summary"])
        second = server.bodies[f"row{i}"][1]["messages"][-1]["content"]
        assert (
            second.startswith("That summary contradicts the report: it states") and f"at most {budget} tokens" in second
        )
    assert records["always"]["status"] == "failed" and "contradicts the report" in records["always"]["error"]
    assert records["always"]["summary"] == "" and records["always"]["attempts"] == 3
    assert records["bare"]["status"] == "regenerated" and "no DCIS" in records["bare"]["summary"]


def test_llm_over_budget_reply_is_never_cut_into_the_opposite(tmp_path):
    long_reply = (
        "Invasive ductal carcinoma, Nottingham grade 2; ductal carcinoma in situ, absent; "
        + "; ".join(f"marginal finding {i} described at length" for i in range(12))
        + "."
    )
    plain_cut = truncate_to_budget(long_reply, 15)
    assert _caption_says(plain_cut, "dcis") == "present"  # what the plain cut would have written
    _write_jsonl(
        tmp_path / "reports.jsonl", [{"case_id": "c", "text": _table_report("c", "Ductal carcinoma in situ, absent.")}]
    )
    with ScriptedChatServer({"c": [long_reply]}) as server:
        run_summarize(_llm_cfg(tmp_path, server.url, budget=15, max_attempts=2))
    (rec,) = read_jsonl(tmp_path / "out.jsonl")
    assert rec["status"] == "truncated" and rec["tokens"] <= 15
    assert _caption_says(rec["summary"], "dcis") in (None, "absent") and rec["summary"].startswith(
        "Invasive ductal carcinoma"
    )


def test_receptor_status_written_as_symbols():
    from histoldm.summaries.extractive import _receptors

    written = {
        "ER+ PR- HER2+": "ER+, PR-, HER2+",
        "ER+ PR+ HER2-.": "ER+, PR+, HER2-",
        "HER2 -": "HER2-",
        "HER2-neu negative": "HER2-",
        "Her-2 pos": "HER2+",
        "HER2 (IHC) 2+": "HER2 equivocal",
        "HER2: 3+": "HER2+",
    }
    for text, expected in written.items():
        assert _receptors(text) == (expected,), text


def test_extractive_every_budget_fits_and_other_organs_fall_back():
    text = make_synthetic_reports(1, seed=2)[0]["text"]
    for budget in range(1, 40):
        assert count_tokens(extractive_summary(text, budget)[0]) <= budget
    colon = (
        "GROSS DESCRIPTION: received fresh, 25 cm of colon.\nFINAL DIAGNOSIS: Colon, sigmoid, resection: "
        "moderately differentiated adenocarcinoma invading through the muscularis propria into pericolic fat. "
        "Twelve lymph nodes negative for metastatic carcinoma.\nElectronically signed by Dr. X, MD"
    )
    summary, fell_back = extractive_summary(colon, 20)
    assert count_tokens(summary) <= 20 and "adenocarcinoma" in summary.lower() and "signed" not in summary
    assert summary.startswith("Moderately differentiated adenocarcinoma")


def test_truncate_to_budget_prefers_clause_boundaries():
    text = "Invasive ductal carcinoma, grade 3; lymphovascular invasion present; DCIS, solid; ER-, PR-, HER2+."
    cut = truncate_to_budget(text, 12)
    assert count_tokens(cut) <= 12 and cut in (
        "Invasive ductal carcinoma, grade 3; lymphovascular invasion present.",
        "Invasive ductal carcinoma, grade 3.",
    )
    assert count_tokens(truncate_to_budget("supercalifragilisticexpialidocious " * 3, 2)) <= 2


# --- prompts -----------------------------------------------------------------------------------


def test_prompt_presets_and_files(tmp_path):
    targeted = load_prompt("targeted")
    messages = render(targeted, "report with {braces} and {token_budget}", 35)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert (
        "at most 25 words (35 tokens)" in messages[1]["content"]
        and "{braces} and {token_budget}" in messages[1]["content"]
    )
    assert load_prompt("pathldm").sha256 != targeted.sha256
    plain = tmp_path / "p.txt"
    plain.write_text("Summarise in {word_budget} words:\n{report}")
    assert render(load_prompt(str(plain)), "R", 14) == [{"role": "user", "content": "Summarise in 10 words:\nR"}]
    (tmp_path / "noreport.txt").write_text("Summarise.")
    with pytest.raises(UserError, match="never uses {report}"):
        load_prompt(str(tmp_path / "noreport.txt"))
    (tmp_path / "bad.yaml").write_text("- role: wizard\n  content: x\n")
    with pytest.raises(UserError, match="message 1 needs role"):
        load_prompt(str(tmp_path / "bad.yaml"))
    with pytest.raises(UserError, match="not a prompt preset"):
        load_prompt("nonexistent-preset")


# --- the local backend, offline, on a tiny random causal LM ----------------------------------


WORDS = ["tumor", "cells", "tissue", "section", "grade", "margin", "carcinoma"]  # one CLIP token each


@pytest.fixture
def tiny_local_lm(tmp_path, monkeypatch):
    """A 2-layer GPT-2 with random weights and a word-level tokenizer with a chat template, saved as
    a transformers folder. It never ends early and never emits its special tokens (generation config),
    so every reply is exactly max_new_tokens of WORDS."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(vocab), n_positions=4096, n_embd=16, n_layer=2, n_head=2, bos_token_id=1, eos_token_id=1
        )
    )
    model.generation_config = GenerationConfig(bos_token_id=None, eos_token_id=None, suppress_tokens=[0, 1])
    folder = tmp_path / "tiny-lm"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_local_backend_generates_and_its_replies_go_through_the_budget_check(tmp_path, tiny_local_lm, capsys):
    from histoldm.summaries.llm import LocalBackend

    reply = LocalBackend(str(tiny_local_lm), temperature=0.0, seed=0, max_tokens=6).complete(
        [{"role": "system", "content": "summarise"}, {"role": "user", "content": "invasive carcinoma grade 2"}]
    )
    assert len(reply.text.split()) == 6 and set(reply.text.split()) <= set(WORDS)
    assert reply.usage["completion_tokens"] == 6 and reply.usage["prompt_tokens"] > 0

    # end to end: six words (one clause) never fit a 1-token budget, and a reply is cut only after a whole
    # clause, so after the last attempt the case fails with the reason
    _write_jsonl(tmp_path / "r.jsonl", make_synthetic_reports(1, seed=3))
    out = tmp_path / "s.jsonl"
    assert (
        main(
            [
                "summarize",
                str(tmp_path / "r.jsonl"),
                "--out",
                str(out),
                "--backend",
                "local",
                "--model",
                str(tiny_local_lm),
                "--budget",
                "1",
                "--max-tokens",
                "6",
                "--max-attempts",
                "2",
            ]
        )
        == 2
    )  # every case of the run failed
    [record] = list(read_jsonl(out))
    assert record["status"] == "failed" and record["attempts"] == 2, record
    assert "still over budget after 2 attempts, and no whole clause of the shortest reply" in record["error"]
    assert record["usage"]["completion_tokens"] == 12  # both attempts generated


def test_llm_over_budget_reply_is_cut_after_whole_clauses_only(tmp_path):
    """An over-budget reply is cut where a clause ends (; or .): the comma inside "ER, PR positive" is no
    place to cut ("...; LVI present; ER." was written); a reply whose first clause alone is over budget fails."""
    reply = (
        "Invasive ductal carcinoma, Nottingham grade 2, 2.1 cm; LVI present; ER, PR positive; HER2 negative; "
        "margins negative."
    )
    budget = 21
    assert truncate_to_budget(reply, budget).endswith("; LVI present; ER.")  # the fragment a comma cut leaves
    report = _table_report("c", "Lymphovascular invasion is present.")
    _write_jsonl(
        tmp_path / "reports.jsonl",
        [
            {"case_id": "c", "text": report},
            {"case_id": "d", "text": _table_report("d", "Lymphovascular invasion is present.")},
        ],
    )
    with ScriptedChatServer(
        {
            "c": [reply],
            "d": [
                "Invasive ductal carcinoma of no special type, Nottingham grade 2 of 3, measuring 2.1 cm in "
                "greatest dimension, with lymphovascular invasion present and receptors as stated."
            ],
        }
    ) as server:
        run_summarize(_llm_cfg(tmp_path, server.url, budget=budget, max_attempts=2))
    records = {r["case_id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert records["c"]["status"] == "truncated" and records["c"]["tokens"] <= budget
    assert records["c"]["summary"] == "Invasive ductal carcinoma, Nottingham grade 2, 2.1 cm; LVI present."
    assert records["d"]["status"] == "failed" and "no whole clause of the shortest reply" in records["d"]["error"]


def test_summarize_lists_failed_cases_with_reasons_on_screen_and_in_the_manifest(tmp_path, capsys):
    """Twelve cases the server refuses and one it answers: each failed id with its reason, the first ten
    printed then a count, all twelve in the manifest's skipped (before: only 'failed 12')."""
    reports = [{"case_id": f"TCGA-AA-{i:04d}", "text": f"CASE c{i} MODE auth"} for i in range(12)]
    reports.append({"case_id": "TCGA-BB-0001", "text": "CASE ok MODE ok"})
    _write_jsonl(tmp_path / "reports.jsonl", reports)
    out = tmp_path / "out.jsonl"
    with FlakyChatServer() as server:
        assert (
            main(
                [
                    "summarize",
                    str(tmp_path / "reports.jsonl"),
                    "--out",
                    str(out),
                    "--backend",
                    "openai",
                    "--model",
                    "m",
                    "--base-url",
                    server.url,
                    "--api-key-env",
                    "HISTOLDM_TEST_NO_SUCH_KEY",
                    "--max-attempts",
                    "1",
                ]
            )
            == 0
        )
    printed = [line for line in capsys.readouterr().out.splitlines() if "failed" in line]
    listed = [line for line in printed if line.startswith("failed: ")]
    assert [line.split(": ")[1] for line in listed] == [f"TCGA-AA-{i:04d}" for i in range(10)]
    assert all(len(line.split(": ", 2)[2]) > 5 for line in listed)  # each with its reason
    assert "12 cases failed (2 more; all listed in the manifest's skipped)" in printed[-1]
    skipped = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())["skipped"]
    assert [s["case_id"] for s in skipped] == [f"TCGA-AA-{i:04d}" for i in range(12)]
    assert all(s["reason"].startswith("failed: ") for s in skipped)


def test_an_out_file_of_other_settings_names_only_what_differs(tmp_path):
    """Another budget with the extractive backend: the message names the budgets, not 'prompt None'."""
    _write_jsonl(tmp_path / "r.jsonl", make_synthetic_reports(2, seed=1))
    cfg = SummarizeConfig(input=tmp_path / "r.jsonl", out=tmp_path / "s.jsonl", budget=35)
    run_summarize(cfg)
    with pytest.raises(UserError) as err:
        run_summarize(cfg.model_copy(update={"budget": 20}))
    assert (
        str(err.value)
        == f"{tmp_path / 's.jsonl'}: holds summaries made with budget 35; this run asks budget 20; choose another --out"
    )
    with pytest.raises(
        UserError,
        match="made with backend extractive, no prompt \\(extractive backend\\); "
        "this run asks backend openai, the prompt [0-9a-f]{12};",
    ):
        run_summarize(cfg.model_copy(update={"backend": "openai", "model": "m"}))
