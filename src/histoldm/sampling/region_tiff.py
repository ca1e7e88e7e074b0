"""A region as a tiled, pyramidal TIFF that OpenSlide ("generic-tiff") and QuPath open.

Levels are successive tiled pages of the main IFD chain (each half the size of the one before, until
the smaller side fits one tile), deflate-compressed RGB tiles, and resolution tags in pixels per
centimetre, from which OpenSlide reports `openslide.mpp-x/y`. OpenSlide's generic TIFF reader takes
the pyramid from the main chain, not from SubIFDs, so the levels are written there.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

TILE = 256


def pyramid_levels(image: np.ndarray, tile: int = TILE) -> list[np.ndarray]:
    """(H, W, 3) uint8 -> [level 0, level 1 (1/2), ...] down to the first whose smaller side is <= tile."""
    levels = [image]
    while min(levels[-1].shape[:2]) > tile:
        h, w = levels[-1].shape[:2]
        levels.append(np.asarray(Image.fromarray(levels[-1]).resize((max(1, w // 2), max(1, h // 2)), Image.BOX)))
    return levels


def pyramid_tiff_bytes(image: np.ndarray, mpp: float, description: str = "", tile: int = TILE) -> bytes:
    """The TIFF file's bytes (the caller writes them atomically)."""
    import tifffile

    buffer = io.BytesIO()
    levels = pyramid_levels(image, tile)
    with tifffile.TiffWriter(buffer, bigtiff=image.nbytes > 2**31) as tif:
        for k, level in enumerate(levels):
            pixels_per_cm = 1e4 / (mpp * image.shape[1] / level.shape[1])
            tif.write(
                level,
                tile=(tile, tile),
                compression="zlib",
                predictor=True,
                photometric="rgb",
                subfiletype=0 if k == 0 else 1,
                resolution=(pixels_per_cm, pixels_per_cm),
                resolutionunit="CENTIMETER",
                description=description if k == 0 else None,
                metadata=None,
            )
    return buffer.getvalue()


def read_level0(path) -> np.ndarray:
    """Level 0 of a region TIFF as (H, W, 3) uint8."""
    import tifffile

    return tifffile.imread(path, key=0)
