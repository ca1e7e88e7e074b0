"""Slides -> patch store: fixed-magnification patches on tissue, from every slide OpenSlide reads.

Magnification rule: N x means N/10 of 10x, and 10x means 1.0 um/px (so 20x = 0.5, 40x = 0.25 um/px,
the usual scanner convention). A slide's level-0 resolution comes from `--mpp` if given, else its
microns-per-pixel metadata, else 10 / objective power; a slide with none of these is skipped with a
message naming it. Each patch is read from the coarsest pyramid level that is still at least as
fine as needed, then resized with PIL (bicubic, antialiased) to `size` px. See docs/data.md.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from histoldm.data.config import TileConfig
from histoldm.data.store import (
    case_id_of,
    image_relpath,
    patch_table,
    png_bytes,
    read_parquet,
    safe_id,
    write_parquet,
)
from histoldm.data.tissue import otsu_threshold, saturation, tissue_fraction
from histoldm.errors import UserError
from histoldm.fileio import record_or_check_settings
from histoldm.manifest import write_manifest

PARAMS_FILE = "tiling.json"  # the settings a store's patches were cut with; resuming with others is refused
MPP_TOLERANCE = 0.05  # a slide up to 5% coarser than the target is tiled at its own resolution, not refused

IMAGE_EXTENSIONS = {
    ".tif",
    ".tiff",
    ".png",
    ".jpg",
    ".jpeg",
}  # may be plain images, read through PIL when OpenSlide cannot
CORRUPT = "truncated or corrupt file"


def target_mpp(magnification: float) -> float:
    return 10.0 / magnification


def base_mpp(properties: dict[str, str], override: float | None, name: str) -> float:
    """Level-0 microns per pixel: override, else mpp metadata, else 10 / objective power."""
    if override:
        return override
    for key in ("openslide.mpp-x", "openslide.mpp-y"):
        try:
            value = float(properties.get(key, ""))
        except ValueError:
            continue
        if value > 0:
            return value
    try:
        objective = float(properties.get("openslide.objective-power", ""))
    except ValueError:
        objective = 0.0
    if objective > 0:
        return 10.0 / objective
    raise UserError(f"{name}: no magnification metadata (neither microns per pixel nor objective power); pass --mpp")


def find_slides(root: Path, extensions: list[str]) -> list[Path]:
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise UserError(f"{root}: slide file or folder not found")
    exts = {e.lower() for e in extensions}
    slides = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts)
    if not slides:
        raise UserError(f"{root}: no slide files ({', '.join(sorted(exts))})")
    return slides


def slide_ids(slides: list[Path]) -> dict[Path, str]:
    """File stem as slide id; the full file name where two stems collide. Two files with one name in
    different folders are refused: one would silently stand for the other on resume."""
    stems = [safe_id(p.stem) for p in slides]
    ids = {p: (s if stems.count(s) == 1 else safe_id(p.name)) for p, s in zip(slides, stems)}
    seen: dict[str, Path] = {}
    for p, slide_id in ids.items():
        if slide_id in seen:
            raise UserError(
                f"{p}: same slide id {slide_id!r} as {seen[slide_id]}; "
                "rename one or tile the folders into separate stores"
            )
        seen[slide_id] = p
    return ids


def open_slide(path: Path):
    """OpenSlide for scanner formats, openslide's PIL-backed ImageSlide for plain images (it has no
    magnification metadata, so it needs --mpp). A scanner file OpenSlide cannot open is named as
    truncated or corrupt, not passed to PIL (whose 'cannot identify image file' hides the cause)."""
    import openslide

    path = Path(path)
    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise UserError(
                f"{path}: OpenSlide cannot read this {path.suffix} slide: {CORRUPT}, or not a slide"
            ) from None
    except openslide.OpenSlideError as e:
        raise UserError(f"{path}: unreadable slide, {CORRUPT} (OpenSlide: {e})") from None
    try:
        return openslide.ImageSlide(str(path))
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(
            f"{path}: neither OpenSlide nor PIL can read it: {CORRUPT}, or an unsupported format ({e})"
        ) from None


def _check_params(out: Path, cfg: TileConfig) -> None:
    """Slides already in the store are resumed, so they must have been cut with these settings."""
    params = cfg.model_dump(
        mode="json",
        include={"magnification", "size", "overlap", "mpp", "min_tissue", "min_saturation", "thumbnail_size"},
    )
    record_or_check_settings(out / PARAMS_FILE, params, f"{out}: store was tiled with other settings")


def _remove_empty_store(out: Path, made_out: bool) -> None:
    """Undo a first run that tiled nothing: its settings file, then every folder under the store left empty,
    and the store's folder itself when this run made it; a folder holding any other file stays."""
    (out / PARAMS_FILE).unlink(missing_ok=True)
    folders = sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
    for folder in folders + ([out] if made_out else []):
        if not any(folder.iterdir()):
            folder.rmdir()


