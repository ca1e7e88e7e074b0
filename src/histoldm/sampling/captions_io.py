"""What to sample: (id, caption) items from a text file, JSONL, captions.parquet (+ split) or one prompt.

Ids name the output files and seed each image, so they must be stable across re-runs: line
numbers for .txt (from 000001), 000001.. for --prompt, the `id` key for JSONL, `patch_id` for captions.parquet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from histoldm.data.splits import load_split, split_names
from histoldm.errors import UserError
from histoldm.fileio import read_jsonl, read_text_input, require_file
from histoldm.tables import read_parquet

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class CaptionItem:
    id: str
    caption: str


def safe_file_stem(item_id: str) -> str:
    """The id with anything but letters, digits, '.', '_' and '-' replaced by '_' (no leading dot)."""
    stem = _UNSAFE.sub("_", item_id)[:200]
    return "_" + stem if stem.startswith(".") or not stem else stem


def _from_txt(path: Path) -> tuple[list[CaptionItem], list[dict]]:
    items, skipped = [], []
    for n, line in enumerate(read_text_input(path, "captions file").splitlines(), 1):
        if line.strip():
            items.append(CaptionItem(f"{n:06d}", line.strip()))
        else:
            skipped.append({"id": f"{n:06d}", "reason": "blank line"})
    return items, skipped


def _from_jsonl(path: Path) -> tuple[list[CaptionItem], list[dict]]:
    items, skipped = [], []
    for n, rec in enumerate(read_jsonl(path), 1):
        if "id" not in rec or "caption" not in rec:
            raise UserError(f"{path}:{n}: expected keys `id` and `caption`")
        if isinstance(rec["caption"], str) and rec["caption"].strip():
            items.append(CaptionItem(str(rec["id"]), rec["caption"].strip()))
        else:
            skipped.append({"id": str(rec["id"]), "reason": "empty or non-text caption"})
    return items, skipped


def _from_parquet(path: Path, split: Path | None, split_name: str) -> tuple[list[CaptionItem], list[dict]]:
    columns = ["patch_id", "caption"] + (["case_id"] if split else [])
    table = read_parquet(path, "captions file", columns).to_pydict()
    keep = [True] * len(table["patch_id"])
    if split:
        case_split = load_split(split)
        if split_name not in set(case_split.values()):
            names = split_names(split)
            problem = f"split {split_name!r} has no cases" if split_name in names else f"no split named {split_name!r}"
            raise UserError(
                f"{split}: {problem} (have "
                f"{', '.join(f'{n} ({sum(v == n for v in case_split.values())} cases)' for n in names)})"
            )
        keep = [case_split.get(c) == split_name for c in table["case_id"]]
    items, skipped, seen = [], [], {}
    for pid, caption, k in zip(table["patch_id"], table["caption"], keep):
        if not k:
            continue
        if isinstance(caption, str) and caption.strip():
            seen[str(pid)] = n = (
                seen.get(str(pid), 0) + 1
            )  # a patch's further captions (several summaries): id~2, id~3, ...
            items.append(CaptionItem(str(pid) if n == 1 else f"{pid}~{n}", caption.strip()))
        else:
            skipped.append({"id": str(pid), "reason": "empty or null caption"})
    return items, skipped


def read_caption_items(
    captions: Path | None = None,
    *,
    prompt: str | None = None,
    num_images: int = 1,
    split: Path | None = None,
    split_name: str = "test",
) -> tuple[list[CaptionItem], list[dict]]:
    """The items to sample and the rows skipped (with the reason); no items at all is a UserError."""
    if (captions is None) == (prompt is None):
        raise UserError("sample: give exactly one of --captions FILE or --prompt TEXT")
    if prompt is not None:
        if not prompt.strip():
            raise UserError("--prompt: empty prompt")
        # numbered from 1, like the lines of a .txt file
        items, skipped = [CaptionItem(f"{i:06d}", prompt.strip()) for i in range(1, num_images + 1)], []
        source = "--prompt"
    else:
        path = require_file(Path(captions), "captions file")
        suffix = path.suffix.lower()
        if split and suffix != ".parquet":
            raise UserError(f"{path}: --split selects rows of a captions.parquet, not of a {suffix} file")
        if suffix == ".txt":
            items, skipped = _from_txt(path)
        elif suffix == ".jsonl":
            items, skipped = _from_jsonl(path)
        elif suffix == ".parquet":
            items, skipped = _from_parquet(path, split, split_name)
        else:
            raise UserError(
                f"{path}: expected a .txt (one caption per line), .jsonl (id, caption) or captions.parquet file"
            )
        source = str(path)
    if not items:
        raise UserError(f"{source}: no captions to sample" + (f" in split {split_name!r}" if split else ""))
    stems: dict[str, str] = {}
    for item in items:
        stem = safe_file_stem(item.id)
        if stem in stems:
            what = (
                f"id {item.id!r} appears twice"
                if stems[stem] == item.id
                else f"ids {stems[stem]!r} and {item.id!r} map to one file"
            )
            raise UserError(f"{source}: {what} (image file {stem}.png)")
        stems[stem] = item.id
    return items, skipped
