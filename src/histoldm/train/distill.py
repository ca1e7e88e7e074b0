"""`histoldm distill`: a trained bundle (the teacher) -> a few-step student bundle, by latent consistency
distillation (histoldm.train.consistency), on the trainer's machinery.

The loop is train's: caches only (latents and caption-embedding rows), accelerate (CPU, one GPU, DDP),
fp32 master weights under autocast, per-step draws from generators seeded by (seed, step, rank), the data
order from (seed, epoch), checkpoints that resume bit for bit (the EMA slot holds the consistency target).
The student bundle records in its metadata how it samples (`histoldm sample --preset turbo`).
See docs/training.md ("Distillation") for why consistency distillation.
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from histoldm.devices import dtype_name, resolve_dtype, training_memory_format
from histoldm.errors import UserError
from histoldm.train.config import DistillConfig


@dataclass(frozen=True)
class DistillResult:
    """`histoldm distill`, on every process."""

    run_dir: Path
    bundle: Path  # RUN/model: the student bundle
    steps: int
    seconds: float  # wall time of this session's steps
    img_s: float | None  # mean distillation throughput over the logging windows after the first
    processes: int


def distill_contract(cfg: DistillConfig, teacher_meta, latent_meta: dict, text_meta: dict) -> dict:
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
        "latents": {k: latent_meta.get(k) for k in ("fingerprint", "scaling_factor", "channels", "size")},
        "text_cache": {k: text_meta.get(k) for k in ("encoder", "fingerprint", "mode", "max_length")},
    }


def check_caches_fit_teacher(cfg: DistillConfig, teacher_meta, latent_meta: dict, text_meta: dict) -> None:
    """The caches must be the ones the teacher learnt from (same autoencoder and text encoder)."""
    if teacher_meta.distilled is not None:
        raise UserError(f"{cfg.teacher}: already a distilled student; distil a teacher bundle made by `histoldm train`")
    if teacher_meta.latent.fingerprint and latent_meta.get("fingerprint") != teacher_meta.latent.fingerprint:
        raise UserError(
            f"{cfg.data.latents}: latents of another autoencoder than the teacher's (fingerprint {str(latent_meta.get('fingerprint'))[:12]})"
        )
    if teacher_meta.text.fingerprint and text_meta.get("fingerprint") != teacher_meta.text.fingerprint:
        raise UserError(f"{cfg.data.text_cache}: caption embeddings of another text encoder than the teacher's")


def student_meta(cfg: DistillConfig, teacher_meta, teacher: Path, step: int, source: str):
    from histoldm.models.bundle import DistilledSampling

    distilled = DistilledSampling(
        solver_steps=cfg.solver_steps,
        guidance_range=cfg.guidance_range,
        embedding_dim=cfg.embedding_dim,
        teacher=f"{teacher.resolve()}@{teacher_meta.trained_steps}",
    )
    return teacher_meta.model_copy(update={"distilled": distilled, "trained_steps": step, "source": source})


def export_student(folder: Path, meta, unet, target_ema, teacher: Path) -> None:
    """The target's weights as a bundle, with the teacher's autoencoder / text encoder folders beside them."""
    from histoldm.models.bundle import META_FILE
    from histoldm.train.trainer import _export_bundle

    (folder / META_FILE).unlink(missing_ok=True)
    for part in ("autoencoder", "text_encoder"):
        if (teacher / part).is_dir():
            shutil.rmtree(folder / part, ignore_errors=True)
            shutil.copytree(teacher / part, folder / part)
    _export_bundle(folder, meta, unet, target_ema)


def run_distill(cfg: DistillConfig) -> DistillResult:
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list, set_seed
    from tqdm import tqdm

    from histoldm.fileio import append_jsonl, atomic_write_json
    from histoldm.manifest import write_manifest
    from histoldm.models.bundle import load_bundle_unet, read_bundle_meta
    from histoldm.models.student import make_student
    from histoldm.sampling.run import resolve_bundle
    from histoldm.train.checkpoint import (
        clean_partial,
        load_checkpoint,
        resolve_resume,
        save_checkpoint,
        truncate_stats,
    )
    from histoldm.train.consistency import ConsistencyDistillation
    from histoldm.train.data import (
        LatentTextDataset,
        ResumableSampler,
        TextTable,
        augment_dihedral,
        crop_window,
        pick_captions,
        random_crop,
        step_generator,
    )
    from histoldm.train.ema import EMA
    from histoldm.train.latents import LatentCache
    from histoldm.train.lr_schedule import make_lr_scheduler
    from histoldm.train.trainer import (
        CONTRACT,
        MIXED_PRECISION,
        _check_contract,
        _peak_memory,
        _resolve_run_dir,
        _stop_if_diverged,
        report_training_data,
    )

    started = time.time()

    # Inputs: the teacher's bundle and the caches, every contract checked before any compute.
    teacher_dir = resolve_bundle(cfg.teacher)
    teacher_meta = read_bundle_meta(teacher_dir)
    latents = LatentCache.open(cfg.data.latents)
    text = TextTable(cfg.data.text_cache)
    check_caches_fit_teacher(cfg, teacher_meta, latents.meta, text.meta)
    window = crop_window(latents.meta, cfg.data.crop)
    if window != teacher_meta.latent.size:
        raise UserError(
            f"{cfg.data.latents}: {window}x{window} latents (data.crop {cfg.data.crop}) but the teacher samples {teacher_meta.latent.size}x{teacher_meta.latent.size}"
        )
    dataset = LatentTextDataset(latents, text, cfg.data.captions, cfg.data.split, cfg.data.split_name)
    use_cpu = (
        cfg.cpu
        or not torch.cuda.is_available()
        or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    )
    on_gpu = not use_cpu
    dtype = resolve_dtype(
        cfg.precision, torch.device("cuda" if on_gpu else "cpu"), stage="distill precision", training=True
    )

    # Processes and run folder: every rank agrees on the folder rank 0 chose.
    accelerator = Accelerator(mixed_precision=MIXED_PRECISION[dtype], cpu=use_cpu)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    if accelerator.is_main_process:
        report_training_data(cfg, len(dataset), dataset.cases)
    run_dir = Path(broadcast_object_list([str(_resolve_run_dir(cfg)) if accelerator.is_main_process else None])[0])
    resume_from = resolve_resume(run_dir, cfg.resume)
    contract = distill_contract(cfg, teacher_meta, latents.meta, text.meta)
    _check_contract(resume_from, contract)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        clean_partial(run_dir)
        atomic_write_json(run_dir / "config.json", cfg.model_dump(mode="json"))
        atomic_write_json(run_dir / CONTRACT, contract)

    # Models: the frozen teacher, the student (teacher + zero guidance projection), its EMA target.
    set_seed(cfg.seed)
    memory_format = training_memory_format(None, device)
    teacher = load_bundle_unet(teacher_dir).to(device, memory_format=memory_format).eval().requires_grad_(False)
    unet = make_student(teacher, cfg.embedding_dim).to(device, memory_format=memory_format).train()
    target = (
        make_student(teacher, cfg.embedding_dim).to(device, memory_format=memory_format).eval().requires_grad_(False)
    )
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, fused=on_gpu or None
    )
    lr_scheduler, schedule = make_lr_scheduler(optimizer, o.warmup_steps, o.decay, cfg.max_steps)
    target_ema = EMA(unet, cfg.target_decay)
    objective = ConsistencyDistillation(
        teacher_meta.prediction_type, cfg.solver_steps, cfg.guidance_range, cfg.embedding_dim, cfg.loss, device
    )
    table = text.table_with_uncond()
    table = table.to(device) if cfg.data.preload_text else (table.pin_memory() if on_gpu else table)
    uncond = table[text.uncond_row : text.uncond_row + 1].to(device).float()

    # Resume: student, target, optimizer, schedule, scaler, RNG and data position.
    step, data_position = 0, 0
    model, optimizer = accelerator.prepare(unet, optimizer)
    if resume_from is not None:
        state = load_checkpoint(
            resume_from,
            model=unet,
            ema=target_ema,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            scaler=accelerator.scaler,
            schedule=schedule,
        )
        step, data_position = state["step"], state["data_position"]
        if accelerator.is_main_process:
            truncate_stats(run_dir / "stats.jsonl", step)
        accelerator.print(f"resumed from {resume_from} at step {step}")
    target_params = list(target.parameters())
    torch._foreach_copy_(target_params, target_ema.shadow)

    sampler = ResumableSampler(len(dataset), cfg.batch_size, cfg.seed, rank, world, start=data_position)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.data.workers,
        pin_memory=on_gpu,
        persistent_workers=cfg.data.workers > 0,
    )
    batches = iter(loader)
    loss_sum = torch.zeros((), device=device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    session_start = time.perf_counter()
    window_start, window_steps, rates = time.perf_counter(), 0, []
    images_per_step = cfg.batch_size * cfg.grad_accum * world
    bar = tqdm(total=cfg.max_steps, initial=step, desc="distill", unit="step", disable=not accelerator.is_main_process)

    while step < cfg.max_steps:
        for micro in range(cfg.grad_accum):
            lat, rows, counts = next(batches)
            draw = data_position + micro
            rows = pick_captions(rows, counts, step_generator(cfg.seed, draw, rank, torch.device("cpu"), stream=3))
            lat = random_crop(
                lat.to(device, non_blocking=True),
                window,
                step_generator(cfg.seed, draw, rank, torch.device("cpu"), stream=2),
            )
            if cfg.data.augment != "none":
                lat = augment_dihedral(
                    lat,
                    step_generator(cfg.seed, draw, rank, device, stream=5),
                    transpose=cfg.data.augment == "dihedral",
                )
            lat = lat.contiguous(memory_format=memory_format)
            context = (
                table[rows.to(device, non_blocking=True)]
                if cfg.data.preload_text
                else table[rows].to(device, non_blocking=True)
            ).float()
            with accelerator.no_sync(model) if micro < cfg.grad_accum - 1 else nullcontext():
                with accelerator.autocast():  # the prepared student autocasts itself; teacher and target need it too
                    loss = objective.loss(
                        model,
                        target,
                        teacher,
                        lat,
                        context,
                        uncond,
                        step_generator(cfg.seed, draw, rank, device, stream=4),
                    )
                accelerator.backward(loss / cfg.grad_accum)
            loss_sum += loss.detach()
            nonfinite |= ~torch.isfinite(loss.detach())
        data_position += cfg.grad_accum
        if o.grad_clip is not None:
            accelerator.clip_grad_norm_(model.parameters(), o.grad_clip)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        target_ema.update(unet)
        torch._foreach_copy_(target_params, target_ema.shadow)
        step += 1
        window_steps += 1
        bar.update(1)

        if step % cfg.log_every == 0 or step == cfg.max_steps:
            mean_loss = accelerator.reduce(loss_sum, "mean").item() / (window_steps * cfg.grad_accum)
            _stop_if_diverged(accelerator, nonfinite, step, run_dir)
            rates.append(window_steps * images_per_step / (time.perf_counter() - window_start))
            if accelerator.is_main_process:
                append_jsonl(
                    run_dir / "stats.jsonl",
                    [
                        {
                            "step": step,
                            "loss": mean_loss,
                            "lr": lr_scheduler.get_last_lr()[0],
                            "img_s": rates[-1],
                            "time": time.time(),
                        }
                    ],
                )
            bar.set_postfix(loss=f"{mean_loss:.4f}")
            loss_sum.zero_()
            window_start, window_steps = time.perf_counter(), 0

        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            _stop_if_diverged(accelerator, nonfinite, step, run_dir)
            if accelerator.is_main_process:
                save_checkpoint(
                    run_dir,
                    step,
                    model=unet,
                    ema=target_ema,
                    optimizer=optimizer,
                    lr_scheduler=lr_scheduler,
                    scaler=accelerator.scaler,
                    data_position=data_position,
                    keep=cfg.keep_checkpoints,
                    schedule=schedule,
                )
            accelerator.wait_for_everyone()
    bar.close()
    del batches
    seconds = time.perf_counter() - session_start

    # Export the student bundle (the target's weights) and the run manifest.
    img_s = sum(rates[1:]) / len(rates[1:]) if len(rates) > 1 else (rates[0] if rates else None)
    if accelerator.is_main_process:
        export_student(
            run_dir / "model",
            student_meta(cfg, teacher_meta, teacher_dir, step, str(run_dir)),
            unet,
            target_ema,
            teacher_dir,
        )
        write_manifest(
            run_dir / "manifest.json",
            stage="distill",
            config=cfg,
            seed=cfg.seed,
            started=started,
            inputs={
                "teacher": teacher_dir,
                "latents": Path(cfg.data.latents) / "meta.json",
                "text_cache": Path(cfg.data.text_cache) / "meta.json",
                "captions": cfg.data.captions,
                "split": cfg.data.split,
                "resumed_from": resume_from,
            },
            produced={
                "steps": step,
                "bundle": str(run_dir / "model"),
                "pairs": len(dataset),
                "seconds_this_session": round(seconds, 2),
            },
            extra={
                "peak_memory": _peak_memory(device),
                "img_s": img_s,
                "processes": world,
                "precision": dtype_name(dtype),
            },
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return DistillResult(run_dir, run_dir / "model", step, seconds, img_s, world)
