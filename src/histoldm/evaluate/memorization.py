"""Memorisation check: is a generated image (nearly) a copy of a training patch?

For each generated image we find the nearest training patch in feature space (cosine distance by
default). The threshold is relative to the training set itself: the `quantile` (default 5%) of
each training patch's distance to its nearest *other* training patch. A generator that draws new
images from the training distribution puts about `quantile` of its images under that threshold
(that is the chance level reported); one that copies puts far more (a copy has distance ~0).
Overlapping training tiles lower the threshold, which makes the check stricter. Exact duplicates
(distance 0 up to round-off) would drive it to 0, where nothing can fall below it and the check
passes whatever the generator does; so the threshold uses each training patch's nearest other patch
that is not a copy of it, the patches with a copy are counted in the report, and a training set of
copies of one image is not measured.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from histoldm.errors import UserError
from histoldm.evaluate.metrics import pairwise_distances
from histoldm.fileio import atomic_write_bytes

Metric = Literal["cosine", "l2"]
DUPLICATE_TOLERANCE = (
    1e-6  # cosine distance (or l2 over the median feature norm) at or below which two patches are exact duplicates
)


def distances(a: np.ndarray, b: np.ndarray, metric: Metric) -> np.ndarray:
    if metric == "l2":
        return pairwise_distances(a, b)
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.clip(1.0 - an @ bn.T, 0.0, 2.0)


def nearest(
    a: np.ndarray,
    b: np.ndarray,
    metric: Metric,
    batch: int = 2048,
    exclude_self: bool = False,
    beyond: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Index and distance of the nearest row of b for each row of a (batched to bound memory); with
    `beyond`, the nearest farther than that (inf when there is none)."""
    idx = np.empty(len(a), dtype=np.int64)
    dist = np.empty(len(a))
    for i in range(0, len(a), batch):
        d = distances(a[i : i + batch], b, metric)
        if exclude_self:
            rows = np.arange(d.shape[0])
            d[rows, rows + i] = np.inf
        if beyond is not None:
            d[d <= beyond] = np.inf
        idx[i : i + batch] = d.argmin(1)
        dist[i : i + batch] = d[np.arange(d.shape[0]), idx[i : i + batch]]
    return idx, dist


def memorization_report(
    fake: np.ndarray,
    train: np.ndarray,
    fake_paths: list[Path],
    train_paths: list[Path],
    *,
    metric: Metric = "cosine",
    quantile: float = 0.05,
    n_pairs: int = 16,
) -> dict:
    """Share of generated images closer to a training patch than the training set's own `quantile` NN distance."""
    if len(train) < 2:
        raise UserError(f"memorisation: need at least 2 training images, got {len(train)}")
    nn_idx, nn_dist = nearest(fake, train, metric)
    tolerance = DUPLICATE_TOLERANCE * (1.0 if metric == "cosine" else float(np.median(np.linalg.norm(train, axis=1))))
    n_dup = int((nearest(train, train, metric, exclude_self=True)[1] <= tolerance).sum())
    _, train_nn = nearest(
        train, train, metric, exclude_self=True, beyond=tolerance
    )  # nearest other patch that is not a copy
    distinct = train_nn[np.isfinite(train_nn)]
    threshold = float(np.quantile(distinct, quantile)) if distinct.size else None
    order = np.argsort(nn_dist)[:n_pairs]
    checks = {}
    if threshold is None:
        checks["status"] = (
            f"all {len(train)} training patches are copies of one image: no threshold to compare with; deduplicate them"
        )
    elif n_dup:
        checks["note"] = (
            f"{n_dup} of {len(train)} training patches have an exact duplicate in the training set; the threshold uses "
            "each patch's nearest other patch that is not a copy (with copies it would be 0, and nothing could fall "
            "below it)"
        )
    return {
        "metric": metric,
        "threshold": threshold,
        "threshold_rule": (
            f"{quantile:g} quantile of training-to-nearest-other-training distances, exact duplicates left out"
        ),
        "share_below_threshold": None if threshold is None else float((nn_dist < threshold).mean()),
        "train_with_exact_duplicate": n_dup,
        **checks,
        "chance_level": quantile,
        "median_nn_distance_fake_to_train": float(np.median(nn_dist)),
        "median_nn_distance_train_to_train": float(np.median(distinct)) if distinct.size else None,
        "n_fake": len(fake),
        "n_train": len(train),
        "closest_pairs": [
            {"fake": str(fake_paths[i]), "train": str(train_paths[nn_idx[i]]), "distance": float(nn_dist[i])}
            for i in order
        ],
    }


def pairs_image(pairs: list[dict], out: Path, size: int = 128) -> None:
    """Side-by-side picture of the closest pairs (generated left, training right), for the report."""
    sheet = Image.new("RGB", (2 * size + 8, max(1, len(pairs)) * (size + 4)), "white")
    for row, pair in enumerate(pairs):
        for col, key in enumerate(("fake", "train")):
            try:
                with Image.open(pair[key]) as im:
                    sheet.paste(
                        im.convert("RGB").resize((size, size), Image.BICUBIC), (col * (size + 8), row * (size + 4))
                    )
            except OSError:
                continue  # a file that vanished since extraction leaves a blank cell

    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(out, buf.getvalue())