def grid(length: int, extent: float, stride: float) -> list[int]:
    if length < extent:
        return []
    n = int(math.floor((length - extent) / stride)) + 1
    return [int(round(i * stride)) for i in range(n)]


def _part_path(out: Path, slide_id: str) -> Path:
    return out / "parts" / f"{slide_id}.parquet"


def _slide_complete(out: Path, slide_id: str) -> bool:
    """Resumable per slide: its table part is written last, so a part whose images all exist is done."""
    part = _part_path(out, slide_id)
    if not part.is_file():
        return False
    try:
        paths = read_parquet(part, "slide part").column("path").to_pylist()
    except UserError:
        return False
    return all((out / p).is_file() for p in paths)


def _candidates(
    thumb_mask: np.ndarray,
    scale: tuple[float, float],
    dims: tuple[int, int],
    extent: float,
    stride: float,
    min_tissue: float,
) -> list[tuple[int, int]]:
    """Level-0 (x, y) of the grid cells whose thumbnail cell holds enough tissue; half the threshold, as the
    thumbnail's pixels are blurred averages (the exact fraction on the patch decides later)."""
    (sx, sy), (width, height) = scale, dims
    candidates = []
    for y in grid(height, extent, stride):
        for x in grid(width, extent, stride):
            cell = thumb_mask[
                int(y * sy) : max(int((y + extent) * sy), int(y * sy) + 1),
                int(x * sx) : max(int((x + extent) * sx), int(x * sx) + 1),
            ]
            if cell.size and cell.mean() >= min_tissue * 0.5:
                candidates.append((x, y))
    return candidates


def _read_patch(slide, xy: tuple[int, int], level: int, read_side: int, size: int, side_at_level: float) -> np.ndarray:
    """One patch: `side_at_level` pixels of `level` at level-0 `xy`, on white where the slide is transparent,
    resized (bicubic) to size x size RGB."""
    region = slide.read_region(xy, level, (read_side, read_side))
    white = Image.new("RGB", region.size, (255, 255, 255))
    white.paste(region, mask=region.getchannel("A"))
    box = (0, 0, side_at_level, side_at_level)
    return np.asarray(white.resize((size, size), Image.Resampling.BICUBIC, box=box))


