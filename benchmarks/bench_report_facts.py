"""Are summaries true to hard reports? Facts kept, false statements, the checker's errors and speed,
on `histoldm.summaries.hard_reports` (several specimen parts, addenda that correct,
history of a prior cancer, neoadjuvant therapy, in-situ-only cases, node notations, OCR noise).

    python benchmarks/bench_report_facts.py [--reports 500] [--seed 0] [--budgets 20 35 50 154] [--one-line] \\
        [--json out.jsonl]

Per budget, with the extractive backend exactly as `histoldm summarize` calls it for one report:
(a) facts kept: per fact kind, the share of reports stating the fact whose summary states it with
    the right value (`summary_oracle.states`, independent of the project's readers);
(b) false statements: summaries where the project's summary reader (`read_summary` below) finds a
    value that contradicts the ground truth; separately, summaries that state a planted trap's
    wrong value by the oracle (history as current, the pre-addendum value, ...) or copy an OCR'd word;
(d) speed: reports per second on one core (threads pinned to 1; CPU and wall time), and 10,000
    reports extrapolated.
And once: (c) the checker's errors both ways: correct summaries written from the ground truth in
four styles (IDC / ER+ (80%) / HER2 2+ FISH amplified abbreviations, prose, a key-value list,
clinical sentences with ER-positive and sizes in mm) that
it rejects, and planted contradictions (reversed negation, wrong receptor, wrong laterality,
history as current, pre-addendum value, ...) that it misses: a planted one counts as caught only by a
complaint that the same summary without the planted error did not get.
--one-line runs every report together on one line (whitespace joined), as OCR'd TCGA text often
arrives; the ground truth is the same. Prints one JSON line per budget and one for the checker, then
Markdown tables.
"""

from __future__ import annotations

import os

for _var in (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "RAYON_NUM_THREADS",
    "TOKENIZERS_PARALLELISM",
):
    os.environ[_var] = (
        "false" if _var == "TOKENIZERS_PARALLELISM" else "1"
    )  # one core, before any library starts threads

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

from histoldm.summaries.config import SummarizeConfig  # noqa: E402
from histoldm.summaries.hard_reports import FACT_KINDS, HardReport, make_hard_reports  # noqa: E402
from histoldm.summaries.loading import Report  # noqa: E402
from histoldm.summaries.summarize import summarize_extractive  # noqa: E402
from histoldm.summaries.summary_oracle import (  # noqa: E402
    SUMMARY_STYLES,
    planted_contradictions,
    states,
    trap_fallen,
    true_summaries,
)
from histoldm.text.tokenizer import count_tokens  # noqa: E402

_SIGN = {"+": "positive", "-": "negative"}


def read_summary(summary: str) -> dict[str, str]:
    """The project's reading of a summary, as {kind: canonical value} (kinds of hard_reports.FACT_KINDS, plus
    "invasive" and "node_status" where the reader only gives those). Uses `case_facts.summary_facts` when the
    project has it, else the statements the checker reads today."""
    try:
        from histoldm.summaries.case_facts import summary_facts
    except ImportError:
        summary_facts = None
    if summary_facts is not None:
        out = {}
        for fact in summary_facts(summary):
            value = getattr(fact, "value", None)
            status = getattr(fact, "status", None)
            if fact.kind in ("lvi", "dcis", "lcis", "necrosis") and value not in ("present", "absent"):
                value = status
            if value is not None:
                out[fact.kind] = str(value)
        return out
    from histoldm.summaries.consistency import statements

    said = statements(summary, is_summary=True)
    out = {
        name: status
        for name, status in said.findings.items()
        if name in ("lvi", "dcis", "lcis", "necrosis", "invasive")
    }
    for key, sign in said.receptors.items():
        out[key.lower()] = "equivocal" if "equivocal" in sign else _SIGN[sign[-1]]
    if said.margins:
        out["margins"] = said.margins
    if said.nodes_positive is not None:
        out["node_status"] = "positive" if said.nodes_positive else "negative"
    return out


