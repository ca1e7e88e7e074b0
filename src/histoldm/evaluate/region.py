"""`histoldm evaluate-region`: crop FID/KID, the seam score and map agreement of `sample-region` output.

- Crop FID/KID: N random model-size crops of the generated regions (N = the real set's size unless
  given), written as PNGs with an index under OUT/crops/, then `histoldm evaluate` itself on them
  against the real held-out patches (OUT/crops-eval/metrics.json): the crop metric is evaluate's.
- Seam score: mean squared luminance gradient across the window and decoder-tile borders over the same
  on every other pixel boundary. A region without seams is near 1; the same statistic on real slide
  regions of the same size at the same border positions is the reference.
- Map agreement: the adherence descriptor (histoldm.evaluate.adherence, nuclear density) on each
  window's footprint, and its AUROC separating the windows whose map cell says high from low.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from histoldm.assets import asset_path
from histoldm.data.descriptors import describe
from histoldm.data.tiling import base_mpp, open_slide
from histoldm.errors import UserError
from histoldm.evaluate import features as F
from histoldm.evaluate.adherence import DEFAULT_DESCRIPTORS, adherence_line, adherence_test
from histoldm.evaluate.config import EvaluateConfig, ExtractConfig, RegionEvalConfig
from histoldm.evaluate.results import AttributeAdherence, Metrics
from histoldm.evaluate.run import report_lines, run_evaluate
from histoldm.fileio import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_jsonl,
    require_file,
    require_output_folder,
)
from histoldm.manifest import write_manifest
from histoldm.sampling.region import window_grid, window_starts
from histoldm.sampling.region_run import finished_regions
from histoldm.sampling.region_tiff import read_level0

ATTRIBUTES = {"tumor": 0, "til": 1}  # position of each level in a map cell "TUMOR/TIL"


def region_records(folder: Path) -> list[dict]:
    """The finished regions of a sample-region folder (every shard's index)."""
    require_file(Path(folder) / "settings.json", "sample-region folder (settings.json)")
    records = sorted(finished_regions(Path(folder)).values(), key=lambda r: r["id"])
    if not records:
        raise UserError(f"{folder}: no finished regions")
    return records


def window_offsets(record: dict) -> list[list[tuple[int, int]]]:
    """Pixel offsets of a region's windows, the grid its map cells follow."""
    return window_grid(record["size"], record["size"], record["window_px"], record["stride_px"])


def border_positions(record: dict) -> list[int]:
    """Pixel boundaries inside the region where a window or a decoder tile starts or ends."""
    size, edges = record["size"], set()
    for window, stride in (
        (record["window_px"], record["stride_px"]),
        (record["decode_tile_px"], record["decode_stride_px"]),
    ):
        window = min(window, size)
        for start in window_starts(size, window, stride):
            edges |= {start, start + window}
    return sorted(e for e in edges if 0 < e < size)


def seam_score(image: np.ndarray, borders: list[int]) -> float:
    """Mean squared luminance step across the border boundaries (between pixel b-1 and b, rows and
    columns) over the mean across every other boundary; ~1 without seams."""
    g = np.asarray(image, np.float64).mean(axis=2)
    dx, dy = np.diff(g, axis=1) ** 2, np.diff(g, axis=0) ** 2  # boundary k lies between pixel k and k + 1
    on_x = np.zeros(dx.shape[1], bool)
    on_y = np.zeros(dy.shape[0], bool)
    on_x[[b - 1 for b in borders if 0 < b < g.shape[1]]] = True
    on_y[[b - 1 for b in borders if 0 < b < g.shape[0]]] = True
    border = np.concatenate([dx[:, on_x].ravel(), dy[on_y, :].ravel()])
    interior = np.concatenate([dx[:, ~on_x].ravel(), dy[~on_y, :].ravel()])
    return float(border.mean() / max(interior.mean(), 1e-12))


def real_regions(slide_path: Path, size: int, mpp: float, n: int, seed: int) -> tuple[list[np.ndarray], float]:
    """`n` random size x size regions of a real slide at `mpp`, or at the finest scale at which the slide
    still holds one when it is too small for that (returned: the mpp used)."""
    slide = open_slide(slide_path)
    level0 = base_mpp(dict(slide.properties), None, str(slide_path))
    width, height = slide.dimensions
    scale = min(mpp / level0, min(width, height) / size)  # level-0 pixels per region pixel
    if scale * size > min(width, height) or scale <= 0:
        raise UserError(f"{slide_path}: too small for a {size} px region")
    extent = int(np.floor(scale * size))
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        x, y = int(rng.integers(0, width - extent + 1)), int(rng.integers(0, height - extent + 1))
        region = slide.read_region((x, y), 0, (extent, extent)).convert("RGB")
        images.append(np.asarray(region.resize((size, size), Image.BICUBIC)))
    return images, level0 * scale


def write_crops(records: list[dict], regions_dir: Path, out: Path, n: int, seed: int) -> Path:
    """`n` random window-size crops (region chosen uniformly, then the position) as OUT/images/*.png
    with an index.jsonl in the sampler's layout, so `evaluate` reads them as a generated set."""
    rng = np.random.default_rng(seed)
    picks = sorted((int(rng.integers(len(records))), k) for k in range(n))
    rows, loaded = [], {}
    for region, k in picks:
        rec = records[region]
        if region not in loaded:
            loaded = {region: read_level0(regions_dir / rec["file"])}  # one region in memory at a time
        image, crop = loaded[region], rec["window_px"]
        y, x = (int(v) for v in rng.integers(0, rec["size"] - crop + 1, size=2))
        buffer = io.BytesIO()
        Image.fromarray(image[y : y + crop, x : x + crop]).save(buffer, format="PNG")
        file = f"images/{k:06d}.png"
        atomic_write_bytes(out / file, buffer.getvalue(), fsync=False)
        rows.append({"id": f"{k:06d}", "file": file, "region": rec["id"], "x": x, "y": y})
    atomic_write_jsonl(out / "index.jsonl", sorted(rows, key=lambda r: r["id"]))
    return out


def map_agreement(records: list[dict], regions_dir: Path, high: str, low: str, n_permutations: int, seed: int) -> dict:
    """Per attribute: AUROC of the adherence descriptor on window footprints, high vs low map cells."""
    values: dict[str, tuple[list[float], list[bool]]] = {a: ([], []) for a in ATTRIBUTES}
    for rec in records:
        image, w = read_level0(regions_dir / rec["file"]), rec["window_px"]
        for i, row in enumerate(window_offsets(rec)):
            for j, (y, x) in enumerate(row):
                levels = rec["map"][i][j].split("/")
                described = None
                for attr, pos in ATTRIBUTES.items():
                    if levels[pos] not in (high, low):
                        continue
                    described = described or describe(image[y : y + w, x : x + w], rec["mpp"])
                    values[attr][0].append(described[DEFAULT_DESCRIPTORS[attr]])
                    values[attr][1].append(levels[pos] == high)
    result = {}
    for attr, (scores, is_high) in values.items():
        if len(set(is_high)) < 2:
            result[attr] = {
                "status": (
                    f"not measured: {sum(is_high)} windows of {attr} level {high!r} and "
                    f"{len(is_high) - sum(is_high)} of {low!r}"
                )
            }
            continue
        result[attr] = {
            "descriptor": DEFAULT_DESCRIPTORS[attr],
            **adherence_test(np.array(scores), np.array(is_high), n_permutations=n_permutations, seed=seed),
        }
    return {"levels_compared": [high, low], "by_attribute": result}


def seam_scores(records: list[dict], regions_dir: Path, slide: Path, n_real: int, seed: int) -> dict:
    """Seam score of every generated region and of real slide regions of the same sizes and borders."""
    generated, real, real_mpp = [], [], {}
    for rec in records:
        borders = border_positions(rec)
        generated.append(seam_score(read_level0(regions_dir / rec["file"]), borders))
    for size in sorted({r["size"] for r in records}):
        rec = next(r for r in records if r["size"] == size)
        images, real_mpp[size] = real_regions(slide, size, rec["mpp"], n_real, seed)
        real += [seam_score(image, border_positions(rec)) for image in images]
    g, r = float(np.mean(generated)), float(np.mean(real))
    return {
        "generated": g,
        "real": r,
        "ratio": g / r,
        "n_generated": len(generated),
        "n_real": len(real),
        "generated_per_region": dict(zip([rec["id"] for rec in records], generated)),
        "real_slide": str(slide),
        "real_mpp_by_size": {str(k): v for k, v in real_mpp.items()},
    }


@dataclass(frozen=True)
class RegionEvalResult:
    """`histoldm evaluate-region`: exactly what OUT/metrics.json holds (crop, seam, map_agreement)."""

    out: Path
    metrics: dict


def run_evaluate_region(cfg: RegionEvalConfig) -> RegionEvalResult:
    """Crops -> evaluate; seam score vs real regions; map agreement (module docstring)."""
    started = time.time()
    records = region_records(cfg.regions)
    out = require_output_folder(Path(cfg.out))
    slide = require_file(Path(cfg.real_slide), "real slide") if cfg.real_slide else asset_path("cmu_slide")
    n_real = len(F.list_images(cfg.real))
    n = cfg.n_crops or n_real
    out.mkdir(parents=True, exist_ok=True)
    crops = write_crops(records, Path(cfg.regions), out / "crops", n, cfg.seed)
    extract = {k: getattr(cfg, k) for k in ExtractConfig.model_fields}
    crop = run_evaluate(
        EvaluateConfig(
            real=cfg.real,
            fake=crops,
            out=out / "crops-eval",
            fid_method=cfg.fid_method,
            kid_subsets=cfg.kid_subsets,
            kid_subset_size=cfg.kid_subset_size,
            seed=cfg.seed,
            **extract,
        )
    )
    metrics = {
        "crop": {**crop.metrics.to_json(), "n_crops": n, "n_real": n_real, "regions": len(records)},
        "seam": seam_scores(records, Path(cfg.regions), slide, cfg.real_regions, cfg.seed),
        "map_agreement": map_agreement(
            records, Path(cfg.regions), cfg.adherence_high, cfg.adherence_low, cfg.adherence_permutations, cfg.seed
        ),
    }
    atomic_write_json(out / "metrics.json", metrics)
    write_manifest(
        out / "manifest.json",
        stage="evaluate-region",
        config=cfg,
        inputs={"regions": Path(cfg.regions) / "index.jsonl", "real": cfg.real, "real_slide": slide},
        produced={"metrics": "metrics.json", "crops": n},
        started=started,
        seed=cfg.seed,
    )
    return RegionEvalResult(out, metrics)


def region_report_lines(metrics: dict) -> list[str]:
    """Human-readable lines (the crop metrics with evaluate's own protocol lines)."""
    crop = metrics["crop"]
    lines = [
        f"crops ({crop['n_crops']} of {crop['regions']} regions vs {crop['n_real']} real): " + line
        for line in report_lines(Metrics.from_json(crop))[:2]
    ]
    s = metrics["seam"]
    lines.append(
        f"seam score {s['generated']:.3f} (real slide regions {s['real']:.3f}, ratio {s['ratio']:.3f}; ~1 = no seam)"
    )
    agreement = metrics["map_agreement"]["by_attribute"]
    lines += ["map agreement: " + adherence_line(a, AttributeAdherence(**r)) for a, r in agreement.items()]
    return lines
