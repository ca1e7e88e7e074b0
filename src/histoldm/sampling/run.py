"""`histoldm sample`: captions in, one PNG per caption out; deterministic, resumable, sharded.

    OUT/images/<k // 1000:03d>/<id>.png   k = the item's position in the caption list
    OUT/index.jsonl                       {id, caption, seed, file, truncated}, appended per finished batch
    OUT/index.rank<i>.jsonl               the same, per process under `accelerate launch` (merged at the end)
    OUT/settings.json                     what decides the pixels; resuming with other settings is an error
    OUT/grid.png                          all images in one picture, for small runs
    OUT/manifest.json

Each image has its own generator seeded from (seed, id), so an image does not depend on the batch
size, the number of processes or which run produced it. Process i of N takes items i, i+N, ...
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from tqdm import tqdm

from histoldm.devices import SamplingNumerics, dtype_name, resolve_device, sampling_numerics
from histoldm.errors import UserError
from histoldm.fileio import (
    append_jsonl,
    atomic_write_bytes,
    jsonl_text,
    read_jsonl,
    record_or_check_settings,
    remove_stale_temps,
)
from histoldm.manifest import write_manifest
from histoldm.models.autoencoder import decode, load_autoencoder
from histoldm.models.bundle import META_FILE, load_bundle_unet, read_bundle_meta
from histoldm.models.speed import compile_unet
from histoldm.sampling.captions_io import CaptionItem, read_caption_items, safe_file_stem
from histoldm.sampling.config import SampleConfig
from histoldm.sampling.consistency import student_eps_fn
from histoldm.sampling.context import open_text_source
from histoldm.sampling.guidance import classifier_free_guidance, unet_eps_fn
from histoldm.sampling.solvers import image_generators, make_solver, training_alphas_cumprod

if TYPE_CHECKING:
    from histoldm.models.autoencoder import Autoencoder
    from histoldm.sampling.context import TextSource
    from histoldm.sampling.guidance import ContextEpsFn

GRID_MAX = 64  # a grid of more images is too large to look at


def resolve_bundle(checkpoint: Path) -> Path:
    """The bundle folder for a bundle or a run folder; a missing one is a UserError."""
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise UserError(f"{checkpoint}: checkpoint not found")
    for folder in (checkpoint, checkpoint / "model"):
        if (folder / META_FILE).is_file():
            return folder
    raise UserError(
        f"{checkpoint}: neither a model bundle ({META_FILE}) nor a training run with model/ (training unfinished?)"
    )


def check_solver_fits_bundle(bundle: Path, meta, solver: str, guidance: float) -> None:
    """A student samples only with consistency steps, a teacher never: the other pairing gives noise."""
    if solver == "lcm" and meta.distilled is None:
        raise UserError(
            f"{bundle}: a teacher bundle (no distilled sampler); --preset turbo needs a student made by "
            "`histoldm distill`"
        )
    if solver != "lcm" and meta.distilled is not None:
        raise UserError(
            f"{bundle}: a distilled student samples only with --preset turbo (--solver lcm), not --solver {solver}"
        )
    if (
        meta.distilled is not None
        and not meta.distilled.guidance_range[0] <= guidance <= meta.distilled.guidance_range[1]
    ):
        lo, hi = meta.distilled.guidance_range
        raise UserError(
            f"{bundle}: --guidance {guidance} is outside the scales this student was distilled for ({lo}-{hi})"
        )


def image_seed(seed: int, item_id: str) -> int:
    """A 63-bit seed per image from (run seed, id): independent of order, batch and process."""
    digest = hashlib.sha256(f"{seed}\n{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def image_file(k: int, item_id: str) -> str:
    return f"images/{k // 1000:03d}/{safe_file_stem(item_id)}.png"


def initial_noise(seeds: list[int], shape: tuple[int, int, int]) -> torch.Tensor:
    """(B, C, H, W) float32 noise on the CPU, one generator per image."""
    return torch.stack(
        [torch.randn(shape, generator=torch.Generator().manual_seed(s), dtype=torch.float32) for s in seeds]
    )


def to_uint8(image: torch.Tensor, truncate: bool = False) -> torch.Tensor:
    """(3, H, W) in [-1, 1] -> (3, H, W) uint8 on the CPU, rounded; `truncate` as PathLDM writes its
    samples ((x + 1) / 2 * 255, cast to 8 bits: on average half a level darker than rounding)."""
    if truncate:
        return ((image.float().clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8).cpu()
    return ((image.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def png_bytes(image: torch.Tensor, truncate: bool = False) -> bytes:
    """(3, H, W) in [-1, 1] -> PNG bytes (8-bit RGB)."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image, truncate).permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def _index_files(out: Path) -> list[Path]:
    return [p for p in [out / "index.jsonl", *sorted(out.glob("index.rank*.jsonl"))] if p.is_file()]


