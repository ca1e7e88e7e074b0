"""`histoldm distill`: a trained bundle (the teacher) -> a few-step student bundle, by latent consistency
distillation (histoldm.train.consistency), on the trainer's machinery.

The loop is train's: caches only (latents and caption-embedding rows), accelerate (CPU, one GPU, DDP),
fp32 master weights under autocast, per-micro-batch draws from generators seeded by (seed, micro-batch
position, rank, stream), the data order from (seed, epoch), checkpoints that resume bit for bit (the EMA
slot holds the consistency target). The student bundle records in its metadata how it samples
(`histoldm sample --preset turbo`). See docs/training.md ("Distillation") for why consistency distillation.
"""

from __future__ import annotations

import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from histoldm.devices import dtype_name, training_memory_format
from histoldm.errors import UserError
from histoldm.fileio import append_jsonl
from histoldm.manifest import write_manifest
from histoldm.models.bundle import META_FILE, BundleMeta, DistilledSampling, load_bundle_unet, read_bundle_meta
from histoldm.models.student import make_student
from histoldm.sampling.run import resolve_bundle
from histoldm.train.config import DistillConfig
from histoldm.train.consistency import ConsistencyDistillation
from histoldm.train.data import BatchRecipe, LatentTextDataset, Stream, TextTable, crop_window, micro_batches
from histoldm.train.ema import EMA
from histoldm.train.latents import LatentCache
from histoldm.train.loop import (
    LossWindow,
    Session,
    TrainingState,
    batch_recipe,
    caption_table,
    is_due,
    make_loader,
    make_optimizer,
    peak_memory,
    start_session,
)
from histoldm.train.run_folder import cache_contract, cache_inputs, check_contract, export_bundle, write_run_folder


@dataclass(frozen=True)
class DistillResult:
    """`histoldm distill`, on every process."""

    run_dir: Path
    bundle: Path  # RUN/model: the student bundle
    steps: int
    seconds: float  # wall time of this session's steps
    img_s: float | None  # mean distillation throughput over the logging windows after the first
    processes: int


def distill_contract(cfg: DistillConfig, teacher_meta: BundleMeta, latent_meta: dict, text_meta: dict) -> dict:
    """What a resumed distillation must share with the run it continues: teacher, student form, caches."""
    return {
        "teacher": {
            "source": teacher_meta.source,
            "trained_steps": teacher_meta.trained_steps,
            "unet_preset": teacher_meta.unet_preset,
            "prediction_type": teacher_meta.prediction_type,
        },
        "student": cfg.model_dump(
            mode="json", include={"solver_steps", "guidance_range", "embedding_dim", "target_decay", "loss"}
        ),
        **cache_contract(latent_meta, text_meta),
    }


def check_caches_fit_teacher(cfg: DistillConfig, teacher_meta: BundleMeta, latent_meta: dict, text_meta: dict) -> None:
    """The caches must be the ones the teacher learnt from (same autoencoder and text encoder)."""
    if teacher_meta.distilled is not None:
        raise UserError(f"{cfg.teacher}: already a distilled student; distil a teacher bundle made by `histoldm train`")
    if teacher_meta.latent.fingerprint and latent_meta.get("fingerprint") != teacher_meta.latent.fingerprint:
        raise UserError(
            f"{cfg.data.latents}: latents of another autoencoder than the teacher's "
            f"(fingerprint {str(latent_meta.get('fingerprint'))[:12]})"
        )
    if teacher_meta.text.fingerprint and text_meta.get("fingerprint") != teacher_meta.text.fingerprint:
        raise UserError(f"{cfg.data.text_cache}: caption embeddings of another text encoder than the teacher's")


def student_meta(cfg: DistillConfig, teacher_meta: BundleMeta, teacher: Path, step: int, source: str) -> BundleMeta:
    """The teacher's bundle metadata, marked distilled with how the student samples."""
    distilled = DistilledSampling(
        solver_steps=cfg.solver_steps,
        guidance_range=cfg.guidance_range,
        embedding_dim=cfg.embedding_dim,
        teacher=f"{teacher.resolve()}@{teacher_meta.trained_steps}",
    )
    return teacher_meta.model_copy(update={"distilled": distilled, "trained_steps": step, "source": source})


