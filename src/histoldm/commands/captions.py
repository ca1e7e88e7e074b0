"""`histoldm captions`: patch captions from score levels, descriptors and case summaries."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from histoldm.commands._common import add_command, resolve_config


def register(sub: Any) -> None:
    add_command(sub, "captions", "Build one caption per patch (per summary with --all-summaries) from a template.",
                "histoldm captions store --summaries summaries.jsonl --levels low,mid,high", run,
                config="histoldm.data.captions:CaptionsConfig", positional="store",
                converters={"levels": lambda text: text.split(",")})  # one comma-separated value, as before: `--levels a,b STORE`


def run(args: argparse.Namespace) -> int:
    from histoldm.data.captions import CaptionsConfig, run_captions

    r = run_captions(resolve_config(args, CaptionsConfig))
    print(f"{r.caption_rows} captions of {r.patches} patches ({r.unique_captions} unique) -> {r.out}; "
          f"{r.patches_without_summary} patches without a summary ({len(r.cases_without_summary)} cases)")
    if r.empty_captions:
        print(f"warning: {r.empty_captions} patches have an empty caption (no scores and no summary); "
              "encode-text skips them and train leaves them out", file=sys.stderr)
    return 0
