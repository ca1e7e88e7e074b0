"""One image descriptor per visible fact (histoldm.data.synthetic_facts), from colour deconvolution like
histoldm.data.descriptors: heuristics that rank tiles, not diagnoses.

- necrosis_share: share of the tile in necrosis-like zones: homogeneous eosin (little texture), no intact
  nucleus (10 um^2 or more) within 8 um, and the haematoxylin haze of nuclear debris around;
- nuclear_size: mean area (um^2) of the five largest nuclei, the ones a pathologist grades on (large,
  pleomorphic nuclei score high);
- single_file_share: share of tumour-sized nuclei (over 60 um^2, above lymphocytes and fibroblasts) in
  single files: a nucleus whose two nearest such nuclei are close, on opposite sides (over 135 degrees
  apart) and clearly nearer than the third is a file's link, and it and both neighbours are in the file;
  cohesive nests score low, lobular cords high.

Areas and distances are in micrometres, converted with the patch's microns per pixel.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from histoldm.data.descriptors import NUCLEAR_H, WHITE_OD, deconvolve, optical_density

DEBRIS_UM2 = 10.0  # haematoxylin fragments below a lymphocyte's area: karyorrhectic debris
TUMOR_NUCLEUS_UM2 = 60.0  # above lymphocytes and most fibroblasts; four 4-um pixels (the demo scale) count
DEBRIS_HAZE = 0.06  # mean haematoxylin over 15 um, intact nuclei left out, above stroma's (~0.03)
SMOOTH_EOSIN_STD = 0.035  # local eosin spread below which the eosin is homogeneous (stroma fibres: ~0.06)
LARGEST_NUCLEI = 5


def _nuclei(rgb: np.ndarray) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """Labelled nuclear blobs, their count and pixel areas, and the haematoxylin / eosin maps."""
    conc = deconvolve(rgb)
    white = optical_density(rgb).sum(axis=2) < WHITE_OD
    labels, n = ndimage.label((conc[..., 0] > NUCLEAR_H) & ~white)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    return labels, n, areas, conc


def necrosis_share(rgb: np.ndarray, mpp: float = 1.0) -> float:
    """Share of the tile in homogeneous eosinophilic zones without intact nuclei but with a haematoxylin
    haze of nuclear debris (the fragments themselves are below a pixel at 4 um/px, their haze is not)."""
    labels, _, areas, conc = _nuclei(rgb)
    white = optical_density(rgb).sum(axis=2) < WHITE_OD
    blob_um2 = np.concatenate([[0.0], areas * mpp * mpp])[labels]
    intact = ndimage.binary_dilation(blob_um2 >= DEBRIS_UM2, iterations=max(1, round(8 / mpp)))
    window = max(3, round(15 / mpp))
    eosin = ndimage.gaussian_filter(conc[..., 1], 1.0 / mpp)
    mean = ndimage.uniform_filter(eosin, window)
    spread = np.sqrt(np.clip(ndimage.uniform_filter(eosin * eosin, window) - mean * mean, 0, None))
    haze = ndimage.uniform_filter(np.where(intact, 0.0, conc[..., 0]), window)
    zone = (spread < SMOOTH_EOSIN_STD) & (mean > 0.15) & (haze > DEBRIS_HAZE) & ~white & ~intact
    return float(zone.mean())


def nuclear_size(rgb: np.ndarray, mpp: float = 1.0) -> float:
    """Mean area (um^2) of the largest nuclei of the tile (0 without nuclei)."""
    _, n, areas, _ = _nuclei(rgb)
    if not n:
        return 0.0
    return float(np.sort(areas)[-LARGEST_NUCLEI:].mean() * mpp * mpp)


def single_file_share(rgb: np.ndarray, mpp: float = 1.0) -> float:
    """Share of tumour-sized nuclei in single files (0 with fewer than three of them)."""
    labels, n, areas, _ = _nuclei(rgb)
    keep = np.flatnonzero(areas * mpp * mpp > TUMOR_NUCLEUS_UM2)
    if keep.size < 3:
        return 0.0
    centres = np.array(ndimage.center_of_mass(np.ones_like(labels), labels, keep + 1)) * mpp
    diameter = 2 * np.sqrt(areas[keep] * mpp * mpp / np.pi)
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    np.fill_diagonal(gaps, np.inf)
    order = np.argsort(gaps, axis=1)
    in_file: set[int] = set()
    for i in range(keep.size):  # i in the middle of a file: it and its two neighbours join it
        near = order[i, :3]
        d = gaps[i, near]
        a, b = centres[near[0]] - centres[i], centres[near[1]] - centres[i]
        opposite = np.dot(a, b) / (d[0] * d[1]) < np.cos(np.radians(135))
        third_farther = keep.size < 4 or d[2] > 1.5 * d[1]
        if d[1] < 3.0 * diameter[i] and opposite and third_farther:
            in_file |= {i, int(near[0]), int(near[1])}
    return len(in_file) / keep.size


FACT_DESCRIPTORS: dict[str, Callable[[np.ndarray, float], float]] = {
    "necrosis": necrosis_share,
    "grade": nuclear_size,
    "growth": single_file_share,
}


def describe_facts(rgb: np.ndarray, mpp: float = 1.0) -> dict[str, float]:
    """Each visible fact's descriptor of one tile."""
    return {fact: describe(rgb, mpp) for fact, describe in FACT_DESCRIPTORS.items()}