def tile_slide(path: Path, slide_id: str, cfg: TileConfig, show_progress: bool = False) -> dict[str, Any]:
    """Tile one slide into the store; returns {slide_id, patches, status}. Raises on a bad slide."""
    setup_start = time.perf_counter()
    out = Path(cfg.out)
    if _slide_complete(out, slide_id):
        n = read_parquet(_part_path(out, slide_id), "slide part").num_rows
        return {"slide_id": slide_id, "patches": n, "status": "resumed"}
    slide = open_slide(path)
    try:
        mpp0 = base_mpp(dict(slide.properties), cfg.mpp, str(path))
        mpp_out = target_mpp(cfg.magnification)
        downsample = mpp_out / mpp0
        if downsample < 1 - MPP_TOLERANCE:
            raise UserError(
                f"{path}: {cfg.magnification:g}x needs {mpp_out:.3f} um/px but the slide's finest level is "
                f"{mpp0:.3f} um/px"
            )
        if downsample < 1:  # scanners state e.g. 0.5025 um/px for "20x": read level 0 as is, record its true mpp
            downsample, mpp_out = 1.0, mpp0
        level = max(i for i, d in enumerate(slide.level_downsamples) if d <= downsample * 1.001 or i == 0)
        level_ds = slide.level_downsamples[level]
        extent = cfg.size * downsample  # patch side in level-0 pixels
        read_side = int(math.ceil(extent / level_ds))
        stride = (cfg.size - cfg.overlap) * downsample
        if stride <= 0:
            raise UserError(f"overlap {cfg.overlap}: must be smaller than size {cfg.size}")
        width, height = slide.dimensions

        thumb = slide.get_thumbnail((cfg.thumbnail_size, cfg.thumbnail_size)).convert("RGB")
        thumb_rgb = np.asarray(thumb)
        thumb_sat = saturation(thumb_rgb)
        threshold = max(otsu_threshold(thumb_sat), cfg.min_saturation)
        thumb_mask = thumb_sat >= threshold
        sx, sy = thumb_rgb.shape[1] / width, thumb_rgb.shape[0] / height

        # Coarse pass on the thumbnail, then the exact tissue fraction on each patch decides.
        candidates = _candidates(thumb_mask, (sx, sy), (width, height), extent, stride, cfg.min_tissue)

        rows = []
        (out / "patches" / slide_id).mkdir(parents=True, exist_ok=True)
        loop_start = time.perf_counter()
        for x, y in tqdm(candidates, desc=slide_id, unit="patch", leave=False, disable=not show_progress):
            rgb = _read_patch(slide, (x, y), level, read_side, cfg.size, extent / level_ds)
            fraction = tissue_fraction(rgb, threshold)
            if fraction < cfg.min_tissue:
                continue
            patch_id = f"{slide_id}_{x}_{y}"
            rel = image_relpath(slide_id, patch_id)
            (out / rel).write_bytes(png_bytes(rgb))  # the part below, written last, marks completion
            rows.append(
                {
                    "patch_id": patch_id,
                    "slide_id": slide_id,
                    "case_id": case_id_of(slide_id),
                    "x": x,
                    "y": y,
                    "level": level,
                    "mpp": mpp_out,
                    "tissue_fraction": round(fraction, 4),
                    "path": rel,
                    "extent": extent,
                }
            )
        write_parquet(_part_path(out, slide_id), patch_table(rows))
        # timings let the benchmark separate per-slide setup (open, thumbnail) from per-patch work
        return {
            "slide_id": slide_id,
            "patches": len(rows),
            "status": "tiled",
            "candidates": len(candidates),
            "seconds_setup": round(loop_start - setup_start, 4),
            "seconds_patches": round(time.perf_counter() - loop_start, 4),
        }
    finally:
        slide.close()


def _tile_slide_safe(path: Path, slide_id: str, cfg: TileConfig, show_progress: bool) -> dict[str, Any]:
    """A bad slide is reported, never fatal: any failure becomes a 'failed' record with the reason."""
    try:
        return tile_slide(path, slide_id, cfg, show_progress)
    except Exception as e:  # noqa: BLE001 - OpenSlide, PIL and OS errors alike must not stop the run
        reason = (
            str(e)
            if isinstance(e, UserError)
            else f"{path}: unreadable slide, probably a {CORRUPT} ({type(e).__name__}: {e})"
        )
        return {"slide_id": slide_id, "patches": 0, "status": "failed", "slide": str(path), "reason": reason}