def finished_records(out: Path) -> dict[str, dict]:
    """id -> index record, for images whose index line and PNG both exist (the last line wins)."""
    records: dict[str, dict] = {}
    for path in _index_files(out):
        for rec in read_jsonl(path):
            if (out / rec["file"]).is_file():
                records[rec["id"]] = rec
    return records


def _finalise_index(out: Path, items: list[CaptionItem]) -> list[dict]:
    """Rewrite index.jsonl as one line per finished image in caption order; drop per-process files."""
    records = finished_records(out)
    order = {item.id: k for k, item in enumerate(items)}
    ordered = sorted(records.values(), key=lambda r: (order.get(r["id"], len(order)), r["id"]))
    text = jsonl_text(ordered)
    index = out / "index.jsonl"
    if not index.is_file() or index.read_text(encoding="utf-8") != text:
        atomic_write_bytes(index, text.encode("utf-8"))
    for path in out.glob("index.rank*.jsonl"):
        path.unlink()
    return ordered


def write_grid(out: Path, files: list[str]) -> Path:
    """All images tiled in rows of ceil(sqrt(n)), in caption order."""
    images = [Image.open(out / f).convert("RGB") for f in files]
    w, h = images[0].size
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, image in enumerate(images):
        grid.paste(image, ((i % cols) * w, (i // cols) * h))
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    atomic_write_bytes(out / "grid.png", buffer.getvalue())
    return out / "grid.png"


def _resolve_device_dtype(cfg: SampleConfig):
    from accelerate import PartialState

    resolve_device(cfg.device)  # refuses CUDA on a machine without it
    state = PartialState(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != state.num_processes:  # each process would think it is alone and redo all the work
        raise UserError(
            f"sample: launched as {launched} processes, but accelerate set up {state.num_processes} "
            f"({state.distributed_type})"
        )
    device = state.device
    return state, device, sampling_numerics(cfg.numerics, cfg.dtype, device)


def _load_models(bundle: Path, meta, device: torch.device, dtype: torch.dtype, cfg: SampleConfig):
    """The bundle's UNet (its stored weights are the EMA ones when training kept an EMA) and autoencoder."""
    unet = load_bundle_unet(bundle).to(device).eval().requires_grad_(False)
    if dtype != torch.float32:
        unet = unet.to(dtype)
    if device.type == "cuda" and cfg.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    ae_spec = (
        str(bundle / "autoencoder") if (bundle / "autoencoder" / "config.json").is_file() else meta.latent.autoencoder
    )
    if not ae_spec:
        raise UserError(f"{bundle}: bundle has no autoencoder/ and its meta names none")
    ae = load_autoencoder(ae_spec, device=device)
    if meta.latent.fingerprint and ae.fingerprint != meta.latent.fingerprint:
        raise UserError(
            f"{bundle}: checkpoint trained on latents of autoencoder fingerprint {meta.latent.fingerprint[:12]}, "
            f"{ae_spec} has {ae.fingerprint[:12]}"
        )
    if cfg.compile:
        unet = compile_unet(unet, cfg.compile_mode, tuning=cfg.compile_tuning)
    return unet, ae


@dataclass
class ImageSampler:
    """Captions and per-image seeds in, images in [-1, 1] out: text -> noise -> solver -> decoder."""

    cfg: SampleConfig
    text: TextSource
    eps_fn: ContextEpsFn
    ae: Autoencoder
    latent_shape: tuple[int, int, int]
    scaling_factor: float
    device: torch.device
    numerics: SamplingNumerics
    solver_steps: int | None = None  # a student's distillation grid (consistency sampling); None for a teacher

    @classmethod
    def load(
        cls,
        cfg: SampleConfig,
        bundle: Path,
        meta,
        device: torch.device,
        numerics: SamplingNumerics,
        captions: list[str],
    ) -> ImageSampler:
        text = open_text_source(
            bundle,
            meta,
            text_encoder=cfg.text_encoder,
            text_cache=cfg.text_cache,
            device=device,
            dtype=numerics.text_dtype,
            captions=captions,
        )
        if numerics.profile == "pathldm" and cfg.text_cache is not None and text.cache.meta.get("dtype") != "float32":
            raise UserError(
                f"{cfg.text_cache}: text cache encoded in {text.cache.meta.get('dtype')}; "
                "numerics pathldm needs float32 (encode-text --numerics pathldm)"
            )
        unet, ae = _load_models(bundle, meta, device, numerics.weights, cfg)
        if meta.distilled is not None:
            eps_fn = student_eps_fn(
                unet,
                meta.prediction_type,
                training_alphas_cumprod().to(device),
                cfg.guidance,
                meta.distilled.embedding_dim,
            )
        else:
            eps_fn = unet_eps_fn(unet, meta.prediction_type, training_alphas_cumprod().to(device))
        shape = (meta.latent.channels, meta.latent.size, meta.latent.size)
        solver_steps = meta.distilled.solver_steps if meta.distilled is not None else None
        return cls(cfg, text, eps_fn, ae, shape, meta.latent.scaling_factor, device, numerics, solver_steps)

    @torch.no_grad()
    def __call__(self, captions: list[str], seeds: list[int]) -> tuple[torch.Tensor, list[bool]]:
        """(B, 3, H, W) images on the CPU, and which captions the encoder truncated."""
        cfg = self.cfg
        context, truncated = self.text.encode(captions)
        context = context.to(self.device)
        if self.solver_steps is not None:  # a student's guidance is an input: one conditional pass per step
            eps_fn = functools.partial(self.eps_fn, context=context)
        else:
            uncond = self.text.uncond.to(self.device)
            eps_fn = classifier_free_guidance(self.eps_fn, context, uncond, cfg.guidance, cfg.guidance_interval)
        solve = make_solver(cfg.solver, eta=cfg.eta, solver_steps=self.solver_steps)
        x = initial_noise(seeds, self.latent_shape).to(self.device)
        autocast = self.numerics.autocast
        with torch.autocast(self.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            latents = solve(eps_fn, x, cfg.steps, generators=image_generators(seeds))
        latents = latents.float() / self.scaling_factor
        quantize = (
            "taming" if self.numerics.profile == "pathldm" else "diffusers"
        )  # VQ near-ties: taming's argmin, as PathLDM
        images = [decode(self.ae, chunk, quantize=quantize).cpu() for chunk in latents.split(cfg.decode_batch)]
        return torch.cat(images), truncated


@dataclass(frozen=True)
class SampleResult:
    """`histoldm sample`, on the main process: counts over the whole folder and this run."""

    out: Path
    bundle: Path
    n_items: int  # captions asked for
    images: int  # finished images of those captions in the folder
    n_new: int  # made by this run (the main process's share)
    n_truncated: int  # finished images whose caption the encoder truncated
    n_truncated_new: int  # of those made by this run
    skipped: int  # input rows skipped (listed in the manifest)
    grid: Path | None


def _pixel_settings(cfg: SampleConfig, bundle: Path, meta, numerics: SamplingNumerics) -> dict[str, Any]:
    """What decides an image's pixels besides its caption and seed: a folder holds images of one set of them."""
    return {
        "bundle": str(bundle.resolve()),
        "weights": f"{meta.source}@{meta.trained_steps}",  # a re-export after more training is another model
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "guidance_interval": list(cfg.guidance_interval) if cfg.guidance_interval is not None else None,
        "solver": cfg.solver,
        "eta": cfg.eta,
        "seed": cfg.seed,
        "dtype": dtype_name(numerics.weights),
        "numerics": numerics.record(),
    }


def _pending(out: Path, items: list[CaptionItem], rank: int, world: int) -> list[tuple[int, CaptionItem]]:
    """This process's share of the items (k, item), minus those an earlier run finished; an id finished for
    another caption is an error (the folder would mix two captions under one id)."""
    done = finished_records(out)
    stale = [item.id for item in items if item.id in done and done[item.id]["caption"] != item.caption]
    if stale:
        raise UserError(
            f"{out}: {len(stale)} images were made for other captions under the same ids (first: {stale[0]}); "
            "use a new --out"
        )
    return [(k, item) for k, item in enumerate(items) if k % world == rank and item.id not in done]


def _write_images(out: Path, index_path: Path, batch, seeds: list[int], images, truncated, truncate: bool) -> None:
    """One batch's PNGs, then their index lines: an index line always points at a whole file."""
    records = []
    for (k, item), seed, image, cut in zip(batch, seeds, images, truncated):
        file = image_file(k, item.id)
        atomic_write_bytes(out / file, png_bytes(image, truncate))
        records.append({"id": item.id, "caption": item.caption, "seed": seed, "file": file, "truncated": bool(cut)})
    append_jsonl(index_path, records)


def _finish(
    cfg: SampleConfig,
    out: Path,
    bundle: Path,
    items: list[CaptionItem],
    skipped: list,
    settings: dict[str, Any],
    counts: tuple[int, int, int],
    started: float,
) -> SampleResult:
    """One index in caption order, a grid for small runs, the manifest (the main process, once all are done).
    `counts`: this run's images and truncated captions (main process) and the number of processes."""
    n_new, n_truncated, processes = counts
    records = _finalise_index(out, items)
    wanted = {item.id for item in items}
    finished = [r for r in records if r["id"] in wanted]
    grid = (
        write_grid(out, [r["file"] for r in finished])
        if len(items) <= GRID_MAX and len(finished) == len(items)
        else None
    )
    truncated_captions = [r["caption"] for r in finished if r.get("truncated")]
    produced = {
        "images": len(finished),
        "new_this_run_main_process": n_new,
        "processes": processes,
        "truncated_captions": len(truncated_captions),
        "grid": str(grid) if grid else None,
        "solver": cfg.solver,
        "steps": cfg.steps,
        "guidance_interval": cfg.guidance_interval,
    }
    write_manifest(
        out / "manifest.json",
        stage="sample",
        config=cfg,
        inputs={"checkpoint": bundle, "captions": cfg.captions, "split": cfg.split, "text_cache": cfg.text_cache},
        produced=produced,
        started=started,
        seed=cfg.seed,
        skipped=skipped,
        extra={
            "settings": settings,
            "truncated": {"count": len(truncated_captions), "first": [c[:200] for c in truncated_captions[:20]]},
        },
    )
    return SampleResult(
        out, bundle, len(items), len(finished), n_new, len(truncated_captions), n_truncated, len(skipped), grid
    )


def run_sample(cfg: SampleConfig) -> SampleResult | None:
    """Sample every caption not yet in cfg.out (see the module docstring); under `accelerate launch`
    the main process returns the counts, the others None."""
    started = time.time()
    bundle = resolve_bundle(cfg.checkpoint)
    meta = read_bundle_meta(bundle)
    check_solver_fits_bundle(bundle, meta, cfg.solver, cfg.guidance)
    items, skipped = read_caption_items(
        cfg.captions, prompt=cfg.prompt, num_images=cfg.num_images, split=cfg.split, split_name=cfg.split_name
    )
    state, device, numerics = _resolve_device_dtype(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = _pixel_settings(cfg, bundle, meta, numerics)
    mismatch = f"{out / 'settings.json'}: folder holds images made with other settings"
    record_or_check_settings(out / "settings.json", settings, mismatch, record=state.is_main_process)
    if state.is_main_process:  # before any process writes: PNGs a killed run was writing
        remove_stale_temps(out)
    state.wait_for_everyone()

    # Work: this process's share of the items, minus those already finished by any earlier run.
    pending = _pending(out, items, state.process_index, state.num_processes)
    index_path = out / ("index.jsonl" if state.num_processes == 1 else f"index.rank{state.process_index}.jsonl")

    # Sample: models are loaded only when there is something to do.
    sampler = (
        ImageSampler.load(cfg, bundle, meta, device, numerics, [item.caption for _, item in pending])
        if pending
        else None
    )
    n_truncated = 0
    show = bool(pending) and state.is_main_process  # img/s and ETA of the main process's share
    bar = tqdm(
        total=len(pending),
        unit="img",
        desc=f"sample[{state.process_index}/{state.num_processes}]",
        disable=not show,
        smoothing=0.1,
    )
    for b in range(0, len(pending), cfg.batch_size):
        batch = pending[b : b + cfg.batch_size]
        seeds = [image_seed(cfg.seed, item.id) for _, item in batch]
        images, truncated = sampler([item.caption for _, item in batch], seeds)
        n_truncated += sum(truncated)
        _write_images(out, index_path, batch, seeds, images, truncated, numerics.truncate)
        bar.update(len(batch))
    bar.close()

    # Finish: one index in caption order, a grid for small runs, the manifest (main process only).
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    counts = (len(pending), n_truncated, state.num_processes)
    return _finish(cfg, out, bundle, items, skipped, settings, counts, started)
