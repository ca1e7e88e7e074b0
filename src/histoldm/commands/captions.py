"""`histoldm captions`: patch captions from score levels, descriptors and case summaries."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from histoldm.commands._common import add_command, add_config_options, resolve_config


def register(sub: Any) -> None:
    p = add_command(sub, "captions", "Build one caption per patch (per summary with --all-summaries) from a template (default '{tumor} tumor; {til} til; {summary}').",
                    "histoldm captions store --summaries summaries.jsonl --levels low,mid,high")
    p.add_argument("store", type=Path, nargs="?", help="patch store folder")
    p.add_argument("--scores", type=Path, help="scores.parquet (default STORE/scores.parquet if present)")
    p.add_argument("--summaries", type=Path, help="summaries.jsonl (case_id, summary)")
    p.add_argument("--out", type=Path, help="output Parquet (default STORE/captions.parquet)")
    p.add_argument("--template", help="caption template; parts separated by '; ' are dropped when a value is missing")
    p.add_argument("--levels", help="comma-separated level names, 2 to 4 (default low,high)")
    p.add_argument("--all-summaries", action="store_true", default=None,
                   help="one caption per summary of a case (variants, repeated lines); training draws one per read")
    add_config_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from histoldm.data.captions import CaptionsConfig, run_captions

    levels = args.levels.split(",") if args.levels else None
    cfg = resolve_config(args, CaptionsConfig, {"store": args.store, "scores": args.scores, "summaries": args.summaries,
                                                "out": args.out, "template": args.template, "levels": levels,
                                                "all_summaries": args.all_summaries})
    r = run_captions(cfg)
    print(f"{r.caption_rows} captions of {r.patches} patches ({r.unique_captions} unique) -> {r.out}; "
          f"{r.patches_without_summary} patches without a summary ({len(r.cases_without_summary)} cases)")
    if r.empty_captions:
        print(f"warning: {r.empty_captions} patches have an empty caption (no scores and no summary); "
              "encode-text skips them and train leaves them out", file=sys.stderr)
    return 0
