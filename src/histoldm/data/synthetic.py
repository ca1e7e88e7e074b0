"""Synthetic H&E-like tiles with known, controllable attributes: ground truth for conditioning tests.

A tile is painted as stain concentration maps (haematoxylin, eosin) and turned into RGB with the
same Beer-Lambert stain model the descriptors invert, so the attributes are measurable:
- tumor: dense, large, irregular, pale-chromatin nuclei (vs. sparse thin fibroblast nuclei);
- til: small, dark, round lymphocytes;
- fat: white round vacuoles with thin pink rims;
- stroma: fibrous eosin background everywhere else.
Cases may also carry visible facts (histoldm.data.synthetic_facts: necrosis, grade, growth pattern),
drawn per case and stated in the case's synthetic report; without them no extra random draw is made.
Each tile depends only on (seed, case index, tile index), so datasets grow without changing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from scipy import ndimage
from tqdm import tqdm

from histoldm.data.descriptors import compose
from histoldm.data.store import image_relpath, patch_table, png_bytes
from histoldm.data.synthetic_facts import CaseFacts, VisibleFact, draw_case_facts
from histoldm.manifest import write_manifest
from histoldm.tables import write_parquet


def _ellipse(
    canvas: np.ndarray,
    cy: float,
    cx: float,
    ry: float,
    rx: float,
    angle: float,
    value: float,
    jitter: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Paint `value` into canvas inside a (possibly ragged) rotated ellipse; returns the painted mask."""
    r = int(max(ry, rx) * (1 + jitter) + 2)
    y0, y1 = max(int(cy) - r, 0), min(int(cy) + r + 1, canvas.shape[0])
    x0, x1 = max(int(cx) - r, 0), min(int(cx) + r + 1, canvas.shape[1])
    mask = np.zeros(canvas.shape, bool)
    if y0 >= y1 or x0 >= x1:
        return mask
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = (dx * c + dy * s) / rx, (-dx * s + dy * c) / ry
    rho = np.sqrt(u * u + v * v)
    if jitter and rng is not None:  # ragged outline: radius modulated by a few random harmonics
        theta = np.arctan2(v, u)
        k = rng.uniform(-jitter, jitter, 3)
        rho = rho / (1 + k[0] * np.sin(2 * theta) + k[1] * np.cos(3 * theta) + k[2] * np.sin(5 * theta))
    inside = rho <= 1.0
    canvas[y0:y1, x0:x1][inside] = value
    mask[y0:y1, x0:x1] = inside
    return mask


