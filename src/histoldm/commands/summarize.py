"""`histoldm summarize`: reports -> summaries within a CLIP-token budget (see docs/summaries.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from histoldm.commands._common import add_command, add_config_options, resolve_config


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "summarize",
        "Summarise pathology reports to at most N CLIP tokens (extractive, any OpenAI-compatible LLM, or a local LLM).",
        "histoldm summarize TCGA_Reports.csv --out summaries.jsonl --budget 35 --backend extractive",
    )
    p.add_argument("input", type=Path, nargs="?", help="TCGA-Reports CSV (patient_filename,text), folder of .txt, or JSONL {case_id,text}")
    p.add_argument("--out", type=Path, help="output JSONL (re-running resumes it)")
    p.add_argument("--budget", type=int, help="CLIP tokens per summary, BOS/EOS excluded (default 35)")
    p.add_argument("--backend", choices=["extractive", "openai", "local"], help="default extractive (offline, deterministic)")
    p.add_argument("--prompt", help="preset (pathldm, targeted) or a template file (.txt, .yaml, .json)")
    p.add_argument("--model", help="openai: model name; local: a transformers folder or .gguf file")
    p.add_argument("--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--api-key-env", help="environment variable holding the API key (default OPENAI_API_KEY)")
    p.add_argument("--temperature", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--max-tokens", type=int, help="reply length cap sent to the LLM")
    p.add_argument("--timeout", type=float, help="seconds per request (default 60)")
    p.add_argument("--concurrency", type=int, help="requests in flight (default 8)")
    p.add_argument("--max-attempts", type=int, help="requests per case, feedback rounds included (default 4)")
    p.add_argument("--limit", type=int, help="only the first N cases")
    p.add_argument("--retry-failed", action="store_true", default=None, help="re-attempt cases that failed in an earlier run")
    p.add_argument("--dry-run", action="store_true", default=None, help="print the rendered messages for one case and stop")
    add_config_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from histoldm.summaries.summarize import SummarizeConfig, SummarizeDryRun, run_summarize

    cfg = resolve_config(
        args,
        SummarizeConfig,
        {
            "input": args.input,
            "out": args.out,
            "budget": args.budget,
            "backend": args.backend,
            "prompt": args.prompt,
            "model": args.model,
            "base_url": args.base_url,
            "api_key_env": args.api_key_env,
            "temperature": args.temperature,
            "seed": args.seed,
            "max_tokens": args.max_tokens,
            "timeout_s": args.timeout,
            "concurrency": args.concurrency,
            "max_attempts": args.max_attempts,
            "limit": args.limit,
            "retry_failed": args.retry_failed,
            "dry_run": args.dry_run,
        },
    )
    result = run_summarize(cfg)
    if isinstance(result, SummarizeDryRun):
        return 0
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items())) or "nothing new"
    print(f"{result.out}: {result.written} written ({counts}), {result.skipped_finished} already done; manifest {result.manifest}")
    return 0
