"""`histoldm sample-region`: regions larger than the model from a caption template, the case summary and a
label map of tumour / TIL levels; deterministic per region, resumable per region, shardable.

    OUT/regions/<id>.tiff     tiled pyramidal TIFF (deflate), resolution tags from --mpp
    OUT/previews/<id>.png     the region scaled to at most --preview-size px
    OUT/index.jsonl           one line per finished region (append-only; index.shard<K>-of-<N>.jsonl per shard)
    OUT/settings.json         what decides the pixels; resuming with other settings is an error
    OUT/manifest.json

Windows, blending and the tiled decode: `histoldm.sampling.region`; the map: `region_map`.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from histoldm.devices import dtype_name, resolve_device, sampling_numerics
from histoldm.errors import UserError
from histoldm.fileio import (
    append_jsonl,
    atomic_write_bytes,
    read_jsonl,
    record_or_check_settings,
    remove_stale_temps,
    require_output_folder,
)
from histoldm.manifest import write_manifest
from histoldm.models.autoencoder import decode, load_autoencoder
from histoldm.models.bundle import read_bundle_meta
from histoldm.models.presets import AUTOENCODER_PRESETS
from histoldm.sampling.captions_io import safe_file_stem
from histoldm.sampling.config import RegionConfig
from histoldm.sampling.guidance import classifier_free_guidance
from histoldm.sampling.region import blended_eps_fn, decode_tiled, window_grid
from histoldm.sampling.region_map import LabelMap, check_map_shape, constant_map, read_label_map, window_caption
from histoldm.sampling.region_tiff import pyramid_tiff_bytes
from histoldm.sampling.run import ImageSampler, image_seed, resolve_bundle, to_uint8
from histoldm.sampling.solvers import image_generators, make_solver


@dataclass(frozen=True)
class Geometry:
    """Window and decode-tile sizes of a model, in latent pixels, and its latent-to-pixel factor."""

    window: int
    stride: int
    factor: int
    decode_tile: int
    decode_stride: int

    def grid(self, size: int) -> list[list[tuple[int, int]]]:
        side = size // self.factor
        return window_grid(side, side, self.window, self.stride)

    def check_size(self, size: int, where: str) -> None:
        if size % self.factor or size // self.factor < self.window:
            raise UserError(
                f"{where}: region size {size} px must be a multiple of {self.factor} and at least the model's "
                f"{self.window * self.factor} px"
            )


@dataclass(frozen=True)
class RegionSpec:
    id: str
    summary: str
    label_map: LabelMap
    size: int


def autoencoder_factor(bundle: Path, meta) -> int:
    """Pixels per latent pixel, from the autoencoder's config (no weights loaded)."""
    config = bundle / "autoencoder" / "config.json"
    if config.is_file():
        channels = json.loads(config.read_text(encoding="utf-8"))["block_out_channels"]
    elif meta.latent.autoencoder in AUTOENCODER_PRESETS:
        channels = AUTOENCODER_PRESETS[meta.latent.autoencoder]["block_out_channels"]
    else:
        return load_autoencoder(meta.latent.autoencoder).downsample
    return 2 ** (len(channels) - 1)