def _dilate_into(occupied: np.ndarray, mask: np.ndarray) -> None:
    """occupied |= binary_dilation(mask), on the mask's bounding box plus one pixel: the same pixels as
    dilating the whole tile, without scanning it once per nucleus (that was half the demo's synthetic stage)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return
    y0, y1 = max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, mask.shape[0])
    x0, x1 = max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, mask.shape[1])
    window = occupied[y0:y1, x0:x1]
    np.logical_or(window, ndimage.binary_dilation(mask[y0:y1, x0:x1]), out=window)


def _place(
    rng: np.random.Generator,
    occupied: np.ndarray,
    radius: float,
    tries: int = 200,
    near: tuple[float, float, float] | None = None,
) -> tuple[float, float] | None:
    """A centre whose disc does not touch painted nuclei or fat (keeps blobs separate, measurable).

    `near` = (cy, cx, sigma) draws centres around a point instead of uniformly (fat lobules).
    """
    size = occupied.shape[0]
    for _ in range(tries):
        cy, cx = rng.normal(near[:2], near[2]) if near else rng.uniform(0, size, 2)
        r = int(radius) + 2
        win = occupied[max(int(cy) - r, 0) : int(cy) + r + 1, max(int(cx) - r, 0) : int(cx) + r + 1]
        if not win.any():
            return cy, cx
    return None


# Tumour nuclei by grade: radius range (um), aspect range, haematoxylin range, outline jitter, cytoplasm halo.
# None: the nuclei of a case without a drawn grade; 1: small, round, uniform; 3: large, pleomorphic, dark.
_TUMOR_NUCLEI = {
    None: ((7.0, 9.5), (1.0, 1.3), (0.7, 1.0), 0.12, 1.5),
    1: ((5.0, 6.0), (1.0, 1.12), (0.65, 0.85), 0.03, 2.0),
    3: ((8.5, 13.0), (1.0, 1.5), (0.8, 1.3), 0.2, 1.5),
}
Spot = Callable[[float], "tuple[float, float] | None"]


def _paint_necrosis(rng: np.random.Generator, hema: np.ndarray, eosin: np.ndarray, occupied: np.ndarray) -> None:
    """A ragged zone of homogeneous pale eosin with a faint haematoxylin haze and scattered nuclear debris
    (karyorrhexis); marked occupied, so no intact nucleus is drawn in it."""
    size = hema.shape[0]
    zone = np.zeros_like(hema)
    cy, cx = rng.uniform(0.25 * size, 0.75 * size, 2)
    r = size * rng.uniform(0.22, 0.32)
    mask = _ellipse(zone, cy, cx, r, r * rng.uniform(0.7, 1.0), rng.uniform(0, np.pi), 1.0, 0.15, rng) & ~occupied
    haze = ndimage.gaussian_filter(rng.normal(0, 1, hema.shape), 4.0)
    eosin[mask] = (0.4 + 0.3 * haze[mask]).astype(np.float32)
    hema[mask] = 0.08
    ys, xs = np.nonzero(mask)
    for k in rng.integers(0, ys.size, ys.size // 90):
        _ellipse(hema, ys[k], xs[k], *[rng.uniform(0.7, 1.6)] * 2, 0.0, rng.uniform(0.9, 1.5))
    occupied |= mask


def _nest_spot(
    rng: np.random.Generator, hema: np.ndarray, eosin: np.ndarray, occupied: np.ndarray, count: int, cell: float
) -> Spot:
    """Ductal growth: tumour cells (radius `cell` with cytoplasm) packed into cohesive nests of about ten,
    islands of pale cytoplasm set in the stroma, every other nest around a small white lumen (a gland)."""
    size = hema.shape[0]
    centres = rng.uniform(0.1 * size, 0.9 * size, (max(1, -(-count // 10)), 2))
    for k, (cy, cx) in enumerate(centres):
        island = np.zeros_like(hema)
        island = _ellipse(island, cy, cx, 3.4 * cell, 3.4 * cell * rng.uniform(0.7, 1.0), rng.uniform(0, np.pi), 1.0)
        island &= ~occupied
        eosin[island], hema[island] = 0.28, 0.045
        if k % 2 == 0:
            lumen = _ellipse(hema, cy, cx, *[rng.uniform(0.8, 1.2) * cell] * 2, 0.0, 0.0)
            eosin[lumen] = 0.0
            occupied |= lumen

    def spot(radius: float) -> tuple[float, float] | None:
        for k in rng.permutation(len(centres)):
            centre = _place(rng, occupied, radius, tries=30, near=(*centres[k], 1.6 * cell))
            if centre is not None:
                return centre
        return None

    return spot


def _file_spot(rng: np.random.Generator, occupied: np.ndarray, cell: float) -> Spot:
    """Lobular growth: tumour cells (radius with cytoplasm about `cell`) in single files, each cell just
    past the last along gently wavy parallel cords about four cells apart, filled from the central cord
    outwards (few cells: one file across the middle); a cell that does not fit moves on along its cord."""
    size = occupied.shape[0]
    heading = rng.uniform(0, np.pi)
    along, across = np.array([np.sin(heading), np.cos(heading)]), np.array([np.cos(heading), -np.sin(heading)])
    gap = 2.0 * (2 * cell + 3.0)
    offsets = np.arange(-0.75 * size, 0.75 * size, gap) + rng.uniform(0, gap)
    lanes = [size / 2 + offset * across - 0.75 * size * along for offset in offsets[np.argsort(-np.abs(offsets))]]
    cord = {"start": lanes.pop(), "t": 0.0, "last": 0.0, "phase": rng.uniform(0, 2 * np.pi)}

    def spot(radius: float) -> tuple[float, float] | None:
        t = cord["t"] + cord["last"] + radius + 3.0
        while True:
            if t > 1.5 * size:  # past the far edge: the next cord
                if not lanes:
                    return None
                cord.update(start=lanes.pop(), t=0.0, last=0.0, phase=rng.uniform(0, 2 * np.pi))
                t = radius
            cy, cx = cord["start"] + t * along + gap / 8 * np.sin(t / 40 + cord["phase"]) * across
            fits = 0 <= cy < size and 0 <= cx < size and _place(rng, occupied, radius, tries=1, near=(cy, cx, 0.0))
            if fits:
                cord.update(t=t, last=radius)
                return cy, cx
            t += 2.0

    return spot


def _tumor_spot(
    rng: np.random.Generator,
    hema: np.ndarray,
    eosin: np.ndarray,
    occupied: np.ndarray,
    facts: CaseFacts | None,
    count: int,
) -> Spot | None:
    """Where tumour cells go: anywhere (None) without a drawn growth pattern, else in files or in nests."""
    if facts is None or facts.lobular is None:
        return None
    radius, *_, halo = _TUMOR_NUCLEI[facts.grade]
    cell = sum(radius) / 2 + halo
    return _file_spot(rng, occupied, cell) if facts.lobular else _nest_spot(rng, hema, eosin, occupied, count, cell)


def render_tile(
    tumor: float,
    til: float,
    fat: float,
    seed: int | tuple[int, ...],
    size: int = 256,
    facts: CaseFacts | None = None,
) -> np.ndarray:
    """One (size, size, 3) uint8 tile. tumor, til in [0, 1] (>= 0.5 reads as "high"); fat = target white share;
    facts: the case's visible facts (None: drawn without them)."""
    rng = np.random.default_rng(seed)
    area = (size / 256) ** 2  # counts scale with the field of view; sizes stay physical (1 um/px)
    hema = np.full((size, size), 0.03, np.float32)
    # Stroma: wavy collagen fibres = smoothed anisotropic noise around a pink base.
    noise = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), sigma=(1.0, 6.0))
    angle = rng.uniform(0, 180)
    noise = ndimage.rotate(noise, angle, reshape=False, mode="reflect")
    eosin = (0.32 + 0.7 * noise).clip(0.17, 0.7).astype(np.float32)
    occupied = np.zeros((size, size), bool)

    # Fat: a lobule of white vacuoles with thin eosin rims around one point, up to the target share.
    lobule = (*rng.uniform(0, size, 2), 50.0)
    while occupied.mean() < fat:
        r = rng.uniform(14, 30)
        centre = _place(rng, occupied, r * 0.8, tries=20, near=lobule) or tuple(rng.normal(lobule[:2], lobule[2]))
        _ellipse(eosin, centre[0], centre[1], r + 1.5, r + 1.5, 0.0, 0.6)
        inside = _ellipse(eosin, centre[0], centre[1], r, r, 0.0, 0.0)
        hema[inside] = 0.0
        occupied |= inside
    if facts is not None and facts.necrosis:
        _paint_necrosis(rng, hema, eosin, occupied)

    def nuclei(
        count: int,
        radius: tuple[float, float],
        aspect: tuple[float, float],
        h: tuple[float, float],
        jitter: float,
        halo: float,
        spot: Spot | None = None,
    ) -> None:
        for _ in range(count):
            ry = rng.uniform(*radius)
            rx = ry * rng.uniform(*aspect)
            centre = spot(max(ry, rx) + halo) if spot else _place(rng, occupied, max(ry, rx) + halo)
            if centre is None:
                return
            ang = rng.uniform(0, np.pi)
            if halo:  # cytoplasm: paler, purple-pink rim
                _ellipse(eosin, centre[0], centre[1], ry + halo, rx + halo, ang, 0.3)
            value = rng.uniform(*h)
            mask = _ellipse(hema, centre[0], centre[1], ry, rx, ang, value, jitter, rng)
            hema[mask] *= rng.uniform(0.8, 1.2, int(mask.sum())).astype(np.float32)  # chromatin texture
            eosin[mask] = 0.1
            _dilate_into(occupied, mask)

    free = 1.0 - fat
    tumor_cells = int((2 + 100 * tumor**2) * free * area)
    spot = _tumor_spot(rng, hema, eosin, occupied, facts, tumor_cells)
    nuclei(tumor_cells, *_TUMOR_NUCLEI[None if facts is None else facts.grade], spot=spot)
    nuclei(int(12 * free * area), (1.6, 2.2), (3.0, 4.0), (0.7, 1.0), 0.0, 0.0)  # fibroblasts
    nuclei(int((2 + 100 * til**2) * free * area), (2.4, 3.0), (0.9, 1.1), (1.3, 1.6), 0.0, 0.0)

    hema = ndimage.gaussian_filter(hema, 0.6)
    eosin = ndimage.gaussian_filter(eosin, 0.6)
    conc = np.stack([hema, eosin, np.zeros_like(hema)], axis=-1)
    conc += rng.normal(0, 0.015, conc.shape).astype(np.float32)
    return compose(np.clip(conc, 0, None))