def export_student(folder: Path, meta: BundleMeta, unet: torch.nn.Module, target_ema: EMA, teacher: Path) -> None:
    """The target's weights as a bundle, with the teacher's autoencoder / text encoder folders beside them."""
    (folder / META_FILE).unlink(missing_ok=True)
    for part in ("autoencoder", "text_encoder"):
        if (teacher / part).is_dir():
            shutil.rmtree(folder / part, ignore_errors=True)
            shutil.copytree(teacher / part, folder / part)
    export_bundle(folder, meta, unet, target_ema)


def _check_window(cfg: DistillConfig, window: int, teacher_meta: BundleMeta) -> None:
    """The student samples the teacher's latent size: a crop must give the teacher's window."""
    size = teacher_meta.latent.size
    if window != size:
        raise UserError(
            f"{cfg.data.latents}: {window}x{window} latents (data.crop {cfg.data.crop}) but the teacher samples "
            f"{size}x{size}"
        )


def _open_caches(cfg: DistillConfig, teacher_meta: BundleMeta) -> tuple[LatentCache, TextTable, LatentTextDataset, int]:
    """The teacher's caches, checked against its bundle: latents, text table, training pairs, the crop window."""
    latents, text = LatentCache.open(cfg.data.latents), TextTable(cfg.data.text_cache)
    check_caches_fit_teacher(cfg, teacher_meta, latents.meta, text.meta)
    window = crop_window(latents.meta, cfg.data.crop)
    _check_window(cfg, window, teacher_meta)
    dataset = LatentTextDataset(latents, text, cfg.data.captions, cfg.data.split, cfg.data.split_name)
    return latents, text, dataset, window


def _load_models(teacher_dir: Path, embedding_dim: int, device: torch.device, memory_format: torch.memory_format):
    """The frozen teacher, the student (teacher + zero guidance projection) training, and the frozen copy of
    the student that holds its EMA target. Returns (teacher, student, target)."""
    teacher = load_bundle_unet(teacher_dir).to(device, memory_format=memory_format).eval().requires_grad_(False)
    unet = make_student(teacher, embedding_dim).to(device, memory_format=memory_format).train()
    target = make_student(teacher, embedding_dim).to(device, memory_format=memory_format)
    return teacher, unet, target.eval().requires_grad_(False)


def _batch_recipe(
    cfg: DistillConfig, session: Session, window: int, memory_format: torch.memory_format, text: TextTable
) -> BatchRecipe:
    """Train's micro-batches without guidance dropout (the objective draws each sample's guidance scale);
    flips and the objective's draws have streams of their own."""
    return batch_recipe(
        cfg,
        session,
        window,
        memory_format,
        text.uncond_row,
        uncond_prob=None,
        noise_stream=Stream.CONSISTENCY,
        flips_stream=Stream.FLIPS,
    )


def _log(session: Session, step: int, loss: float, lr: float, img_s: float) -> None:
    """One line of stats.jsonl, on the main process."""
    if session.is_main:
        record = {"step": step, "loss": loss, "lr": lr, "img_s": img_s, "time": time.time()}
        append_jsonl(session.run_dir / "stats.jsonl", [record])


def _write_manifest(
    cfg: DistillConfig, session: Session, teacher_dir: Path, pairs: int, step: int, times: tuple, img_s: float | None
) -> None:
    """The run manifest beside the student bundle, on the main process; `times`: (started, this session's
    seconds)."""
    started, seconds = times

    write_manifest(
        session.run_dir / "manifest.json",
        stage="distill",
        config=cfg,
        seed=cfg.seed,
        started=started,
        inputs={"teacher": teacher_dir, **cache_inputs(cfg.data, session.resume_from)},
        produced={
            "steps": step,
            "bundle": str(session.run_dir / "model"),
            "pairs": pairs,
            "seconds_this_session": round(seconds, 2),
        },
        extra={
            "peak_memory": peak_memory(session.device),
            "img_s": img_s,
            "processes": session.accelerator.num_processes,
            "precision": dtype_name(session.dtype),
        },
    )