def geometry(cfg: RegionConfig, bundle: Path, meta) -> Geometry:
    """Windows of the model's latent size every --stride, decode tiles; a stride over a window is a UserError."""
    window = meta.latent.size
    stride = cfg.stride or max(1, window // 2)
    if stride > window:
        raise UserError(f"--stride {stride}: larger than the model's latent size {window} (windows would leave gaps)")
    tile = cfg.decode_tile or window
    return Geometry(window, stride, autoencoder_factor(bundle, meta), tile, cfg.decode_stride or max(1, tile // 2))


def region_specs(cfg: RegionConfig, geo: Geometry) -> list[RegionSpec]:
    """Every region asked for, each map checked against its window grid: all before any model loads."""

    def spec(
        region_id: str, summary: str, map_path: Path | None, level: str | None, size: int, where: str
    ) -> RegionSpec:
        geo.check_size(size, where)
        grid = geo.grid(size)
        shape = (len(grid), len(grid[0]))
        label_map = (
            read_label_map(map_path, cfg.levels) if map_path is not None else constant_map(level, cfg.levels, shape)
        )
        what = (
            f"a {size} px region (windows of {geo.window * geo.factor} px every {geo.stride * geo.factor} px, "
            "the last one at the edge)"
        )
        check_map_shape(label_map, shape, what)
        return RegionSpec(region_id, summary, label_map, size)

    if cfg.regions is None:
        return [
            spec(f"{k:06d}", cfg.summary, cfg.label_map, cfg.level, cfg.size, "--size")
            for k in range(1, cfg.num_regions + 1)
        ]
    specs, seen = [], set()
    for n, rec in enumerate(read_jsonl(cfg.regions), 1):
        where = f"{cfg.regions} line {n}"
        if "id" not in rec:
            raise UserError(f"{where}: no id")
        region_id = str(rec["id"])
        if safe_file_stem(region_id) in seen:
            raise UserError(f"{where}: id {region_id!r} given twice (or two ids with the same file name)")
        seen.add(safe_file_stem(region_id))
        map_path = Path(cfg.regions).parent / rec["label_map"] if rec.get("label_map") else None
        level = rec.get("level") or (None if map_path else cfg.level)
        if map_path is None and level is None:
            map_path = cfg.label_map
        if map_path is None and level is None:
            raise UserError(f"{where}: neither label_map nor level (and no --label-map or --level to fall back on)")
        specs.append(
            spec(
                region_id, str(rec.get("summary", cfg.summary)), map_path, level, int(rec.get("size", cfg.size)), where
            )
        )
    if not specs:
        raise UserError(f"{cfg.regions}: no regions")
    return specs


def _index_files(out: Path) -> list[Path]:
    return [p for p in [out / "index.jsonl", *sorted(out.glob("index.shard*.jsonl"))] if p.is_file()]


def finished_regions(out: Path) -> dict[str, dict]:
    """id -> index record, for regions whose line and TIFF both exist."""
    done: dict[str, dict] = {}
    for path in _index_files(out):
        for rec in read_jsonl(path):
            if (out / rec["file"]).is_file():
                done[rec["id"]] = rec
    return done


class RegionSampler:
    """A loaded patch sampler (models, text source) and the region geometry; `__call__` makes one region."""

    def __init__(self, cfg: RegionConfig, geo: Geometry, model, numerics):
        self.cfg, self.geo, self.model, self.numerics = (
            cfg,
            geo,
            model,
            numerics,
        )  # model: histoldm.sampling.run.ImageSampler

    @classmethod
    def load(cls, cfg: RegionConfig, bundle: Path, meta, geo: Geometry, captions: list[str]) -> RegionSampler:
        device = resolve_device(cfg.device)
        numerics = sampling_numerics(cfg.numerics, cfg.dtype, device)
        return cls(cfg, geo, ImageSampler.load(cfg.sample_config(), bundle, meta, device, numerics, captions), numerics)

    def _guided(self, captions: list[str], context_of: dict[str, torch.Tensor], uncond: torch.Tensor):
        """The guided denoiser of one batch of windows, its contexts stacked only while it runs: kept for
        every batch of a 4,096 px region they would take gigabytes (64 windows x 154 tokens x 768 floats)."""
        cfg, m = self.cfg, self.model

        def eps_fn(x: torch.Tensor, t: int) -> torch.Tensor:
            cond = torch.stack([context_of[caption] for caption in captions])
            return classifier_free_guidance(m.eps_fn, cond, uncond, cfg.guidance, cfg.guidance_interval)(x, t)

        return eps_fn

    @torch.no_grad()
    def __call__(self, spec: RegionSpec, seed: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB of one region."""
        cfg, geo, m = self.cfg, self.geo, self.model
        grid = geo.grid(spec.size)
        windows = [
            (w, window_caption(cfg.template, spec.label_map, i, j, spec.summary))
            for i, row in enumerate(grid)
            for j, w in enumerate(row)
        ]
        unique = sorted({caption for _, caption in windows})
        contexts, _ = m.text.encode(unique)
        context_of = dict(zip(unique, contexts.to(m.device)))
        uncond = m.text.uncond.to(m.device)
        groups = [
            ([w for w, _ in batch], self._guided([caption for _, caption in batch], context_of, uncond))
            for batch in (windows[b : b + cfg.batch_size] for b in range(0, len(windows), cfg.batch_size))
        ]
        side = spec.size // geo.factor
        eps_fn = blended_eps_fn(groups, geo.window, side, side)
        noise = torch.randn(
            (m.latent_shape[0], side, side), generator=torch.Generator().manual_seed(seed), dtype=torch.float32
        )
        solve = make_solver(cfg.solver, eta=cfg.eta)
        autocast = self.numerics.autocast
        with torch.autocast(m.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            latents = solve(eps_fn, noise[None].to(m.device), cfg.steps, generators=image_generators([seed]))
        quantize = "taming" if self.numerics.profile == "pathldm" else "diffusers"
        image = decode_tiled(
            lambda z: decode(m.ae, z, quantize=quantize),
            latents.float() / m.scaling_factor,
            geo.factor,
            geo.decode_tile,
            geo.decode_stride,
            cfg.decode_batch,
            finish=lambda band: to_uint8(band, self.numerics.truncate),
        )
        return image.permute(1, 2, 0).contiguous().numpy()


def preview_png(image: np.ndarray, max_side: int) -> bytes:
    picture = Image.fromarray(image)
    scale = min(1.0, max_side / max(picture.size))
    if scale < 1.0:
        picture = picture.resize(
            (max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), Image.BOX
        )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class RegionResult:
    """`histoldm sample-region`: the folder, and the regions finished in it (all shards) and by this run."""

    out: Path
    bundle: Path
    n_regions: int
    finished: int
    n_new: int
    seconds_per_region: float | None


def _pixel_settings(cfg: RegionConfig, bundle: Path, meta, geo, numerics) -> dict[str, Any]:
    """What decides a region's pixels besides its map, summary and seed: a folder holds regions of one set."""
    return {
        "bundle": str(bundle.resolve()),
        "weights": f"{meta.source}@{meta.trained_steps}",
        "template": cfg.template,
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "guidance_interval": list(cfg.guidance_interval) if cfg.guidance_interval else None,
        "solver": cfg.solver,
        "eta": cfg.eta,
        "seed": cfg.seed,
        "stride": geo.stride,
        "decode_tile": geo.decode_tile,
        "decode_stride": geo.decode_stride,
        "mpp": cfg.mpp,
        "dtype": dtype_name(numerics.weights),
        "numerics": numerics.record(),
    }


def _pending(out: Path, specs: list[RegionSpec], shard: tuple[int, int] | None) -> list[RegionSpec]:
    """This shard's regions not finished yet; an id finished with another map, summary or size is an error."""
    done = finished_regions(out)
    changed = [
        s.id
        for s in specs
        if s.id in done
        and (done[s.id]["map"], done[s.id]["summary"], done[s.id]["size"])
        != ([list(row) for row in s.label_map.cells], s.summary, s.size)
    ]
    if changed:
        raise UserError(
            f"{out}: {len(changed)} regions were made with another map, summary or size under the same ids "
            f"(first: {changed[0]}); use a new --out"
        )
    mine = [s for k, s in enumerate(specs) if shard is None or k % shard[1] == shard[0]]
    return [s for s in mine if s.id not in done]


def _window_captions(cfg: RegionConfig, specs: list[RegionSpec]) -> list[str]:
    """Every window caption of these regions, once each (the text encoder's work)."""
    return sorted(
        {
            window_caption(cfg.template, s.label_map, i, j, s.summary)
            for s in specs
            for i in range(s.label_map.shape[0])
            for j in range(s.label_map.shape[1])
        }
    )


def _write_region(
    out: Path, index: Path, spec: RegionSpec, seed: int, image: np.ndarray, cfg: RegionConfig, geo, settings
) -> None:
    """One region's preview and pyramidal TIFF, then its index line: an index line always points at whole files."""
    stem = safe_file_stem(spec.id)
    record = {
        "id": spec.id,
        "file": f"regions/{stem}.tiff",
        "preview": f"previews/{stem}.png",
        "seed": seed,
        "size": spec.size,
        "template": cfg.template,
        "summary": spec.summary,
        "map_source": spec.label_map.source,
        "map": [list(row) for row in spec.label_map.cells],
        "window_px": geo.window * geo.factor,
        "stride_px": geo.stride * geo.factor,
        "decode_tile_px": geo.decode_tile * geo.factor,
        "decode_stride_px": geo.decode_stride * geo.factor,
        "mpp": cfg.mpp,
        "settings": settings,
    }
    atomic_write_bytes(out / record["preview"], preview_png(image, cfg.preview_size))
    description = json.dumps({k: record[k] for k in ("id", "seed", "template", "summary", "map")})
    atomic_write_bytes(out / record["file"], pyramid_tiff_bytes(image, cfg.mpp, description))
    append_jsonl(index, [record])


def run_sample_region(cfg: RegionConfig) -> RegionResult:
    """Make every region of this shard not yet finished in cfg.out (module docstring)."""
    started = time.time()
    bundle = resolve_bundle(cfg.checkpoint)
    meta = read_bundle_meta(bundle)
    geo = geometry(cfg, bundle, meta)
    specs = region_specs(cfg, geo)
    out = require_output_folder(Path(cfg.out))
    out.mkdir(parents=True, exist_ok=True)
    numerics = sampling_numerics(cfg.numerics, cfg.dtype, resolve_device(cfg.device))
    settings = _pixel_settings(cfg, bundle, meta, geo, numerics)
    # Work: one set of settings per folder; this shard's regions not finished yet.
    record_or_check_settings(out / "settings.json", settings, f"{out}: folder holds regions made with other settings")
    if cfg.shard is None:  # no other job writes here: the temp files of a killed run can go
        remove_stale_temps(out)
    pending = _pending(out, specs, cfg.shard)
    index = out / ("index.jsonl" if cfg.shard is None else f"index.shard{cfg.shard[0]}-of-{cfg.shard[1]}.jsonl")

    # Sample: models are loaded only when there is something to do; each region's files, then its index line.
    sampler = RegionSampler.load(cfg, bundle, meta, geo, _window_captions(cfg, pending)) if pending else None
    seconds = []
    for spec in tqdm(pending, desc="regions", unit="region", disable=not pending):
        t0 = time.time()
        seed = image_seed(cfg.seed, spec.id)
        _write_region(out, index, spec, seed, sampler(spec, seed), cfg, geo, settings)
        seconds.append(time.time() - t0)

    # Finish: the manifest of this shard (or of the whole folder).
    done = finished_regions(out)
    finished = sum(s.id in done for s in specs)
    write_manifest(
        out / ("manifest.json" if cfg.shard is None else f"manifest.shard{cfg.shard[0]}-of-{cfg.shard[1]}.json"),
        stage="sample-region",
        config=cfg,
        inputs={"checkpoint": bundle, "label_map": cfg.label_map, "regions": cfg.regions, "text_cache": cfg.text_cache},
        produced={"regions": finished, "new": len(pending), "seconds": seconds},
        started=started,
        seed=cfg.seed,
        extra={"settings": settings},
    )
    return RegionResult(out, bundle, len(specs), finished, len(pending), float(np.mean(seconds)) if seconds else None)
