"""FID, KID and condition adherence of one run, measured separately on subsets of its held-out cases.

The demo's held-out set mixes real tissue (blocks of the CC0 slide) and synthetic cases; one FID over
both says little about either. Each group (a regex on case_id) gets its own numbers from the features
the evaluation already extracted (no second extraction), under the evaluation's protocol.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histoldm.evaluate import metrics as M
from histoldm.evaluate.adherence import run_adherence
from histoldm.evaluate.results import Adherence
from histoldm.fileio import read_jsonl

if TYPE_CHECKING:
    from histoldm.experiments.chain import ChainResult


@dataclass(frozen=True)
class GroupMetrics:
    """One held-out group's numbers (held-out-groups.json), or why they were not measured (`status`)."""

    pattern: str
    n_real: int
    n_fake: int
    status: str | None = None
    fid: float | None = None
    kid_mean: float | None = None
    kid_std: float | None = None
    adherence: Adherence | None = None
    real_adherence: Adherence | None = None  # the same test on the real images: the ceiling

    def to_json(self) -> dict[str, Any]:
        return {
            f.name: value.to_json() if isinstance(value, Adherence) else value
            for f in dataclasses.fields(self)
            if (value := getattr(self, f.name)) is not None
        }


def group_ids(items: list[dict[str, str]], pattern: str) -> set[str]:
    """Patch ids (= sample ids) of the held-out items whose case matches `pattern`."""
    return {r["patch_id"] for r in items if re.search(pattern, r["case_id"])}


def group_metrics(result: ChainResult, groups: dict[str, str], *, mpp: float, seed: int) -> dict[str, GroupMetrics]:
    """Per group: N real and generated, FID (eigh), KID (100 subsets of min(N)), adherence of the
    generated images and of the real ones (the ceiling)."""
    real_fs, fake_fs = result.real_features, result.fake_features
    file_id = {r["file"]: r["id"] for r in read_jsonl(Path(result.samples) / "index.jsonl")}
    real_ids = [p.stem for p in real_fs.paths]
    fake_ids = [file_id.get(str(p.relative_to(result.samples))) for p in fake_fs.paths]
    out: dict[str, GroupMetrics] = {}
    for name, pattern in groups.items():
        ids = group_ids(result.items, pattern)
        xr = real_fs.features[[i for i, pid in enumerate(real_ids) if pid in ids]]
        xf = fake_fs.features[[i for i, pid in enumerate(fake_ids) if pid in ids]]
        if min(len(xr), len(xf)) < 2:
            why = f"not measured: {len(xr)} real and {len(xf)} generated held-out images (FID needs 2 of each)"
            out[name] = GroupMetrics(pattern, len(xr), len(xf), status=why)
            continue
        fid = M.frechet_distance(*M.gaussian_stats(xr), *M.gaussian_stats(xf), method="eigh")
        kid_mean, kid_std = M.kid(xr, xf, n_subsets=100, subset_size=min(len(xr), len(xf)), seed=seed)
        adherence = {
            key: run_adherence(images, captions_parquet=result.captions_file, mpp=mpp, seed=seed, ids=ids)
            for key, images in (("adherence", result.samples), ("real_adherence", result.real))
        }
        out[name] = GroupMetrics(pattern, len(xr), len(xf), None, fid, kid_mean, kid_std, **adherence)
    return out


def group_rows(by_group: dict[str, GroupMetrics], protocol_line: str) -> list[tuple[str, str, str]]:
    """Report rows (metric, value, protocol) of group_metrics."""
    rows = []
    for name, g in by_group.items():
        if g.fid is None:
            rows.append((f"held-out {name}", "not measured", g.status))
            continue
        subsets = min(g.n_real, g.n_fake)
        rows.append(
            (
                f"FID / KID, held-out {name}",
                f"{g.fid:.2f} / {g.kid_mean:.4f} ± {g.kid_std:.4f}",
                f"{g.n_real} real vs {g.n_fake} generated of the same captions (FID eigh; KID 100 subsets of "
                f"{subsets}); {protocol_line}",
            )
        )
        for label, adherence in (("generated", g.adherence), ("real (ceiling)", g.real_adherence)):
            for attr, r in adherence.by_attribute.items():
                value = f"AUROC {r.auroc:.3f} (p = {r.p_value:.3g})" if r.measured else "not measured"
                detail = f"{r.descriptor} of {r.n_high} high vs {r.n_low} low" if r.measured else (r.status or "")
                rows.append((f"adherence {attr}, held-out {name}, {label}", value, detail))
    return rows
