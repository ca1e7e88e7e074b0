"""`histoldm summarize`: reports -> summaries within a CLIP-token budget (see docs/summaries.md)."""

from __future__ import annotations

import argparse
from typing import Any

from histoldm.commands._common import add_command, resolve_config


def register(sub: Any) -> None:
    add_command(sub, "summarize", "Summarise pathology reports to at most N CLIP tokens (extractive, any OpenAI-compatible LLM, or a local LLM).",
                "histoldm summarize TCGA_Reports.csv --out summaries.jsonl --budget 35 --backend extractive", run,
                config="histoldm.summaries.summarize:SummarizeConfig", positional="input", aliases={"timeout_s": "--timeout"})


def run(args: argparse.Namespace) -> int:
    from histoldm.summaries.summarize import SummarizeConfig, SummarizeDryRun, run_summarize

    result = run_summarize(resolve_config(args, SummarizeConfig))
    if isinstance(result, SummarizeDryRun):
        return 0
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items())) or "nothing new"
    print(f"{result.out}: {result.written} written ({counts}), {result.skipped_finished} already done; manifest {result.manifest}")
    return 0
