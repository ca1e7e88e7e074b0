"""Patient-level train/val/test split: seeded, stratified where a label is given, reproducible to the byte.

Method "patient-stratified-v1": sort the unique case ids; for each label (sorted; one stratum when
there are no labels) shuffle its cases with numpy's PCG64 seeded by `seed` and cut them by the
fractions, rounding by largest remainder so the counts add up. Every case lands in exactly one split.
Alternatively import a given split (JSON or CSV), checked for cases in two splits.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histoldm.data.config import SplitConfig
from histoldm.data.store import PatchStore
from histoldm.errors import UserError
from histoldm.fileio import atomic_write_text, read_text_input, require_file, require_output_file
from histoldm.manifest import write_manifest

METHOD = "patient-stratified-v1"


def _counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Largest-remainder rounding: counts sum to n, ties broken by split name order."""
    names = sorted(fractions)
    raw = {k: n * fractions[k] for k in names}
    counts = {k: int(np.floor(raw[k])) for k in names}
    for k in sorted(names, key=lambda k: (-(raw[k] - counts[k]), k))[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def cases_needed(fractions: dict[str, float], name: str) -> int:
    """The fewest cases with which split `name` (fraction > 0) gets one under largest-remainder rounding."""
    n = 1
    while _counts(n, fractions)[name] == 0:
        n += 1
    return n


def empty_part_warnings(counts: dict[str, int], fractions: dict[str, float]) -> list[str]:
    """One line per split with a share of the cases but none of them: a test split of 0 cases gives no FID."""
    n = sum(counts.values())
    return [
        f"split {name} has no case: {fractions[name]:g} of {n} cases rounds to none; it gets one from "
        f"{cases_needed(fractions, name)} cases on (or give it a larger share with --fractions)"
        for name, k in sorted(counts.items())
        if k == 0 and fractions.get(name, 0) > 0
    ]


def split_cases(
    case_ids: list[str], fractions: dict[str, float], seed: int, labels: dict[str, str] | None = None
) -> dict[str, list[str]]:
    """Assign each unique case to one split; stratified by `labels` when given."""
    cases = sorted(set(case_ids))
    strata: dict[str, list[str]] = {}
    for c in cases:
        strata.setdefault(str(labels.get(c, "")) if labels else "", []).append(c)
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {k: [] for k in sorted(fractions)}
    for label in sorted(strata):
        members = strata[label]
        order = rng.permutation(len(members))
        start = 0
        for name, k in _counts(len(members), fractions).items():
            out[name].extend(members[i] for i in order[start : start + k])
            start += k
    return {k: sorted(v) for k, v in out.items()}


def split_json(
    cases: dict[str, list[str]],
    *,
    method: str,
    seed: int | None,
    fractions: dict[str, float] | None,
    stratify_by: str | None,
    extra: dict[str, Any] | None = None,
) -> str:
    doc = {
        "method": method,
        "seed": seed,
        "fractions": fractions,
        "stratify_by": stratify_by,
        "cases": {k: sorted(v) for k, v in cases.items()},
        **(extra or {}),
    }
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def load_split(path: Path) -> dict[str, str]:
    """case_id -> split name from a split.json; a case in two splits is an error."""
    require_file(path, "split file")
    try:
        doc = json.loads(read_text_input(path, "split file"))
        groups = doc["cases"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{path}: not a split file (expected JSON with a `cases` mapping)") from None
    return _invert(groups, path)


def split_names(path: Path) -> list[str]:
    """Every split a split.json names, empty ones included (load_split only sees assigned cases)."""
    return sorted(json.loads(read_text_input(path, "split file"))["cases"])


def _invert(groups: dict[str, list[str]], source: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for split in sorted(groups):
        for case in groups[split]:
            if case in out and out[case] != split:
                raise UserError(f"{source}: case {case} is in both {out[case]} and {split}")
            out[case] = split
    return out


def read_given_split(path: Path) -> dict[str, list[str]]:
    """A given split: split.json-like JSON ({"cases": {...}} or {split: [cases]}), or CSV case_id,split."""
    require_file(path, "given split")
    if Path(path).suffix.lower() == ".csv":
        groups: dict[str, list[str]] = {}
        reader = csv.DictReader(io.StringIO(read_text_input(path, "given split"), newline=""))
        if not {"case_id", "split"} <= set(reader.fieldnames or []):
            raise UserError(f"{path}: a split CSV needs case_id and split columns")
        for row in reader:
            groups.setdefault(row["split"], []).append(row["case_id"])
    else:
        try:
            doc = json.loads(read_text_input(path, "given split"))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg})") from None
        groups = doc.get("cases", doc) if isinstance(doc, dict) else None
        if not isinstance(groups, dict) or not all(isinstance(v, list) for v in groups.values()):
            raise UserError(f"{path}: expected {{split: [case ids]}} or a split.json")
    _invert(groups, path)
    return groups


def _read_label_csv(path: Path, column: str | None) -> dict[str, str]:
    reader = csv.DictReader(io.StringIO(read_text_input(path, "cases CSV"), newline=""))
    fields = set(reader.fieldnames or [])
    if "case_id" not in fields or (column and column not in fields):
        raise UserError(f"{path}: needs columns case_id{' and ' + column if column else ''}")
    return {row["case_id"]: (row[column] if column else "") for row in reader}


@dataclass(frozen=True)
class SplitResult:
    """`histoldm split`: the split file and the number of cases in each part."""

    out: Path
    counts: dict[str, int]
    warnings: list[str]  # splits given a share of the cases but none (empty_part_warnings)


def run_split(cfg: SplitConfig) -> SplitResult:
    """Write split.json (and its manifest); returns counts per split."""
    started = time.time()
    require_output_file(cfg.out, "split file")
    if cfg.given:
        groups = read_given_split(cfg.given)
        text = split_json(groups, method=f"given:{Path(cfg.given).name}", seed=None, fractions=None, stratify_by=None)
    else:
        if cfg.cases:
            table = _read_label_csv(cfg.cases, cfg.stratify_by)
            case_ids, labels = list(table), (table if cfg.stratify_by else None)
        elif cfg.store:
            case_ids = PatchStore.open(cfg.store).table.column("case_id").to_pylist()
            labels = _read_label_csv(cfg.labels, cfg.stratify_by) if cfg.labels and cfg.stratify_by else None
            if labels is not None:
                missing = sorted(set(case_ids) - set(labels))
                if missing:
                    raise UserError(f"{cfg.labels}: no {cfg.stratify_by} for {len(missing)} cases, e.g. {missing[0]}")
        else:
            raise UserError("split: give a patch store, a cases CSV or a given split")
        if not case_ids:
            raise UserError("split: no cases to split")
        groups = split_cases(case_ids, cfg.fractions, cfg.seed, labels)
        text = split_json(
            groups,
            method=METHOD,
            seed=cfg.seed,
            fractions=dict(sorted(cfg.fractions.items())),
            stratify_by=cfg.stratify_by if labels else None,
        )
    atomic_write_text(Path(cfg.out), text)
    produced = {k: len(v) for k, v in sorted(groups.items())}
    warnings = [] if cfg.given else empty_part_warnings(produced, cfg.fractions)
    write_manifest(
        Path(cfg.out).with_name(Path(cfg.out).name + ".manifest.json"),
        stage="split",
        config=cfg,
        inputs={
            "store": Path(cfg.store) / "patches.parquet" if cfg.store else None,
            "cases": cfg.cases,
            "labels": cfg.labels,
            "given": cfg.given,
        },
        produced=produced,
        started=started,
        seed=cfg.seed,
        extra={"warnings": warnings},
    )
    return SplitResult(Path(cfg.out), produced, warnings)
