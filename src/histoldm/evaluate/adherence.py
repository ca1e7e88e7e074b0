"""Condition adherence: do images generated for "high tumour" captions look different from "low tumour" ones?

FID cannot tell whether the text is used at all: a model that ignores captions can still score
well. So we measure, per attribute, a colour-deconvolution descriptor (histoldm.data.descriptors:
nuclear density by default) on each generated image and report the AUROC of that descriptor
separating images whose caption says `high` from those whose caption says `low`. Chance is 0.5;
a one-sided permutation test (labels shuffled, seeded) gives the p-value of AUROC >= observed.
A broken text path (captions ignored) gives ~0.5 and a large p-value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.stats import rankdata
from tqdm import tqdm

from histoldm.data.descriptors import DESCRIPTOR_NAMES, describe
from histoldm.errors import UserError
from histoldm.evaluate.results import Adherence, AttributeAdherence
from histoldm.fileio import read_jsonl, require_file
from histoldm.tables import read_parquet

DEFAULT_DESCRIPTORS = {"tumor": "nuclear_density", "til": "nuclear_density"}


def auroc(scores: np.ndarray, is_high: np.ndarray) -> float:
    """Probability that a random 'high' image scores above a random 'low' one (ties count half)."""
    scores, is_high = np.asarray(scores, np.float64), np.asarray(is_high, bool)
    n_high, n_low = int(is_high.sum()), int((~is_high).sum())
    if n_high == 0 or n_low == 0:
        raise UserError(f"adherence: need images of both levels, got {n_high} high and {n_low} low")
    ranks = rankdata(scores)
    return float((ranks[is_high].sum() - n_high * (n_high + 1) / 2) / (n_high * n_low))


def adherence_test(scores: np.ndarray, is_high: np.ndarray, *, n_permutations: int = 1000, seed: int = 0) -> dict:
    """AUROC with its chance level and a one-sided permutation p-value."""
    scores, is_high = np.asarray(scores, np.float64), np.asarray(is_high, bool)
    observed = auroc(scores, is_high)
    rng = np.random.default_rng(seed)
    as_extreme = sum(auroc(scores, rng.permutation(is_high)) >= observed for _ in range(n_permutations))
    return {
        "auroc": observed,
        "chance": 0.5,
        "p_value": (1 + as_extreme) / (1 + n_permutations),
        "n_high": int(is_high.sum()),
        "n_low": int((~is_high).sum()),
        "n_permutations": n_permutations,
    }


def image_descriptors(path: Path, mpp: float = 1.0) -> dict[str, float]:
    with Image.open(path) as im:
        return describe(np.asarray(im.convert("RGB")), mpp)


def read_sample_index(fake_dir: Path) -> list[dict]:
    """The sampler's FAKE/index.jsonl rows (id, caption, seed, file; levels if the sampler kept them)."""
    return list(read_jsonl(require_file(Path(fake_dir) / "index.jsonl", "sample index (index.jsonl)")))


def caption_levels(captions_parquet: Path, attributes: list[str]) -> dict[str, dict[str, str]]:
    """caption -> {attribute: level} from captions.parquet (columns caption, <attr>_level)."""
    table = read_parquet(captions_parquet, "captions file").to_pydict()
    missing = [c for c in ["caption"] + [f"{a}_level" for a in attributes] if c not in table]
    if missing:
        raise UserError(f"{captions_parquet}: missing columns {missing}")
    return {cap: {a: table[f"{a}_level"][i] for a in attributes} for i, cap in enumerate(table["caption"])}


def check_adherence_inputs(
    fake_dir: Path, captions_parquet: Path | None, attributes: list[str] | None = None
) -> list[dict]:
    """The index rows, once it is clear where their levels come from: called before any feature is
    computed, so a missing --captions is said at once, not after the FID."""
    attributes = attributes or list(DEFAULT_DESCRIPTORS)
    rows = read_sample_index(fake_dir)
    if captions_parquet:
        require_file(captions_parquet, "captions file")
    elif not any(f"{a}_level" in r for r in rows for a in attributes):
        raise UserError(
            f"{fake_dir}: its index has no caption levels; adherence needs --captions (captions.parquet with "
            "tumor_level, til_level)"
        )
    return rows


def run_adherence(
    fake_dir: Path,
    *,
    captions_parquet: Path | None,
    attributes: dict[str, str] | None = None,
    high: str = "high",
    low: str = "low",
    mpp: float = 1.0,
    n_permutations: int = 1000,
    seed: int = 0,
    ids: set[str] | None = None,
) -> Adherence:
    """Adherence per attribute over the generated images listed in FAKE/index.jsonl (those whose id is
    in `ids`, when given: a subset such as the demo's real-tissue captions)."""
    attributes = attributes or DEFAULT_DESCRIPTORS
    for name in attributes.values():
        if name not in DESCRIPTOR_NAMES:
            raise UserError(f"adherence: unknown descriptor {name!r} (choose from {', '.join(DESCRIPTOR_NAMES)})")
    rows = check_adherence_inputs(fake_dir, captions_parquet, list(attributes))
    if ids is not None:
        rows = [r for r in rows if r.get("id") in ids]
    levels = caption_levels(captions_parquet, list(attributes)) if captions_parquet else {}
    results: dict[str, AttributeAdherence] = {}
    cache: dict[str, dict[str, float]] = {}
    for attr, descriptor in attributes.items():
        scores, is_high = [], []
        for row in tqdm(rows, desc=f"adherence {attr}", leave=False):
            level = row.get(f"{attr}_level") or levels.get(row.get("caption", ""), {}).get(attr)
            if level not in (high, low):
                continue
            f = row["file"]
            if f not in cache:
                cache[f] = image_descriptors(Path(fake_dir) / f, mpp)
            scores.append(cache[f][descriptor])
            is_high.append(level == high)
        if len(set(is_high)) < 2:  # a test needs both groups; say what there was instead of failing the evaluation
            n_high = sum(is_high)
            results[attr] = AttributeAdherence(
                status=f"not measured: {n_high} images of {attr} level {high!r} and {len(is_high) - n_high} of {low!r}"
            )
            continue
        results[attr] = AttributeAdherence(
            descriptor=descriptor,
            **adherence_test(np.array(scores), np.array(is_high), n_permutations=n_permutations, seed=seed),
        )
    return Adherence([high, low], results)


def adherence_line(attr: str, r: AttributeAdherence) -> str:
    if not r.measured:
        return f"adherence {attr}: {r.status}"
    return (
        f"adherence {attr}: AUROC {r.auroc:.3f} (chance 0.5, p={r.p_value:.3g}, "
        f"{r.n_high} high vs {r.n_low} low captions, descriptor {r.descriptor})"
    )
