"""A one-page HTML report: real vs generated images by caption, the loss curve, metrics with their
protocol, and every stage's manifest. Self-contained apart from image files beside it."""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histoldm.fileio import atomic_write_text, read_jsonl

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}\
td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
.row{display:flex;gap:1em;align-items:flex-start;margin:.8em 0;flex-wrap:wrap}
.row figure{margin:0}.row img{width:160px;height:160px;image-rendering:auto;border:1px solid #ccc}
figcaption{font-size:.8em;max-width:160px;color:#555}\
.caption{font-family:monospace;font-size:.9em;background:#f5f5f5;padding:.3em}
.note{color:#666;font-size:.9em}\
details pre{max-height:300px;overflow:auto;background:#f8f8f8;padding:.5em;font-size:.8em}
"""


@dataclass
class CaptionRow:
    """One caption with the real patches it describes and the images generated from it."""

    caption: str
    real: list[Path] = field(default_factory=list)
    generated: list[Path] = field(default_factory=list)


def caption_rows(
    items: list[dict[str, Any]], samples: Path, real: Path, max_rows: int = 8, label: str = ""
) -> list[CaptionRow]:
    """Real and generated images of held-out `items` (rows with patch_id and caption) grouped by caption,
    captions with the most patches first: the real ones in `real` (`<patch_id>.png`), the generated ones
    listed in `samples`/index.jsonl. `label` goes before each caption (the sweep names the budget)."""
    generated = {r["id"]: samples / r["file"] for r in read_jsonl(samples / "index.jsonl")}
    rows: dict[str, CaptionRow] = {}
    for item in items:
        row = rows.setdefault(item["caption"], CaptionRow(caption=label + item["caption"]))
        if len(row.real) < 4:
            row.real.append(real / f"{item['patch_id']}.png")
        if len(row.generated) < 4 and item["patch_id"] in generated:
            row.generated.append(generated[item["patch_id"]])
    return sorted(rows.values(), key=lambda r: -len(r.real))[:max_rows]


def stage_manifests(out: Path) -> dict[str, Path]:
    """Every stage manifest under `out` (checkpoints left out), keyed by its folder or file name."""
    found = sorted(p for p in Path(out).rglob("*manifest.json") if "checkpoints" not in p.parts)
    return {str(p.parent.relative_to(out)) if p.name == "manifest.json" else str(p.relative_to(out)): p for p in found}


def _img(path: Path, root: Path, label: str) -> str:
    rel = os.path.relpath(path, root)
    return (
        f'<figure><img src="{html.escape(rel)}" '
        f'alt="{html.escape(label)}"><figcaption>{html.escape(label)}</figcaption></figure>'
    )


def _table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(
    path: Path,
    *,
    title: str,
    intro: str,
    caption_rows: list[CaptionRow],
    metrics: list[tuple[str, str, str]],
    figures: list[tuple[str, Path]],
    tables: list[tuple[str, list[str], list[list[Any]]]],
    manifests: dict[str, Path],
) -> Path:
    """metrics: (name, value, protocol); figures: (title, png); tables: (title, header, rows)."""
    path = Path(path)
    root = path.parent
    parts = [
        "<!doctype html><html><head><meta "
        f"charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
    ]
    parts.append(f"<h1>{html.escape(title)}</h1><p>{intro}</p>")

    parts.append("<h2>Metrics</h2>")
    parts.append(_table([[n, v, p] for n, v, p in metrics], ["metric", "value", "protocol"]))

    parts.append("<h2>Real and generated patches by caption</h2>")
    for row in caption_rows:
        parts.append(f'<div class="caption">{html.escape(row.caption)}</div><div class="row">')
        parts.extend(_img(p, root, "real") for p in row.real)
        parts.extend(_img(p, root, "generated") for p in row.generated)
        parts.append("</div>")

    for fig_title, png in figures:
        rel = os.path.relpath(png, root)
        parts.append(f'<h2>{html.escape(fig_title)}</h2><img src="{html.escape(rel)}" style="max-width:100%">')

    for tbl_title, header, rows in tables:
        parts.append(f"<h2>{html.escape(tbl_title)}</h2>" + _table(rows, header))

    parts.append(
        "<h2>Stage manifests</h2><p class='note'>Inputs with sha256, resolved config, seed, versions and counts, as "
        "written by each stage.</p>"
    )
    for stage, mpath in manifests.items():
        rel = os.path.relpath(mpath, root)
        text = Path(mpath).read_text(encoding="utf-8") if Path(mpath).exists() else "(missing)"
        try:
            summary = json.loads(text).get("produced", {})
        except json.JSONDecodeError:
            summary = {}
        parts.append(
            f"<details><summary><b>{html.escape(stage)}</b> — <a href='{html.escape(rel)}'>{html.escape(rel)}</a> — "
            f"{html.escape(json.dumps(summary)[:300])}</summary><pre>{html.escape(text)}</pre></details>"
        )
    parts.append("</body></html>")
    atomic_write_text(path, "\n".join(parts))
    return path