def check(report: str, summary: str) -> tuple[list[str], int]:
    """The project's checker: (contradictions, how many statements it calls unsupported), from
    `consistency.check_summary` when present, else today's `contradictions` (which has no unsupported)."""
    from histoldm.summaries import consistency

    if hasattr(consistency, "check_summary"):
        result = consistency.check_summary(report, summary)
        return [str(c) for c in result.contradictions], len(getattr(result, "unsupported", ()))
    return consistency.contradictions(report, summary), 0


def false_statements(case: HardReport, said: dict[str, str]) -> list[str]:
    """Values the reader finds in the summary that contradict the ground truth (a kind the truth lacks is not counted,
    except a trap's known-wrong value)."""
    truth = case.facts
    wrong = []
    for kind, value in said.items():
        if kind == "invasive":
            if value == "present" and truth.get("histologic_type") == "ductal carcinoma in situ":
                wrong.append("invasive: present, truth in situ only")
            continue
        if kind == "node_status":
            k = int(truth["nodes"].split("/")[0]) if "nodes" in truth else None
            if k is not None and (value == "positive") != (k > 0):
                wrong.append(f"node status: {value}, truth {truth['nodes']}")
            continue
        if kind in truth and value != truth[kind]:
            wrong.append(f"{kind}: {value}, truth {truth[kind]}")
        elif kind not in truth and any(t.kind == kind and t.wrong == value for t in case.traps):
            wrong.append(f"{kind}: {value}, a planted trap")
    return wrong


def run_budget(cases: list[HardReport], budget: int) -> dict:
    cfg = SummarizeConfig(input=Path("hard-reports.jsonl"), out=Path("unused.jsonl"), budget=budget)
    reports = [Report(c.case_id, c.text, f"hard:{c.case_id}") for c in cases]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    results = [summarize_extractive(cfg, r) for r in reports]
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    kept, stated = Counter(), Counter()
    all_kept = false_cases = trap_cases = ocr_cases = 0
    statuses = Counter(r["status"] for r in results)
    false_kinds, trap_kinds, tokens = Counter(), Counter(), []
    examples: dict[str, str] = {}
    for case, result in zip(cases, results):
        summary = result.get("summary") or ""
        tokens.append(count_tokens(summary) if summary else 0)
        every = True
        for kind, value in case.facts.items():
            stated[kind] += 1
            ok = bool(summary) and states(summary, kind, value, case.facts)
            kept[kind] += ok
            every &= ok
        all_kept += every
        wrong = false_statements(case, read_summary(summary)) if summary else []
        false_cases += bool(wrong)
        for w in wrong:
            false_kinds[w.split(":")[0]] += 1
            examples.setdefault(w.split(":")[0], f"{case.case_id}: {w} | {summary}")
        fallen = [t for t in case.traps if summary and trap_fallen(summary, t, case.facts)]
        trap_cases += any(t.kind != "ocr" for t in fallen)
        ocr_cases += any(t.kind == "ocr" for t in fallen)
        for t in fallen:
            trap_kinds[f"{t.pattern}:{t.kind}"] += 1
    n = len(cases)
    return {
        "budget": budget,
        "reports": n,
        "statuses": dict(statuses),
        "tokens_mean": round(statistics.mean(tokens), 1),
        "tokens_max": max(tokens),
        "recall": {k: round(kept[k] / stated[k], 4) for k in FACT_KINDS if stated[k]},
        "stated": {k: stated[k] for k in FACT_KINDS if stated[k]},
        "all_facts_kept": round(all_kept / n, 4),
        "false_statement_reports": false_cases,
        "false_statements_by_kind": dict(false_kinds),
        "trap_reports": trap_cases,
        "ocr_copied_reports": ocr_cases,
        "traps_by_pattern": dict(trap_kinds),
        "false_examples": examples,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "reports_per_cpu_s": round(n / cpu, 1) if cpu else None,
        "cpu_s_per_10k": round(cpu / n * 10_000, 1),
    }


