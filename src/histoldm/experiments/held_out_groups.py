"""FID, KID and condition adherence of one run, measured separately on subsets of its held-out cases.

The demo's held-out set mixes real tissue (blocks of the CC0 slide) and synthetic cases; one FID over
both says little about either. Each group (a regex on case_id) gets its own numbers from the features
the evaluation already extracted (no second extraction), under the evaluation's protocol.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from histoldm.fileio import read_jsonl


def group_ids(items: list[dict[str, str]], pattern: str) -> set[str]:
    """Patch ids (= sample ids) of the held-out items whose case matches `pattern`."""
    return {r["patch_id"] for r in items if re.search(pattern, r["case_id"])}


def group_metrics(
    result: dict[str, Any], groups: dict[str, str], *, mpp: float, seed: int
) -> dict[str, dict[str, Any]]:
    """Per group: N real and generated, FID (eigh), KID (100 subsets of min(N)), adherence of the
    generated images and of the real ones (the ceiling). `result`: train_sample_evaluate's."""
    from histoldm.evaluate import metrics as M
    from histoldm.evaluate.adherence import run_adherence

    real_fs, fake_fs = result["real_features"], result["fake_features"]
    file_id = {r["file"]: r["id"] for r in read_jsonl(Path(result["samples"]) / "index.jsonl")}
    real_ids = [p.stem for p in real_fs.paths]
    fake_ids = [file_id.get(str(p.relative_to(result["samples"]))) for p in fake_fs.paths]
    out: dict[str, dict[str, Any]] = {}
    for name, pattern in groups.items():
        ids = group_ids(result["items"], pattern)
        xr = real_fs.features[[i for i, pid in enumerate(real_ids) if pid in ids]]
        xf = fake_fs.features[[i for i, pid in enumerate(fake_ids) if pid in ids]]
        entry: dict[str, Any] = {"pattern": pattern, "n_real": len(xr), "n_fake": len(xf)}
        if min(len(xr), len(xf)) < 2:
            entry["status"] = (
                f"not measured: {len(xr)} real and {len(xf)} generated held-out images (FID needs 2 of each)"
            )
        else:
            entry["fid"] = M.frechet_distance(*M.gaussian_stats(xr), *M.gaussian_stats(xf), method="eigh")
            entry["kid_mean"], entry["kid_std"] = M.kid(
                xr, xf, n_subsets=100, subset_size=min(len(xr), len(xf)), seed=seed
            )
            entry["adherence"] = run_adherence(
                result["samples"], captions_parquet=result["captions_file"], mpp=mpp, seed=seed, ids=ids
            )
            entry["real_adherence"] = run_adherence(
                result["real"], captions_parquet=result["captions_file"], mpp=mpp, seed=seed, ids=ids
            )
        out[name] = entry
    return out


def group_rows(by_group: dict[str, dict[str, Any]], protocol_line: str) -> list[tuple[str, str, str]]:
    """Report rows (metric, value, protocol) of group_metrics."""
    rows = []
    for name, g in by_group.items():
        if "fid" not in g:
            rows.append((f"held-out {name}", "not measured", g["status"]))
            continue
        rows.append(
            (
                f"FID / KID, held-out {name}",
                f"{g['fid']:.2f} / {g['kid_mean']:.4f} ± {g['kid_std']:.4f}",
                f"{g['n_real']} real vs {g['n_fake']} generated of the same captions (FID eigh; KID 100 subsets of {min(g['n_real'], g['n_fake'])}); "
                f"{protocol_line}",
            )
        )
        for label, key in (("generated", "adherence"), ("real (ceiling)", "real_adherence")):
            for attr, r in g[key]["by_attribute"].items():
                value = f"AUROC {r['auroc']:.3f} (p = {r['p_value']:.3g})" if "auroc" in r else "not measured"
                rows.append(
                    (
                        f"adherence {attr}, held-out {name}, {label}",
                        value,
                        f"{r['descriptor']} of {r['n_high']} high vs {r['n_low']} low"
                        if "auroc" in r
                        else r.get("status", ""),
                    )
                )
    return rows