def run_distill(cfg: DistillConfig) -> DistillResult:
    """Distil the teacher into a few-step student (module docstring); a re-run resumes by itself."""
    from accelerate.utils import set_seed

    started = time.time()

    # Inputs: the teacher's bundle and the caches, every contract checked before any compute.
    teacher_dir = resolve_bundle(cfg.teacher)
    teacher_meta = read_bundle_meta(teacher_dir)
    latents, text, dataset, window = _open_caches(cfg, teacher_meta)

    # Processes and run folder: every rank agrees on the folder rank 0 chose; a resume keeps the contract.
    session = start_session(cfg, "distill", dataset)
    accelerator, device = session.accelerator, session.device
    contract = distill_contract(cfg, teacher_meta, latents.meta, text.meta)
    check_contract(session.resume_from, contract)
    if session.is_main:
        write_run_folder(session.run_dir, cfg, contract)

    # Models: the frozen teacher, the student (teacher + zero guidance projection), its EMA target.
    set_seed(cfg.seed)
    memory_format = training_memory_format(None, device)
    teacher, unet, target = _load_models(teacher_dir, cfg.embedding_dim, device, memory_format)
    optimizer, lr_scheduler, schedule = make_optimizer(unet, cfg.optim, cfg.max_steps, session.on_gpu)
    target_ema = EMA(unet, cfg.target_decay)
    objective = ConsistencyDistillation(
        teacher_meta.prediction_type, cfg.solver_steps, cfg.guidance_range, cfg.embedding_dim, cfg.loss, device
    )
    table = caption_table(text, cfg.data.preload_text, session)
    uncond = table[text.uncond_row : text.uncond_row + 1].to(device).float()

    # Resume: student, target, optimizer, schedule, scaler, RNG and data position.
    model, optimizer = accelerator.prepare(unet, optimizer)
    state = TrainingState(unet, target_ema, optimizer, lr_scheduler, schedule)
    resumed = state.resume(session, "distill") if session.resume_from is not None else {}
    step, data_position = resumed.get("step", 0), resumed.get("data_position", 0)
    target_params = list(target.parameters())
    torch._foreach_copy_(target_params, target_ema.shadow)

    # Data: train's micro-batches without guidance dropout; flips and the objective draw from their own streams.
    loader = make_loader(dataset, cfg.batch_size, cfg.seed, cfg.data.workers, session, data_position)
    batches = micro_batches(loader, table, _batch_recipe(cfg, session, window, memory_format, text), data_position)
    session_start = time.perf_counter()
    window_stats = LossWindow(device, cfg.batch_size * cfg.grad_accum * accelerator.num_processes)
    bar = tqdm(total=cfg.max_steps, initial=step, desc="distill", unit="step", disable=not session.is_main)

    while step < cfg.max_steps:
        # Forward and backward over the micro-batches; DDP syncs gradients on the last one only.
        for micro in range(cfg.grad_accum):
            b = next(batches)
            with accelerator.no_sync(model) if micro < cfg.grad_accum - 1 else nullcontext():
                with accelerator.autocast():  # the prepared student autocasts itself; teacher and target need it too
                    loss = objective.loss(model, target, teacher, b.latents, b.context, uncond, b.gen)
                accelerator.backward(loss / cfg.grad_accum)
            window_stats.add(loss)
        data_position += cfg.grad_accum

        # Optimizer step, then the target follows the student (EMA).
        state.optimizer_step(accelerator, model, cfg.optim.grad_clip, measure_norm=False)
        torch._foreach_copy_(target_params, target_ema.shadow)
        step += 1
        window_stats.steps += 1
        bar.update(1)

        # Log every log_every steps and checkpoint every checkpoint_every steps (and both at the end).
        if is_due(step, cfg.log_every, cfg.max_steps):
            loss_mean = window_stats.close(session, step, cfg.grad_accum)
            _log(session, step, loss_mean, lr_scheduler.get_last_lr()[0], window_stats.rates[-1])
            bar.set_postfix(loss=f"{loss_mean:.4f}")
        if is_due(step, cfg.checkpoint_every, cfg.max_steps):
            window_stats.stop_if_diverged(session, step)
            state.save(session, step, data_position, cfg.keep_checkpoints)
    bar.close()
    batches.close()
    seconds = time.perf_counter() - session_start

    # Export the student bundle (the target's weights) and the run manifest.
    img_s = window_stats.mean_img_s()
    if session.is_main:
        meta = student_meta(cfg, teacher_meta, teacher_dir, step, str(session.run_dir))
        export_student(session.run_dir / "model", meta, unet, target_ema, teacher_dir)
        _write_manifest(cfg, session, teacher_dir, len(dataset), step, (started, seconds), img_s)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return DistillResult(session.run_dir, session.run_dir / "model", step, seconds, img_s, accelerator.num_processes)
