"""Captions per patch from a template: levels of scores and descriptors, plus the case's summary.

Default template (PathLDM): "{tumor} tumor; {til} til; {summary}". The template is split at "; "
into parts; a part whose placeholder has no value (missing score, missing summary) is left out,
so a patch without a TIL score reads "high tumor; <summary>". Descriptor placeholders ({fat},
{nuclei}, {stroma}, {large_nuclei}, {lymphocytes}) are computed from the images when used.

With `all_summaries` a case with several summaries (a record's `variants`, as PathLDM's multiple-
captions npz gives, or several lines for one case) gives each patch one caption row per summary;
training then draws one of a patch's captions at random each time it reads the patch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from histoldm.data.config import DESCRIPTOR_PLACEHOLDERS, CaptionsConfig, placeholders
from histoldm.data.descriptors import describe, scaled
from histoldm.data.scores import levels_of, read_scores
from histoldm.data.store import PatchStore
from histoldm.errors import UserError
from histoldm.fileio import read_jsonl, require_output_file
from histoldm.manifest import write_manifest
from histoldm.tables import write_parquet

CAPTIONS_SCHEMA = pa.schema(
    [
        ("patch_id", pa.string()),
        ("case_id", pa.string()),
        ("caption", pa.string()),
        ("tumor_level", pa.string()),
        ("til_level", pa.string()),
    ]
)


def fill_template(template: str, values: dict[str, str | None]) -> str:
    """Fill the template part by part ("; "-separated), leaving out parts with a missing value."""
    parts = []
    for part in template.split("; "):
        names = placeholders(part)
        if any(values.get(n) in (None, "") for n in names):
            continue
        parts.append(part.format(**{n: values[n] for n in names}))
    return "; ".join(parts)


def load_summaries(path: Path) -> dict[str, str]:
    """case_id -> summary from a summaries JSONL; failed or empty summaries count as missing. A case's
    last line wins (summarize keeps one line per case, but a run killed mid --retry-failed leaves two)."""
    latest: dict[str, dict] = {}
    for rec in read_jsonl(path):
        if "case_id" not in rec:
            raise UserError(f"{path}: a line without case_id")
        latest[str(rec["case_id"])] = rec
    out: dict[str, str] = {}
    for case, rec in latest.items():
        text = (rec.get("summary") or "").strip()
        if text and rec.get("status", "ok") != "failed":
            out[case] = text
    return out


def load_summary_lists(path: Path) -> dict[str, list[str]]:
    """case_id -> every distinct summary of the case, in file order: each line's `variants` (or its
    `summary`), lines for the same case adding to the list; failed or empty ones left out."""
    out: dict[str, list[str]] = {}
    for rec in read_jsonl(path):
        if "case_id" not in rec:
            raise UserError(f"{path}: a line without case_id")
        if rec.get("status", "ok") == "failed":
            continue
        texts = [str(t).strip() for t in (rec.get("variants") or [rec.get("summary") or ""])]
        have = out.setdefault(str(rec["case_id"]), [])
        have += [t for t in texts if t and t not in have]
    return {case: texts for case, texts in out.items() if texts}


@dataclass(frozen=True)
class CaptionsResult:
    """`histoldm captions`: the captions file and its counts (a patch has one row per summary)."""

    out: Path
    patches: int
    caption_rows: int
    unique_captions: int
    patches_without_summary: int
    cases_without_summary: list[str]
    empty_captions: int


def run_captions(cfg: CaptionsConfig) -> CaptionsResult:
    """Write captions.parquet and report patches without a summary and the number of unique captions."""
    started = time.time()
    out = Path(cfg.out) if cfg.out else Path(cfg.store) / "captions.parquet"
    require_output_file(out, "captions file")
    store = PatchStore.open(cfg.store)
    scores_path = cfg.scores or (Path(cfg.store) / "scores.parquet")
    scores = read_scores(scores_path) if (cfg.scores or scores_path.is_file()) else {}
    if not cfg.summaries:
        summaries: dict[str, list[str]] = {}
    elif cfg.all_summaries:
        summaries = load_summary_lists(cfg.summaries)
    else:
        summaries = {case: [text] for case, text in load_summaries(cfg.summaries).items()}
    used = placeholders(cfg.template)
    wanted = [d for d in used if d in DESCRIPTOR_PLACEHOLDERS]

    t = store.table.to_pydict()
    mpps = t.get("mpp") or [None] * len(t["patch_id"])
    rows, no_summary, cases_without_summary = [], 0, set()
    for pid, case, mpp in tqdm(list(zip(t["patch_id"], t["case_id"], mpps)), desc="captions", unit="patch"):
        s = scores.get(pid, {})
        values: dict[str, str | None] = {
            "tumor": levels_of(s.get("prob_tumor"), cfg.levels),
            "til": levels_of(s.get("prob_til"), cfg.levels),
        }
        if wanted:
            d = describe(np.asarray(store.image(pid)), mpp or 1.0)
            for name in wanted:
                key = DESCRIPTOR_PLACEHOLDERS[name]
                values[name] = levels_of(scaled(key, d[key]), cfg.descriptor_levels)
        texts = summaries.get(case) or [None]
        if "summary" in used and texts == [None]:
            no_summary += 1
            cases_without_summary.add(case)
        for text in texts:
            rows.append(
                {
                    "patch_id": pid,
                    "case_id": case,
                    "caption": fill_template(cfg.template, values | {"summary": text}),
                    "tumor_level": values["tumor"],
                    "til_level": values["til"],
                }
            )

    write_parquet(out, pa.Table.from_pylist(rows, schema=CAPTIONS_SCHEMA))
    produced = {
        "patches": len({r["patch_id"] for r in rows}),
        "caption_rows": len(rows),
        "unique_captions": len({r["caption"] for r in rows}),
        "patches_without_summary": no_summary,
        "cases_without_summary": sorted(cases_without_summary),
        "empty_captions": sum(not r["caption"] for r in rows),
    }
    write_manifest(
        out.with_name(out.name + ".manifest.json"),
        stage="captions",
        config=cfg,
        inputs={
            "store": Path(cfg.store) / "patches.parquet",
            "scores": scores_path if scores else None,
            "summaries": cfg.summaries,
        },
        produced=produced,
        started=started,
    )
    return CaptionsResult(Path(out), **produced)
