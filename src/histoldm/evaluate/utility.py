"""`histoldm utility`: is the generated set useful? Train on synthetic, test on real, and augmentation curves.

FID says whether generated patches look like real ones, not whether they help a downstream model. Per
caption attribute with levels (tumor, TIL: `high` against `low`), a linear probe (L2-regularised
logistic regression on standardised Inception pool3 features, the evaluation's own extractor, fitted
deterministically by L-BFGS from zero) is trained on: the real training patches (the reference), the
generated set only (TSTR), both; and on 10 / 25 / 50 / 100% of the real training patches, each with
and without the generated set. Every probe is scored on the held-out REAL patches: AUROC and balanced
accuracy (threshold 0.5), each with a percentile bootstrap interval over held-out cases (patches of a
case move together), on each seed. A seed draws the real subset and the bootstrap resamples.

Leakage guard, checked before any feature: every generated image must come from the caption of a
training-split patch (by the sample index's id and caption, against captions.parquet and the split),
the held-out real patches must come from cases outside the training split, the real training patches
from inside it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histoldm.data.splits import load_split
from histoldm.errors import UserError
from histoldm.evaluate import features as F
from histoldm.evaluate.config import UtilityConfig
from histoldm.evaluate.features import load_extractor
from histoldm.evaluate.run import _base_protocol, _extract
from histoldm.fileio import atomic_output, atomic_write_json, read_jsonl, require_file, require_output_folder
from histoldm.manifest import write_manifest
from histoldm.tables import read_parquet

PROBE = "logistic-l2-lbfgs"


@dataclass(frozen=True)
class UtilityResult:
    """`histoldm utility`: `metrics` is what OUT/metrics.json holds ({"utility": ...}); the plot's path."""

    out: Path
    metrics: dict[str, Any]
    plot: Path


# ---- the probe ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float

    def predict(self, features: np.ndarray) -> np.ndarray:
        """P(high) for each row."""
        z = ((np.asarray(features, np.float64) - self.mean) / self.scale) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-z))


