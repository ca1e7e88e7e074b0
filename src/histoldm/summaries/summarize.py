"""The summarize stage: every report -> one summary line within a CLIP-token budget.

Resumable and crash-safe: each finished case is appended to the output JSONL and flushed at
once, and a re-run skips every case id already there, so a crash loses at most the requests in
flight. A case is never dropped silently: it ends `ok`, `regenerated` (needed feedback rounds),
`truncated` (still over budget after the last attempt, cut after a whole clause) or `failed`
(with the reason). Every summary, from any backend, is checked against its report
(`consistency`): a reply that drops a negation or states the opposite of a finding goes back to
the model with the contradiction named, and a case whose replies all contradict the report fails.
LLM cases run `concurrency` at a time in threads (the work is waiting on HTTP).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from histoldm.errors import UserError
from histoldm.fileio import atomic_write_jsonl, read_jsonl, repair_torn_tail
from histoldm.manifest import write_manifest
from histoldm.summaries.budget import whole_clause_prefixes
from histoldm.summaries.config import SummarizeConfig
from histoldm.summaries.consistency import audited_facts, contradictions
from histoldm.summaries.extractive import extractive_summary
from histoldm.summaries.llm import ChatBackend, LocalBackend, OpenAIBackend, PermanentError, TransientError
from histoldm.summaries.loading import LoadedReports, Report, load_reports
from histoldm.summaries.prompts import PRESETS, PromptTemplate, contradiction_feedback, feedback, load_prompt, render
from histoldm.text.tokenizer import count_tokens

STATUSES = ("ok", "regenerated", "truncated", "failed")


def manifest_path(out: Path) -> Path:
    """`summaries.jsonl` -> `summaries.jsonl.manifest.json` (the project's rule for single-file outputs)."""
    return Path(f"{out}.manifest.json")


class _Appender:
    """Append-only JSONL: each line written and flushed at once; fsync at most every second."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_torn_tail(path)
        self._f = open(path, "a", encoding="utf-8")
        self._synced = time.monotonic()

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        self._f.flush()
        if time.monotonic() - self._synced > 1.0:
            os.fsync(self._f.fileno())
            self._synced = time.monotonic()

    def close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()


# --- one case -------------------------------------------------------------------------------


def _record(cfg: SummarizeConfig, report: Report, model: str, prompt_sha: str | None, **fields: Any) -> dict[str, Any]:
    summary = fields.get("summary", "")
    facts, unsupported = audited_facts(report.text, summary) if summary else ([], [])
    return {
        "case_id": report.case_id,
        "summary": summary,
        "tokens": fields.get("tokens", count_tokens(summary) if summary else 0),
        "budget": cfg.budget,
        "backend": cfg.backend,
        "model": model,
        "prompt_sha256": prompt_sha,
        "attempts": fields.get("attempts", 0),
        "status": fields["status"],
        "usage": fields.get("usage"),
        "error": fields.get("error"),
        "facts": facts,
        "unsupported": unsupported,
    }


def _input_problem(cfg: SummarizeConfig, report: Report) -> str | None:
    if not report.text.strip():
        return f"{report.source}: empty report"
    if len(report.text) > cfg.max_report_chars:
        return (
            f"{report.source}: report is {len(report.text):,} characters, over max_report_chars="
            f"{cfg.max_report_chars:,} (raise it with --set max_report_chars=N to summarise it)"
        )
    return None


def _clean_reply(text: str) -> str:
    """One line, without the quotes and 'Summary:' labels small models like to add."""
    text = " ".join(text.split()).strip()
    for label in ("summary:", "caption:", "summary -", "caption -"):
        if text.lower().startswith(label):
            text = text[len(label) :].strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def _backoff(cfg: SummarizeConfig, attempt: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return min(retry_after, cfg.backoff_max_s)
    return min(cfg.backoff_base_s * 2 ** (attempt - 1), cfg.backoff_max_s)


def summarize_with_llm(
    cfg: SummarizeConfig, backend: ChatBackend, template: PromptTemplate, report: Report
) -> dict[str, Any]:
    """One case; an unexpected error fails this case with its reason instead of stopping the run."""
    try:
        return _regenerate(cfg, backend, template, report)
    except Exception as e:  # noqa: BLE001 - recorded per case, never swallowed silently
        return {"status": "failed", "error": f"unexpected {type(e).__name__}: {e}"}


def _regenerate(cfg: SummarizeConfig, backend: ChatBackend, template: PromptTemplate, report: Report) -> dict[str, Any]:
    """The regeneration loop: retry errors with backoff; over-budget, empty or contradicting replies with feedback."""
    messages = render(template, report.text, cfg.budget)
    usage: dict[str, int] | None = None  # stays None unless the backend reports usage
    best_over: tuple[int, str] | None = None  # the shortest over-budget reply, for the last resort
    feedback_rounds, last_error = 0, "no attempt made"
    attempt = 0
    for attempt in range(1, cfg.max_attempts + 1):
        try:
            reply = backend.complete(messages)
        except TransientError as e:
            last_error = e.reason
            if attempt < cfg.max_attempts:
                time.sleep(_backoff(cfg, attempt, e.retry_after))
            continue
        except PermanentError as e:
            return {"status": "failed", "attempts": attempt, "usage": usage, "error": e.reason}
        if reply.usage:
            usage = usage or {"prompt_tokens": 0, "completion_tokens": 0}
            for k in usage:
                usage[k] += int(reply.usage.get(k, 0) or 0)
        text = _clean_reply(reply.text)
        n = count_tokens(text) if text else None
        problems = contradictions(report.text, text) if n is not None and n <= cfg.budget else []
        if n is not None and n <= cfg.budget and not problems:
            status = "regenerated" if feedback_rounds else "ok"
            return {"status": status, "summary": text, "tokens": n, "attempts": attempt, "usage": usage}
        if problems:
            last_error = "reply contradicts the report: " + "; ".join(problems)
            note = contradiction_feedback(problems, cfg.budget)
        elif n is None:
            last_error = "empty reply"
            note = feedback(n, cfg.budget)
        else:
            last_error = f"reply of {n} tokens, over the budget of {cfg.budget}"
            if best_over is None or n < best_over[0]:
                best_over = (n, text)
            note = feedback(n, cfg.budget)
        messages = messages + [{"role": "assistant", "content": text}, {"role": "user", "content": note}]
        feedback_rounds += 1
    if best_over is not None:  # the longest run of whole clauses that fits and states nothing the report contradicts
        cut = next(
            (c for c in whole_clause_prefixes(best_over[1], cfg.budget) if not contradictions(report.text, c)), None
        )
        if cut:
            return {
                "status": "truncated",
                "summary": cut,
                "attempts": attempt,
                "usage": usage,
                "error": f"still over budget after {attempt} attempts (shortest reply {best_over[0]} tokens); "
                "cut after a whole clause",
            }
        last_error = (
            f"still over budget after {attempt} attempts, "
            f"and no whole clause of the shortest reply ({best_over[0]} tokens) fits"
        )
    return {
        "status": "failed",
        "attempts": attempt,
        "usage": usage,
        "error": f"{attempt} attempts failed; last: {last_error}",
    }


def summarize_extractive(cfg: SummarizeConfig, report: Report) -> dict[str, Any]:
    try:
        summary, used_fallback = extractive_summary(report.text, cfg.budget)
    except Exception as e:  # noqa: BLE001 - one odd report must not stop ten thousand
        return {"status": "failed", "attempts": 1, "error": f"{report.source}: unexpected {type(e).__name__}: {e}"}
    if not summary:
        return {"status": "failed", "attempts": 1, "error": f"{report.source}: no diagnostic text found"}
    if problems := contradictions(report.text, summary):  # a reader bug must never become a reversed caption
        return {
            "status": "failed",
            "attempts": 1,
            "error": f"{report.source}: summary contradicts the report: " + "; ".join(problems),
        }
    if used_fallback:
        return {
            "status": "truncated",
            "summary": summary,
            "attempts": 1,
            "error": "no known facts found; diagnosis clauses cut to fit",
        }
    return {"status": "ok", "summary": summary, "attempts": 1}


# --- the stage ------------------------------------------------------------------------------


def _make_backend(cfg: SummarizeConfig) -> ChatBackend:
    max_tokens = cfg.max_tokens or 4 * cfg.budget + 32
    if cfg.backend == "openai":
        if not cfg.model:
            raise UserError(
                "--model: required with --backend openai (e.g. gpt-4o-mini, or the name your server serves)"
            )
        return OpenAIBackend(
            cfg.model, cfg.base_url, cfg.api_key_env, cfg.temperature, cfg.seed, max_tokens, cfg.timeout_s
        )
    return LocalBackend(cfg.model, cfg.temperature, cfg.seed, max_tokens)


def _finished_cases(cfg: SummarizeConfig, prompt_sha: str | None) -> dict[str, str]:
    """case_id -> status of the records already in the output; refuses to mix different settings."""
    if not cfg.out.exists():
        return {}
    done: dict[str, str] = {}
    mine = {"budget": cfg.budget, "backend": cfg.backend, "prompt_sha256": prompt_sha}
    for rec in read_jsonl(cfg.out):
        if differ := [k for k, v in mine.items() if rec.get(k) != v]:
            raise UserError(
                f"{cfg.out}: holds summaries made with {_settings(rec, differ)}; "
                f"this run asks {_settings(mine, differ)}; "
                "choose another --out"
            )
        if rec.get("status") in STATUSES:
            done[rec["case_id"]] = rec["status"]
    return done


def _settings(record: dict[str, Any], keys: list[str]) -> str:
    """The settings `keys` of a record as a person reads them: 'budget 35', 'prompt 1a2b3c4d5e6f',
    'no prompt (extractive)'."""

    def one(key: str) -> str:
        value = record.get(key)
        if key == "prompt_sha256":
            return f"the prompt {str(value)[:12]}" if value else "no prompt (extractive backend)"
        return f"{key} {value}"

    return ", ".join(one(k) for k in keys)


def _failed_cases(out: Path) -> list[dict[str, str]]:
    """The file's failed cases (one line per case) with their reasons, by case id (the file is in finishing order)."""
    failed = [
        {"case_id": r["case_id"], "reason": str(r.get("error"))} for r in read_jsonl(out) if r.get("status") == "failed"
    ]
    return sorted(failed, key=lambda f: f["case_id"])


def _histogram(tokens: list[int], budget: int, bins: int = 8) -> list[tuple[str, int]]:
    width = max(1, -(-budget // bins))
    counts = Counter(min(t // width, bins - 1) for t in tokens)
    return [
        (f"{i * width}-{min((i + 1) * width - 1, budget) if i < bins - 1 else budget}", counts.get(i, 0))
        for i in range(bins)
    ]


def one_line_per_case(out: Path) -> Counter:
    """Keep only each case's newest line (a --retry-failed run appends a second one), rewriting the
    file atomically when there is anything to drop; returns the whole file's counts by status."""
    records = list(read_jsonl(out))
    latest: dict[str, dict[str, Any]] = {}
    for rec in records:
        latest[rec["case_id"]] = rec  # a case keeps its first position and takes its newest line
    if len(latest) < len(records):
        atomic_write_jsonl(out, latest.values())
    counts = Counter({s: 0 for s in STATUSES})
    counts.update(r.get("status") for r in latest.values())
    return counts


def _print_table(
    all_counts: Counter, counts: Counter, histogram: list[tuple[str, int]], usage: dict[str, int], out: Path
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"summaries in {out}")
    table.add_column("status")
    table.add_column("whole file", justify="right")
    table.add_column("this run", justify="right")
    for status in STATUSES:
        table.add_row(status, str(all_counts.get(status, 0)), str(counts.get(status, 0)))
    hist = Table(title="tokens per summary (this run)")
    hist.add_column("tokens")
    hist.add_column("cases", justify="right")
    hist.add_column("")
    top = max((c for _, c in histogram), default=0) or 1
    for label, c in histogram:
        hist.add_row(label, str(c), "█" * round(20 * c / top))
    console = Console(stderr=True)
    console.print(table)
    console.print(hist)
    console.print(f"usage: {usage['prompt_tokens']:,} prompt + {usage['completion_tokens']:,} completion tokens")
    print(
        f"{out}: {sum(all_counts.values())} cases in the whole file (one line each), "
        f"{sum(counts.values())} written by this run",
        file=sys.stderr,
    )


@dataclass(frozen=True)
class SummarizeDryRun:
    """`summarize --dry-run`: what the first case would get (extractive) or be sent (LLM); nothing written."""

    case_id: str
    summary: str | None = None  # the extractive backend's summary
    messages: list[dict[str, str]] | None = None  # an LLM backend's rendered prompt


@dataclass(frozen=True)
class SummarizeResult:
    """`histoldm summarize`: this run's counts and usage, and the whole file's counts."""

    out: Path
    manifest: Path
    cases: int  # reports read (after --limit)
    skipped_finished: int  # already in the file from an earlier run
    written: int  # by this run
    counts: dict[str, int]  # this run's records by status
    all_counts: dict[str, int]  # the whole file's records by status
    duplicates: list[dict[str, str]]  # dropped duplicate reports: case_id, source, kept
    failed: list[dict[str, str]]  # the whole file's failed cases: case_id, reason (--retry-failed tries them again)
    warnings: list[str]
    usage: dict[str, int]  # LLM tokens of this run: prompt_tokens, completion_tokens
    token_histogram: list[tuple[str, int]]  # this run's summary lengths (CLIP tokens) in bins up to the budget
    wall_s: float


def _dry_run(cfg: SummarizeConfig, template: PromptTemplate | None, report: Report) -> SummarizeDryRun:
    print(f"dry run: case {report.case_id} ({report.source}), budget {cfg.budget}")
    if template is None:
        result = summarize_extractive(cfg, report)
        print("extractive backend: no prompt; it would write:")
        print(result.get("summary", result.get("error")))
        return SummarizeDryRun(report.case_id, summary=result.get("summary"))
    messages = render(template, report.text, cfg.budget)
    for m in messages:
        print(f"--- {m['role']} ---")
        print(m["content"])
    return SummarizeDryRun(report.case_id, messages=messages)


@dataclass
class _Tally:
    """This run's records as they are written: counts by status, the first failure, tokens and LLM usage."""

    counts: Counter = field(default_factory=Counter)
    first_failure: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})

    def add(self, record: dict[str, Any]) -> None:
        self.counts[record["status"]] += 1
        if record["status"] == "failed" and not self.first_failure:
            self.first_failure.append(f"{record['case_id']}: {record['error']}")
        if record["status"] != "failed":
            self.tokens.append(record["tokens"])
        for k in self.usage:
            self.usage[k] += (record["usage"] or {}).get(k, 0)


def _load_warnings(loaded: LoadedReports, reports: list[Report]) -> list[str]:
    """The loader's warnings about the reports, and one per dropped duplicate; each is shown as it is found."""
    warnings = [w for r in reports for w in r.warnings]
    for dup in loaded.duplicates:
        warnings.append(f"{dup['source']}: duplicate case id {dup['case_id']}, kept {dup['kept']}")
    for w in warnings:
        tqdm.write(f"warning: {w}")
    return warnings


def _summarize_pending(
    cfg: SummarizeConfig,
    pending: list[Report],
    backend: ChatBackend | None,
    template: PromptTemplate | None,
    model_name: str,
    prompt_sha: str | None,
) -> _Tally:
    """Summarize the pending reports (in order when extractive, concurrently for an LLM), appending each record
    to `cfg.out` as it finishes, so an interrupted run keeps what it did."""
    tally = _Tally()

    def finish(report: Report, result: dict[str, Any]) -> None:
        record = _record(cfg, report, model_name, prompt_sha, **result)
        writer.write(record)
        tally.add(record)
        bar.update(1)

    writer = _Appender(cfg.out)
    bar = tqdm(total=len(pending), desc=f"summarize ({cfg.backend})", unit="case", disable=None)
    try:
        runnable = []
        for report in pending:
            if problem := _input_problem(cfg, report):
                finish(report, {"status": "failed", "error": problem})
            else:
                runnable.append(report)
        if cfg.backend == "extractive":
            for report in runnable:
                finish(report, summarize_extractive(cfg, report))
        elif runnable:
            assert backend is not None and template is not None
            with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
                futures = {pool.submit(summarize_with_llm, cfg, backend, template, r): r for r in runnable}
                try:
                    for future in as_completed(futures):
                        finish(futures[future], future.result())
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    finally:
        bar.close()
        writer.close()
    return tally


def _write_summarize_manifest(
    cfg: SummarizeConfig,
    template: PromptTemplate | None,
    started: float,
    loaded: LoadedReports,
    all_counts: Counter,
    failed: list[dict[str, str]],
    warnings: list[str],
    tally: _Tally,
    histogram: list[tuple[str, int]],
) -> dict[str, Any]:
    """The stage's manifest: inputs, the whole file's and this run's counts, and what was skipped and why."""
    return write_manifest(
        manifest_path(cfg.out),
        stage="summarize",
        config=cfg,
        inputs={"reports": cfg.input, "prompt": cfg.prompt if template and cfg.prompt not in PRESETS else None},
        produced={
            "summaries": str(cfg.out),
            "cases": sum(all_counts.values()),
            "by_status": dict(all_counts),
            "this_run": dict(tally.counts),
        },
        started=started,
        seed=cfg.seed,
        skipped=[
            {"case_id": d["case_id"], "source": d["source"], "reason": f"duplicate; kept {d['kept']}"}
            for d in loaded.duplicates
        ]
        + [{"case_id": f["case_id"], "reason": f"failed: {f['reason']}"} for f in failed],
        extra={"warnings": warnings, "usage_this_run": tally.usage, "token_histogram_this_run": histogram},
    )


def run_summarize(cfg: SummarizeConfig) -> SummarizeResult | SummarizeDryRun:
    """Summarize every report not yet in `cfg.out`; returns counts, usage and paths."""
    started = time.time()
    loaded = load_reports(cfg.input)
    reports = loaded.reports[: cfg.limit] if cfg.limit else loaded.reports
    if not reports:
        raise UserError(f"{cfg.input}: no reports found")
    template = None if cfg.backend == "extractive" else load_prompt(cfg.prompt)
    prompt_sha = template.sha256 if template else None
    if cfg.dry_run:
        return _dry_run(cfg, template, reports[0])

    done = _finished_cases(cfg, prompt_sha)
    pending = [r for r in reports if r.case_id not in done or (cfg.retry_failed and done[r.case_id] == "failed")]
    warnings = _load_warnings(loaded, reports)
    backend = _make_backend(cfg) if pending and cfg.backend != "extractive" else None
    model_name = backend.model if backend else "rules-v3" if cfg.backend == "extractive" else str(cfg.model)
    tally = _summarize_pending(cfg, pending, backend, template, model_name, prompt_sha)

    counts, usage = tally.counts, tally.usage
    histogram = _histogram(tally.tokens, cfg.budget)
    over = [t for t in tally.tokens if t > cfg.budget]
    if over:  # cannot happen by construction; a loud guard, since the budget is the stage's contract
        raise RuntimeError(f"{len(over)} summaries over budget: a bug in histoldm, please report it")
    all_counts = one_line_per_case(cfg.out)
    failed = _failed_cases(cfg.out)
    _print_table(all_counts, counts, histogram, usage, cfg.out)
    manifest = _write_summarize_manifest(cfg, template, started, loaded, all_counts, failed, warnings, tally, histogram)
    if counts and counts["failed"] == sum(counts.values()):  # an outage or a wrong --base-url is not a success
        raise UserError(
            f"{cfg.out}: all {counts['failed']} cases of this run failed (first: {tally.first_failure[0]}); "
            "fix the cause and re-run with --retry-failed"
        )
    return SummarizeResult(
        out=Path(cfg.out),
        manifest=manifest_path(cfg.out),
        cases=len(reports),
        skipped_finished=len(reports) - len(pending),
        written=sum(counts.values()),
        counts=dict(counts),
        all_counts=dict(all_counts),
        duplicates=loaded.duplicates,
        failed=failed,
        warnings=warnings,
        usage=usage,
        token_histogram=histogram,
        wall_s=manifest["wall_time_s"],
    )