def level_name(value: float) -> str:
    return "high" if value >= 0.5 else "low"


def case_id_of(c: int) -> str:
    return f"SYN-{c:04d}"


def synthetic_case_facts(seed: int, n_cases: int, facts: Sequence[VisibleFact]) -> dict[str, CaseFacts]:
    """Case id -> its visible facts, as the tiles of make_synthetic_dataset(seed=seed) draw them (the
    reports of those cases state the same facts); empty when no fact is switched on."""
    drawn = {case_id_of(c): draw_case_facts(seed, c, facts) for c in range(n_cases)}
    return {case: f for case, f in drawn.items() if f is not None}


def _fact_columns(facts: CaseFacts | None) -> dict[str, Any]:
    """The truth table's columns of the drawn facts (none without facts)."""
    if facts is None:
        return {}
    columns = {
        "necrosis": None if facts.necrosis is None else ("present" if facts.necrosis else "absent"),
        "grade": facts.grade,
        "growth": None if facts.lobular is None else ("lobular" if facts.lobular else "ductal"),
    }
    return {k: v for k, v in columns.items() if v is not None}


def _write_tile(job: tuple[int, int, int, int, str, tuple[VisibleFact, ...]]) -> tuple[dict, dict, dict]:
    """Render, encode and write one tile; its patch, score and truth rows. Depends only on the job."""
    seed, c, t, size, out, visible = job
    case_id = case_id_of(c)
    facts = draw_case_facts(seed, c, visible)
    slide_id = f"{case_id}-S1"
    rng = np.random.default_rng((seed, c, t, 1))
    tumor_high, til_high = rng.random() < 0.5, rng.random() < 0.5
    tumor = rng.uniform(0.65, 1.0) if tumor_high else rng.uniform(0.0, 0.35)
    til = rng.uniform(0.65, 1.0) if til_high else rng.uniform(0.0, 0.35)
    fat = rng.uniform(0.0, 0.4)
    rgb = render_tile(tumor, til, fat, (seed, c, t, 2), size, facts)
    x, y = t * size, 0
    patch_id = f"{slide_id}_{x}_{y}"
    rel = image_relpath(slide_id, patch_id)
    (Path(out) / rel).write_bytes(png_bytes(rgb))  # tables, written last, mark the dataset complete
    return (
        {
            "patch_id": patch_id,
            "slide_id": slide_id,
            "case_id": case_id,
            "x": x,
            "y": y,
            "level": 0,
            "mpp": 1.0,
            "tissue_fraction": round(1 - fat, 4),
            "path": rel,
            "extent": float(size),
        },
        {"patch_id": patch_id, "prob_tumor": round(tumor, 4), "prob_til": round(til, 4)},
        {
            "patch_id": patch_id,
            "case_id": case_id,
            "tumor": level_name(tumor),
            "til": level_name(til),
            "tumor_intensity": round(tumor, 4),
            "til_intensity": round(til, 4),
            "fat_target": round(fat, 4),
            **_fact_columns(facts),
        },
    )


