"""Patch-level image descriptors from colour deconvolution: heuristics, not diagnoses.

Ruifrok & Johnston (2001) colour deconvolution: under Beer-Lambert, optical density
OD = -log10(I / 255) is a linear mix of per-stain OD vectors, so stain concentrations are
OD @ inverse(stain matrix). From the haematoxylin (nuclei) and eosin (stroma, cytoplasm) maps:

- fat_fraction: share of near-white pixels (white space: fat vacuoles, lumina, background);
- nuclear_density: share of tissue (non-white) pixels with strong haematoxylin;
- stroma_share: share of eosin-dominated pixels that are neither nuclear nor white;
- large_nuclei: share of tissue pixels in large haematoxylin blobs (atypical tumour nuclei proxy);
- lymphocytes: small, dark, round haematoxylin blobs per 10,000 um^2 of tissue (TIL proxy).

Blob sizes are in micrometres, converted with the patch's microns per pixel (1.0 at 10x).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Stain OD vectors (rows: haematoxylin, eosin, DAB), Ruifrok & Johnston 2001.
STAINS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
STAINS = STAINS / np.linalg.norm(STAINS, axis=1, keepdims=True)
UNMIX = np.linalg.inv(STAINS)

WHITE_OD = 0.12  # summed OD below which a pixel is white space
NUCLEAR_H = 0.45  # haematoxylin concentration of a nuclear pixel
STROMA_E = 0.15  # eosin concentration of a stromal pixel
LYMPHOCYTE_AREA_UM2 = (10.0, 75.0)  # ~3.5-10 um diameter
LARGE_NUCLEUS_UM2 = 80.0  # above the lymphocyte range: large (atypical) nuclei
DESCRIPTOR_NAMES = ("fat_fraction", "nuclear_density", "stroma_share", "large_nuclei", "lymphocytes")


def optical_density(rgb: np.ndarray) -> np.ndarray:
    return -np.log10(np.clip(rgb.astype(np.float32), 1.0, 255.0) / 255.0)


def deconvolve(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) stain concentrations (haematoxylin, eosin, DAB)."""
    return optical_density(rgb) @ UNMIX.astype(np.float32)


def compose(concentrations: np.ndarray) -> np.ndarray:
    """Inverse of deconvolve: stain concentrations -> uint8 RGB (used by the synthetic tiles)."""
    od = concentrations @ STAINS.astype(np.float32)
    return np.clip(255.0 * np.power(10.0, -od), 0, 255).round().astype(np.uint8)


def describe(rgb: np.ndarray, mpp: float = 1.0) -> dict[str, float]:
    """All descriptors of one patch (see the module docstring)."""
    conc = deconvolve(rgb)
    hema, eosin = conc[..., 0], conc[..., 1]
    white = optical_density(rgb).sum(axis=2) < WHITE_OD
    nuclei = (hema > NUCLEAR_H) & ~white
    stroma = (eosin > STROMA_E) & (eosin > hema) & ~nuclei & ~white

    labels, n = ndimage.label(nuclei)
    px_area = mpp * mpp
    area_um2 = np.bincount(labels.ravel(), minlength=n + 1)[1:] * px_area
    lymphocytes = 0
    if n:
        slices = ndimage.find_objects(labels)
        mean_h = ndimage.mean(hema, labels, index=np.arange(1, n + 1))
        for i, sl in enumerate(slices):
            if not (LYMPHOCYTE_AREA_UM2[0] <= area_um2[i] <= LYMPHOCYTE_AREA_UM2[1]):
                continue
            h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
            round_enough = min(h, w) / max(h, w) > 0.6 and area_um2[i] / (h * w * px_area) > 0.6
            if round_enough and mean_h[i] > 0.8:  # dark: condensed chromatin
                lymphocytes += 1
    tissue_um2 = max(float((~white).sum()), 1.0) * px_area
    large = float(area_um2[area_um2 > LARGE_NUCLEUS_UM2].sum() / tissue_um2)
    return {
        "fat_fraction": float(white.mean()),
        "nuclear_density": float(nuclei.sum() * px_area / tissue_um2),
        "stroma_share": float(stroma.mean()),
        "large_nuclei": large,
        "lymphocytes": lymphocytes * 10_000.0 / tissue_um2,
    }


# Value at which each descriptor counts as "fully present" (scaled value 1.0); the level rule of
# histoldm.data.scores.levels_of then applies to value / scale, clamped to [0, 1].
DESCRIPTOR_SCALES = {
    "fat_fraction": 0.5,
    "nuclear_density": 0.3,
    "stroma_share": 0.8,
    "large_nuclei": 0.2,
    "lymphocytes": 8.0,
}


def scaled(name: str, value: float) -> float:
    return min(max(value / DESCRIPTOR_SCALES[name], 0.0), 1.0)


def proxy_scores(rgb: np.ndarray, mpp: float = 1.0) -> dict[str, float]:
    """HEURISTIC stand-ins for tumour / TIL probabilities when no classifier scores exist (demo).

    tumour proxy = share of large nuclei (scaled); TIL proxy = lymphocyte-like blob density (scaled).
    """
    d = describe(rgb, mpp)
    return {
        "prob_tumor": scaled("large_nuclei", d["large_nuclei"]),
        "prob_til": scaled("lymphocytes", d["lymphocytes"]),
    }