def run_checker(cases: list[HardReport]) -> dict:
    rejected, total, missed, planted, unsupported = Counter(), Counter(), Counter(), Counter(), Counter()
    reject_examples: dict[str, str] = {}
    miss_examples: dict[str, str] = {}
    for case in cases:
        true_problems = set()
        for style, summary in zip(SUMMARY_STYLES, true_summaries(case)):
            total[style] += 1
            problems, true_unsupported = check(case.text, summary)
            if problems:
                rejected[style] += 1
                reject_examples.setdefault(style, f"{case.case_id}: {summary} -> {problems[0]}")
            if style == "abbreviated":
                true_problems, true_unsupported_n = set(problems), true_unsupported
        for kind, summary in planted_contradictions(case):  # abbreviated style, like the true summary above
            planted[kind] += 1
            problems, n_unsupported = check(case.text, summary)
            if not set(problems) - true_problems:  # caught only by a complaint the true summary did not get
                missed[kind] += 1
                unsupported[kind] += (
                    n_unsupported > true_unsupported_n
                )  # not a contradiction, but flagged as unsupported
                miss_examples.setdefault(kind, f"{case.case_id}: {summary}")
    return {
        "checker": True,
        "reports": len(cases),
        "true_rejected": {s: rejected[s] for s in total},
        "true_total": dict(total),
        "true_rejected_rate": round(sum(rejected.values()) / sum(total.values()), 4),
        "planted_missed": {k: missed[k] for k in planted},
        "planted_total": dict(planted),
        "planted_missed_but_unsupported": {k: unsupported[k] for k in planted},
        "planted_caught_rate": round(1 - sum(missed.values()) / sum(planted.values()), 4),
        "reject_examples": reject_examples,
        "miss_examples": miss_examples,
    }


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budgets", type=int, nargs="+", default=[20, 35, 50, 154])
    parser.add_argument(
        "--one-line", action="store_true", help="each report run together on one line, as OCR often gives it"
    )
    parser.add_argument("--json", type=Path, help="also write the JSON lines to this file")
    args = parser.parse_args()
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(1)
    cases = make_hard_reports(args.reports, args.seed)
    if args.one_line:
        cases = [dataclasses.replace(c, text=" ".join(c.text.split())) for c in cases]
    words = [c.words for c in cases]
    print(
        f"{len(cases)} hard reports (seed {args.seed}), {min(words)}-{max(words)} words, median "
        f"{statistics.median(words):.0f}; "
        f"{'run together on one line; ' if args.one_line else ''}torch imported: {'torch' in sys.modules}",
        file=sys.stderr,
    )
    rows = [run_budget(cases, b) for b in args.budgets]
    checker = run_checker(cases)
    lines = [json.dumps(r, sort_keys=True) for r in [*rows, checker]]
    print("\n".join(lines))
    if args.json:
        args.json.write_text("\n".join(lines) + "\n", encoding="utf-8")
    kinds = [k for k in FACT_KINDS if k in rows[0]["recall"]]
    header = [
        "budget",
        "tokens mean (max)",
        "failed",
        "all facts kept",
        "false stmts (reader)",
        "trap stated (oracle)",
        "OCR copied",
        *kinds,
        "CPU s / 10k reports",
    ]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        cells = [
            str(r["budget"]),
            f"{r['tokens_mean']} ({r['tokens_max']})",
            str(r["statuses"].get("failed", 0)),
            _pct(r["all_facts_kept"]),
            str(r["false_statement_reports"]),
            str(r["trap_reports"]),
            str(r["ocr_copied_reports"]),
            *[_pct(r["recall"][k]) for k in kinds],
            str(r["cpu_s_per_10k"]),
        ]
        print("| " + " | ".join(cells) + " |")
    print(f"\nfacts stated per kind (of {len(cases)}): " + ", ".join(f"{k} {rows[0]['stated'][k]}" for k in kinds))
    print(
        f"\nChecker: correct summaries rejected {sum(checker['true_rejected'].values())} / "
        f"{sum(checker['true_total'].values())} "
        f"({_pct(checker['true_rejected_rate'])}); planted contradictions caught "
        f"{_pct(checker['planted_caught_rate'])}\n"
    )
    print("| planted kind | missed / planted | of the missed: flagged unsupported |\n|---|---|---|")
    for kind, total in sorted(checker["planted_total"].items()):
        print(
            f"| {kind} | {checker['planted_missed'][kind]} / {total} | "
            f"{checker['planted_missed_but_unsupported'][kind]} |"
        )
    print("\n| summary style | rejected / total |\n|---|---|")
    for style, total in checker["true_total"].items():
        print(f"| {style} | {checker['true_rejected'][style]} / {total} |")


if __name__ == "__main__":
    main()