def make_synthetic_dataset(
    out_store: Path,
    n_cases: int,
    tiles_per_case: int,
    seed: int = 0,
    size: int = 256,
    workers: int = 1,
    visible_facts: Sequence[VisibleFact] = (),
) -> dict[str, Any]:
    """Write a patch store of synthetic tiles plus scores.parquet and attributes.parquet (the truth).

    Each tile draws tumor and TIL as high or low (balanced), an intensity within that level
    (high: 0.65-1.0, low: 0.0-0.35, used as prob_tumor / prob_til) and a fat share (0-0.4).
    Case ids are SYN-0000, SYN-0001, ...; one slide per case. `workers` > 1 renders tiles in that many
    processes (the same files: each tile depends only on its job); the demo passes its free cores.
    `visible_facts` draws those facts per case into its tiles and adds them as columns of attributes.parquet.
    """
    started = time.time()
    out = Path(out_store)
    for c in range(n_cases):
        (out / "patches" / f"{case_id_of(c)}-S1").mkdir(parents=True, exist_ok=True)
    visible = tuple(visible_facts)
    jobs = [(seed, c, t, size, str(out), visible) for c in range(n_cases) for t in range(tiles_per_case)]
    progress = dict(total=len(jobs), desc="synthetic", unit="tile")
    if workers > 1:
        with ProcessPoolExecutor(
            min(workers, len(jobs)), mp_context=get_context("spawn")
        ) as pool:  # spawn: no forked torch/OpenMP state
            results = list(tqdm(pool.map(_write_tile, jobs, chunksize=max(1, len(jobs) // (4 * workers))), **progress))
    else:
        results = [_write_tile(job) for job in tqdm(jobs, **progress)]
    rows, scores, attrs = (list(column) for column in zip(*results))
    write_parquet(
        out / "scores.parquet",
        pa.Table.from_pylist(
            scores,
            schema=pa.schema([("patch_id", pa.string()), ("prob_tumor", pa.float64()), ("prob_til", pa.float64())]),
        ),
    )
    write_parquet(out / "attributes.parquet", pa.Table.from_pylist(attrs))
    write_parquet(out / "patches.parquet", patch_table(rows))
    produced = {"patches": len(rows), "cases": n_cases}
    write_manifest(
        out / "manifest.json",
        stage="synthetic",
        config={
            "n_cases": n_cases,
            "tiles_per_case": tiles_per_case,
            "seed": seed,
            "size": size,
            **({"visible_facts": list(visible)} if visible else {}),
        },
        inputs={},
        produced=produced,
        started=started,
        seed=seed,
    )
    return {
        "store": str(out),
        "scores": str(out / "scores.parquet"),
        "attributes": str(out / "attributes.parquet"),
        **produced,
    }