def _store_table(out: Path, slide_ids_all: list[str], results: list[dict[str, Any]]):
    """The patch table of every finished slide of the list, in slide-id order (what one job tiling all of
    them writes), and the slides neither finished nor failed here: another shard's, still running."""
    failed = {r["slide_id"] for r in results if r["status"] == "failed"}
    here = {r["slide_id"] for r in results if r["status"] != "failed"}  # just checked by tile_slide
    finished = sorted(s for s in slide_ids_all if s in here or (s not in failed and _slide_complete(out, s)))
    parts = [read_parquet(_part_path(out, s), "slide part") for s in finished]
    pending = sorted(set(slide_ids_all) - set(finished) - failed)
    return (pa.concat_tables(parts) if parts else patch_table([])), pending


@dataclass(frozen=True)
class TileResult:
    """`histoldm tile`: the store and what this job did (`per_slide`: each slide's patches and status)."""

    store: Path
    patches: int  # in the store's patches.parquet
    shard: str | None  # "i/n" when this job tiled one shard of the slides
    slides_pending: int  # other shards' slides not finished yet
    slides_tiled: int
    slides_resumed: int
    slides_failed: int
    per_slide: dict[str, dict[str, Any]]
    skipped: list[dict[str, str]]  # failed slides with the reason


def run_tile(cfg: TileConfig) -> TileResult:
    """Tile every slide under cfg.slides into the store cfg.out; write patches.parquet and manifest.json."""
    started = time.time()
    out = Path(cfg.out)
    all_slides = find_slides(cfg.slides, cfg.extensions)
    ids = slide_ids(all_slides)  # over the whole list: every shard names a slide alike
    slides = all_slides[cfg.shard[0] :: cfg.shard[1]] if cfg.shard else all_slides
    first_run, made_out = not (out / PARAMS_FILE).is_file(), not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    _check_params(out, cfg)

    results: list[dict[str, Any]] = []
    bar = tqdm(total=len(slides), desc="tile", unit="slide")
    if cfg.workers == 1 or len(slides) == 1:
        for p in slides:
            results.append(_tile_slide_safe(p, ids[p], cfg, True))
            bar.update(1)
    else:
        ctx = multiprocessing.get_context("spawn")  # no fork: the parent may hold torch/OpenSlide state
        with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=ctx) as pool:
            futures = [pool.submit(_tile_slide_safe, p, ids[p], cfg, False) for p in slides]
            for fut in as_completed(futures):
                results.append(fut.result())
                bar.update(1)
    bar.close()

    done = sorted((r for r in results if r["status"] != "failed"), key=lambda r: r["slide_id"])
    skipped = sorted(
        ({"slide": r["slide"], "reason": r["reason"]} for r in results if r["status"] == "failed"),
        key=lambda s: s["slide"],
    )
    table, pending = _store_table(out, [ids[p] for p in all_slides], results)
    if (
        skipped and table.num_rows == 0 and not pending
    ):  # no slide tiled by any job: an empty store would only fail later
        if first_run:  # nothing tiled: leave no settings behind to refuse a retry with others
            _remove_empty_store(out, made_out)
        more = f" ({len(skipped) - 1} more failed too; no slide could be tiled)" if len(skipped) > 1 else ""
        raise UserError(skipped[0]["reason"] + more)
    write_parquet(out / "patches.parquet", table)
    produced = {
        "patches": table.num_rows,
        "shard": f"{cfg.shard[0]}/{cfg.shard[1]}" if cfg.shard else None,
        "slides_pending": len(pending),  # other shards' slides not finished yet (their job rewrites patches.parquet)
        "slides_tiled": sum(r["status"] == "tiled" for r in done),
        "slides_resumed": sum(r["status"] == "resumed" for r in done),
        "slides_failed": len(skipped),
        "per_slide": {r["slide_id"]: {k: v for k, v in r.items() if k != "slide_id"} for r in done},
    }
    write_manifest(
        out / "manifest.json",
        stage="tile",
        config=cfg,
        inputs={"slides": cfg.slides},
        produced=produced,
        started=started,
        skipped=skipped,
    )
    return TileResult(out, **produced, skipped=skipped)