def fit_probe(features: np.ndarray, is_high: np.ndarray, l2: float = 1.0) -> Probe:
    """Class-balanced L2 logistic regression on standardised features, L-BFGS from zero: the same data
    give the same probe (no random start, no minibatches). With fewer images than feature dimensions
    the optimum lies in the span of the training rows (the penalty removes any other component), so
    it is fitted there, in coordinates of the rows' span: the same solution, n instead of 2048 unknowns."""
    from scipy.optimize import minimize

    x = np.asarray(features, np.float64)
    y = np.asarray(is_high, bool).astype(np.float64)
    n_high, n = y.sum(), len(y)
    if n_high in (0, n):
        raise UserError(f"probe: needs training images of both levels, got {int(n_high)} high of {n}")
    mean, scale = x.mean(0), x.std(0)
    scale[scale < 1e-8] = 1.0
    # The rows' coordinates from the eigenvectors of their Gram matrix (X X^T = U S^2 U^T, so X = U S V^T),
    # in torch: a 2048-d SVD, or numpy's BLAS threads, took seconds per probe on a busy 2-core box
    xs = torch.from_numpy((x - mean) / scale)
    lam, u = torch.linalg.eigh(xs @ xs.T)
    keep = lam > 1e-8 * lam.max()
    u, root = u[:, keep], lam[keep].sqrt()
    z = (u * root).numpy()  # the rows in an orthonormal basis of their span (n x rank)
    to_features = xs.T @ (u / root)  # that basis in feature space (2048 x rank): w = to_features @ beta
    sample_w = np.where(y == 1, 0.5 / n_high, 0.5 / (n - n_high))  # each class weighs one half

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        t = z @ w + b
        log_loss = np.logaddexp(0.0, t) - y * t
        g = sample_w * (1.0 / (1.0 + np.exp(-t)) - y)
        return float(sample_w @ log_loss + 0.5 * l2 * w @ w / n), np.append(z.T @ g + l2 * w / n, g.sum())

    theta = minimize(loss, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B", options={"maxiter": 1000}).x
    return Probe(mean, scale, (to_features @ torch.from_numpy(theta[:-1])).numpy(), float(theta[-1]))


# ---- scores with case-bootstrap intervals ------------------------------------------------------


def bootstrap_scores(prob: np.ndarray, is_high: np.ndarray, cases: list[str], n_boot: int, seed: int) -> dict[str, Any]:
    """AUROC and balanced accuracy (threshold 0.5) with 95% percentile intervals over resampled cases.

    A resample draws cases with replacement; each patch then counts as often as its case was drawn, so
    AUROC is the weighted share of (high, low) pairs ordered right (ties half), computed for all
    resamples at once. Resamples with one level only are left out (their number is reported)."""
    prob, y = np.asarray(prob, np.float64), np.asarray(is_high, bool)
    names = sorted(set(cases))
    case_of = np.array([names.index(c) for c in cases])
    hi, lo = prob[y], prob[~y]
    pairs = (hi[:, None] > lo[None, :]) + 0.5 * (hi[:, None] == lo[None, :])  # n_high x n_low
    pred = prob >= 0.5

    def scores(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # w: (B, n) patch weights
        wh, wl = w[:, y], w[:, ~y]
        sh, sl = wh.sum(1), wl.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = np.einsum("bi,ij,bj->b", wh, pairs, wl) / (sh * sl)
            bal = 0.5 * ((wh * pred[y]).sum(1) / sh + (wl * ~pred[~y]).sum(1) / sl)
        return auc, bal

    auc, bal = scores(np.ones((1, len(y))))
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(names), (n_boot, len(names)))
    counts = np.stack([np.bincount(d, minlength=len(names)) for d in drawn])
    b_auc, b_bal = scores(counts[:, case_of].astype(np.float64))
    ok = np.isfinite(b_auc)

    def ci(values: np.ndarray) -> list[float] | None:
        return [float(np.percentile(values[ok], 2.5)), float(np.percentile(values[ok], 97.5))] if ok.any() else None

    return {
        "seed": seed,
        "auroc": float(auc[0]),
        "auroc_ci": ci(b_auc),
        "balanced_accuracy": float(bal[0]),
        "balanced_accuracy_ci": ci(b_bal),
        "bootstrap_used": int(ok.sum()),
    }


def real_subset(is_high: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a seeded, level-stratified share of the real training patches (at least one per level)."""
    rng = np.random.default_rng(seed)
    keep = []
    for level in (True, False):
        idx = np.flatnonzero(np.asarray(is_high) == level)
        k = min(len(idx), max(1, int(round(fraction * len(idx)))))
        keep.append(rng.permutation(idx)[:k] if len(idx) else idx)
    return np.sort(np.concatenate(keep))


# ---- inputs and the leakage guard --------------------------------------------------------------


@dataclass(frozen=True)
class LabelledSet:
    """One image folder's images with their patch id, case and level per attribute (None: another level)."""

    folder: Path
    files: list[Path]
    cases: list[str]
    levels: dict[str, list[str | None]]


def _captions_table(path: Path, attributes: list[str]) -> dict[str, dict[str, Any]]:
    """patch_id -> {case_id, captions: {caption: {attr: level}}} from captions.parquet."""
    table = read_parquet(require_file(path, "captions file"), "captions file").to_pydict()
    missing = [c for c in ["patch_id", "case_id", "caption", *(f"{a}_level" for a in attributes)] if c not in table]
    if missing:
        raise UserError(f"{path}: missing columns {missing}")
    out: dict[str, dict[str, Any]] = {}
    for i, pid in enumerate(table["patch_id"]):
        entry = out.setdefault(pid, {"case_id": table["case_id"][i], "captions": {}})
        entry["captions"][table["caption"][i]] = {a: table[f"{a}_level"][i] for a in attributes}
    return out


def labelled_set(
    folder: Path, captions: dict[str, dict[str, Any]], cases_split: dict[str, str], cfg: UtilityConfig, role: str
) -> LabelledSet:
    """Read FOLDER/index.jsonl and check where each image comes from (the leakage guard):
    role 'generated' and 'train' need training-split patches, 'held-out' patches of other cases."""
    index = require_file(Path(folder) / "index.jsonl", f"{role} set index (index.jsonl)")
    files, cases, levels = [], [], {a: [] for a in cfg.attributes}
    for row in read_jsonl(index):
        pid, caption = str(row.get("id")), row.get("caption")
        entry = captions.get(pid)
        if entry is None or caption not in entry["captions"]:
            raise UserError(
                f"{folder}: image {row.get('file')} (id {pid}) is not a captioned patch of {cfg.captions}: "
                f"cannot check which case its caption came from"
            )
        case = entry["case_id"]
        split = cases_split.get(case)
        if role == "held-out" and split == cfg.train_split:
            raise UserError(
                f"{folder}: held-out image {row.get('file')} is from case {case} of the '{cfg.train_split}' split in "
                f"{cfg.split}: the generator saw it"
            )
        if role != "held-out" and split != cfg.train_split:
            what = "generated from the caption of" if role == "generated" else "is"
            raise UserError(
                f"{folder}: image {row.get('file')} {what} patch {pid} of case {case}, split {split or 'none'} in "
                f"{cfg.split}; the {role} set must come from '{cfg.train_split}' cases only"
            )
        files.append(Path(folder) / row["file"])
        cases.append(case)
        for a in cfg.attributes:
            level = row.get(f"{a}_level") or entry["captions"][caption][a]
            levels[a].append(level if level in (cfg.high, cfg.low) else None)
    if not files:
        raise UserError(f"{index}: lists no images")
    return LabelledSet(Path(folder), files, cases, levels)


def _features(cfg: UtilityConfig, extractor: F.Extractor, s: LabelledSet, desc: str) -> np.ndarray:
    fs = _extract(cfg, extractor, s.files, desc)
    if len(fs.paths) != len(s.files):
        raise UserError(f"{fs.skipped[0]['file']}: unreadable image ({fs.skipped[0]['reason']})")
    return fs.features


# ---- the table -----------------------------------------------------------------------------------


def conditions(fractions: list[float]) -> list[tuple[str, float, bool]]:
    """(name, real share, with the generated set): the three headline rows, then the curve."""
    rows = [("real", 1.0, False), ("synthetic only (TSTR)", 0.0, True), ("real + synthetic", 1.0, True)]
    for f in fractions:
        if f < 1.0:
            rows += [(f"{f:.0%} real", f, False), (f"{f:.0%} real + synthetic", f, True)]
    return rows


def utility_table(
    train: tuple[np.ndarray, LabelledSet],
    fake: tuple[np.ndarray, LabelledSet],
    held: tuple[np.ndarray, LabelledSet],
    cfg: UtilityConfig,
) -> dict[str, Any]:
    """Every probe of every attribute, scored on every held-out group: the dict metrics.json holds."""
    groups = {"all": np.ones(len(held[1].files), bool)}
    for name, pattern in cfg.held_out_groups.items():
        groups[name] = np.array([re.search(pattern, c) is not None for c in held[1].cases])
    by_attribute: dict[str, Any] = {}
    for attr in cfg.attributes:

        def labelled(
            part: tuple[np.ndarray, LabelledSet], attr: str = attr
        ) -> tuple[np.ndarray, np.ndarray, list[str]]:
            keep = [i for i, level in enumerate(part[1].levels[attr]) if level is not None]
            return (
                part[0][keep],
                np.array([part[1].levels[attr][i] == cfg.high for i in keep], bool),
                [part[1].cases[i] for i in keep],
            )

        (xr, yr, _), (xf, yf, _), (xh, yh, ch) = labelled(train), labelled(fake), labelled(held)
        held_keep = [i for i, level in enumerate(held[1].levels[attr]) if level is not None]
        group_masks = {g: m[held_keep] for g, m in groups.items()}
        held_info = {
            g: {
                "n": int(m.sum()),
                "n_high": int(yh[m].sum()),
                "n_low": int((~yh[m]).sum()),
                "n_cases": len({c for c, k in zip(ch, m) if k}),
            }
            for g, m in group_masks.items()
        }
        rows = []
        predicted: dict[
            tuple[bytes, bool], np.ndarray
        ] = {}  # one fit per training set: at 100% real both seeds train alike
        for name, fraction, with_fake in conditions(cfg.fractions):
            row: dict[str, Any] = {
                "condition": name,
                "real_fraction": fraction,
                "synthetic": with_fake,
                "by_group": {},
                "seeds": [],
            }
            for seed in cfg.seeds:
                idx = real_subset(yr, fraction, seed) if fraction > 0 else np.array([], int)
                x = np.concatenate([xr[idx], xf]) if with_fake else xr[idx]
                y = np.concatenate([yr[idx], yf]) if with_fake else yr[idx]
                row.update(n_real=int(len(idx)), n_synthetic=int(len(xf)) if with_fake else 0)
                if len(set(y.tolist())) < 2:
                    row["status"] = (
                        f"not measured: the training images of {attr} have one level only ({int(y.sum())} high of "
                        f"{len(y)})"
                    )
                    break
                key = (idx.tobytes(), with_fake)
                if key not in predicted:
                    predicted[key] = fit_probe(x, y, cfg.l2).predict(xh)
                prob = predicted[key]
                for g, m in group_masks.items():
                    if yh[m].all() or not yh[m].any():
                        row["by_group"][g] = {
                            "status": (
                                f"not measured: {held_info[g]['n_high']} high and {held_info[g]['n_low']} low held-out "
                                "patches"
                            )
                        }
                        continue
                    s = bootstrap_scores(prob[m], yh[m], [c for c, k in zip(ch, m) if k], cfg.bootstrap, seed)
                    row["by_group"].setdefault(g, {"seeds": []})["seeds"].append(s)
                row["seeds"].append(seed)
            for r in row["by_group"].values():
                if "seeds" in r:
                    r["auroc_mean"] = float(np.mean([s["auroc"] for s in r["seeds"]]))
                    r["balanced_accuracy_mean"] = float(np.mean([s["balanced_accuracy"] for s in r["seeds"]]))
            rows.append(row)
        by_attribute[attr] = {
            "held_out": held_info,
            "n_train_real": {"high": int(yr.sum()), "low": int((~yr).sum())},
            "n_synthetic": {"high": int(yf.sum()), "low": int((~yf).sum())},
            "conditions": rows,
        }
    return by_attribute


def probe_line(cfg: UtilityConfig, n_train: int, n_fake: int, n_held: int) -> str:
    return (
        f"linear probe {PROBE} (class-balanced log-loss + l2 {cfg.l2:g}/N on standardised features, L-BFGS from 0), "
        f"balanced accuracy at p>=0.5; 95% percentile bootstrap over held-out cases ({cfg.bootstrap} resamples); seeds "
        f"{','.join(map(str, cfg.seeds))} (real subsets, level-stratified, and resamples); levels {cfg.high} vs "
        f"{cfg.low}; N real train {n_train}, N synthetic {n_fake} (training captions only), N held-out real {n_held}"
    )


def utility_lines(utility: dict[str, Any]) -> list[str]:
    """One printed line per attribute, condition and held-out group: AUROC and balanced accuracy per seed with
    intervals."""
    lines = [f"utility [{utility['protocol_line']}]"]
    for attr, a in utility["by_attribute"].items():
        for row in a["conditions"]:
            if "status" in row:
                lines.append(f"utility {attr}, {row['condition']}: {row['status']}")
                continue
            for g, r in row["by_group"].items():
                if "seeds" not in r:
                    lines.append(f"utility {attr}, {row['condition']}, held-out {g}: {r['status']}")
                    continue
                per_seed = "; ".join(_seed_text(s) for s in r["seeds"])
                lines.append(f"utility {attr}, {row['condition']}, held-out {g}: {per_seed}")
    return lines


def _interval(ci: list[float] | None) -> str:
    """'[lo, hi]', or '[n/a]' when every bootstrap resample held one level only."""
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "[n/a]"


def _seed_text(s: dict[str, Any]) -> str:
    return (
        f"seed {s['seed']} AUROC {s['auroc']:.3f} {_interval(s['auroc_ci'])}, "
        f"balanced acc {s['balanced_accuracy']:.3f} {_interval(s['balanced_accuracy_ci'])}"
    )


def table_rows(utility: dict[str, Any], group: str) -> list[list[str]]:
    """Rows (attribute, condition, N real / synthetic, AUROC per seed, balanced accuracy per seed) for the HTML
    report."""
    rows = []
    for attr, a in utility["by_attribute"].items():
        for row in a["conditions"]:
            r = row.get("by_group", {}).get(group, {})
            if "seeds" not in r:
                rows.append(
                    [
                        attr,
                        row["condition"],
                        f"{row.get('n_real', 0)} / {row.get('n_synthetic', 0)}",
                        row.get("status") or r.get("status", ""),
                        "",
                    ]
                )
                continue
            auc = "; ".join(f"{s['auroc']:.3f} {_interval(s['auroc_ci'])}" for s in r["seeds"])
            bal = "; ".join(f"{s['balanced_accuracy']:.3f} {_interval(s['balanced_accuracy_ci'])}" for s in r["seeds"])
            rows.append([attr, row["condition"], f"{row['n_real']} / {row['n_synthetic']}", auc, bal])
    return rows


def utility_plot(utility: dict[str, Any], out: Path) -> Path:
    """AUROC on the held-out real patches against the share of real training patches, with and without
    the generated set (mean over seeds; bars: seed-0 bootstrap interval), TSTR dashed; one panel per
    attribute and held-out group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attrs = list(utility["by_attribute"])
    groups = list(next(iter(utility["by_attribute"].values()))["held_out"])
    fig, axes = plt.subplots(len(groups), len(attrs), figsize=(4.2 * len(attrs), 3.2 * len(groups)), squeeze=False)
    for j, attr in enumerate(attrs):
        rows = utility["by_attribute"][attr]["conditions"]
        for i, g in enumerate(groups):
            ax = axes[i][j]
            for with_fake, colour, label in (
                (False, "tab:blue", "real only"),
                (True, "tab:orange", "real + synthetic"),
            ):
                pts = sorted(
                    (r["real_fraction"], r["by_group"][g])
                    for r in rows
                    if r["synthetic"] == with_fake
                    and r["real_fraction"] > 0
                    and "seeds" in r.get("by_group", {}).get(g, {})
                )
                if pts:
                    xs = [100 * f for f, _ in pts]
                    ys = [r["auroc_mean"] for _, r in pts]
                    cis = [r["seeds"][0]["auroc_ci"] or [y, y] for y, (_, r) in zip(ys, pts)]  # no interval: no bar
                    lo = [y - ci[0] for y, ci in zip(ys, cis)]
                    hi = [ci[1] - y for y, ci in zip(ys, cis)]
                    ax.errorbar(
                        xs,
                        ys,
                        yerr=[np.maximum(lo, 0), np.maximum(hi, 0)],
                        marker="o",
                        capsize=3,
                        color=colour,
                        label=label,
                    )
            tstr = [
                r["by_group"][g]
                for r in rows
                if r["real_fraction"] == 0 and "seeds" in r.get("by_group", {}).get(g, {})
            ]
            if tstr:
                ax.axhline(tstr[0]["auroc_mean"], color="tab:green", ls="--", label="synthetic only (TSTR)")
            ax.axhline(0.5, color="grey", lw=0.8, ls=":")
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("real training patches used (%)")
            ax.set_ylabel("AUROC on held-out real")
            ax.set_title(f"{attr}, held-out: {g}", fontsize=10)
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()

    with atomic_output(Path(out)) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return Path(out)


def _check_group_patterns(groups: dict[str, str]) -> None:
    for pattern in groups.values():
        try:
            re.compile(pattern)
        except re.error as e:
            raise UserError(f"held_out_groups: {pattern!r} is not a regular expression ({e})") from None


def _probe_settings(cfg: UtilityConfig) -> dict[str, Any]:
    """The probe's part of the protocol, beside the features' (metrics.json's utility.protocol)."""
    return {
        "probe": PROBE,
        "l2": cfg.l2,
        "threshold": 0.5,
        "bootstrap": cfg.bootstrap,
        "bootstrap_unit": "held-out case",
        "seeds": cfg.seeds,
        "fractions": cfg.fractions,
        "levels": [cfg.high, cfg.low],
        "train_split": cfg.train_split,
        "held_out_groups": cfg.held_out_groups,
    }


def run_utility(cfg: UtilityConfig, held_out_features: F.FeatureSet | None = None) -> UtilityResult:
    """Check the inputs and the leakage guard, extract the three sets' features, fit and score every
    probe, write OUT/metrics.json, OUT/utility.png and the manifest. `held_out_features`: the held-out
    set's features already extracted under this protocol (the demo's evaluation), used when they are
    of exactly the files the index lists."""
    started = time.time()
    out = require_output_folder(cfg.out)
    captions = _captions_table(cfg.captions, cfg.attributes)
    cases_split = load_split(cfg.split)
    _check_group_patterns(cfg.held_out_groups)
    fake = labelled_set(cfg.fake, captions, cases_split, cfg, "generated")
    held = labelled_set(cfg.real, captions, cases_split, cfg, "held-out")
    train = labelled_set(cfg.train_real, captions, cases_split, cfg, "train")
    extractor = load_extractor(cfg.extractor, cfg.device, cfg.dtype)
    x_train = _features(cfg, extractor, train, "train features")
    x_fake = _features(cfg, extractor, fake, "fake features")
    given = held_out_features
    same = given is not None and [p.resolve() for p in given.paths] == [p.resolve() for p in held.files]
    x_held = given.features if same else _features(cfg, extractor, held, "held-out features")
    by_attribute = utility_table((x_train, train), (x_fake, fake), (x_held, held), cfg)
    protocol = _base_protocol(cfg, extractor).extend(
        n_real=len(held.files),
        n_fake=len(fake.files),
        n_train=len(train.files),
        feature_dim=int(x_held.shape[1]),
        image_format_real=F.image_format(held.files),
        image_format_fake=F.image_format(fake.files),
        image_size_real=F.image_sizes(held.files),
        image_size_fake=F.image_sizes(fake.files),
    )
    utility = {
        "protocol": {**protocol.as_dict(), **_probe_settings(cfg)},
        "protocol_line": probe_line(cfg, len(train.files), len(fake.files), len(held.files)) + "; " + protocol.line(),
        "by_attribute": by_attribute,
        "seconds": round(time.time() - started, 1),
    }
    metrics = {"utility": utility}
    out.mkdir(parents=True, exist_ok=True)
    plot = utility_plot(utility, out / "utility.png")
    atomic_write_json(out / "metrics.json", metrics)
    write_manifest(
        out / "manifest.json",
        stage="utility",
        config=cfg,
        inputs={
            "real": cfg.real,
            "train_real": cfg.train_real,
            "fake": cfg.fake,
            "captions": cfg.captions,
            "split": cfg.split,
            "extractor": cfg.extractor,
        },
        produced={
            "metrics": "metrics.json",
            "plot": "utility.png",
            "n_fake": len(fake.files),
            "n_held_out": len(held.files),
        },
        started=started,
        seed=cfg.seeds[0],
    )
    return UtilityResult(out, metrics, plot)
