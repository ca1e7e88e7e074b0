"""Tissue detection on a slide thumbnail: Otsu's threshold on HSV saturation.

Why saturation: glass, dust-free background and the slide label are grey or white (low
saturation) while H&E-stained tissue is pink/purple (high saturation), whatever the overall
brightness; Otsu picks the cut between the two modes of the histogram. A floor (`min_saturation`)
keeps a nearly empty thumbnail from having its noise split into "tissue".
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in 0..255 (uint8) of an (H, W, 3) uint8 image."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    return ((mx - mn) * 255.0 / np.maximum(mx, 1.0)).astype(np.uint8)


def otsu_threshold(values: np.ndarray) -> int:
    """Otsu's threshold of uint8 values: the cut maximising between-class variance."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * levels)
    w1 = total - w0
    mean_all = m0[-1] / total
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_all * w0 - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = 0
    return int(np.argmax(between)) + 1  # values >= threshold are foreground


def tissue_threshold(thumbnail: Image.Image | np.ndarray, min_saturation: int = 20) -> int:
    """The saturation cut for a slide, found on its thumbnail and reused on every patch."""
    rgb = np.asarray(thumbnail.convert("RGB")) if isinstance(thumbnail, Image.Image) else thumbnail
    return max(otsu_threshold(saturation(rgb)), min_saturation)


def tissue_mask(rgb: np.ndarray, threshold: int) -> np.ndarray:
    return saturation(rgb) >= threshold


def tissue_fraction(rgb: np.ndarray, threshold: int) -> float:
    """Share of pixels counted as tissue."""
    return float(tissue_mask(rgb, threshold).mean())
