"""`histoldm train`: the latent diffusion training loop, on accelerate (CPU, one GPU, DDP, multi-node).

The loop reads only caches (latents and caption-embedding rows): no autoencoder and no text encoder
is ever on the device. Precision is one policy: fp32 master weights, autocast in bf16 or fp16 (with
a loss scaler), or plain fp32. Every per-micro-batch draw comes from a generator seeded by (seed,
micro-batch position, rank, stream) and the data order from (seed, epoch), so a resumed run is the
uninterrupted run. The machinery train and distill share is in train/loop.py and train/run_folder.py.
See docs/training.md for the configs, resume semantics and launch commands.
"""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from shlex import quote
from typing import Any

import torch
from tqdm import tqdm

from histoldm.devices import dtype_name, training_memory_format
from histoldm.errors import UserError
from histoldm.fileio import append_jsonl
from histoldm.manifest import write_manifest
from histoldm.models.autoencoder import load_autoencoder
from histoldm.models.bundle import BundleMeta, LatentContract, TextContract
from histoldm.models.presets import build_unet
from histoldm.models.speed import compile_unet, enable_gradient_checkpointing
from histoldm.train.config import ModelSection, TrainConfig
from histoldm.train.data import BatchRecipe, LatentTextDataset, TextTable, crop_window, micro_batches
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
from histoldm.train.objective import DiffusionObjective
from histoldm.train.run_folder import (
    cache_contract,
    cache_inputs,
    check_contract,
    export_bundle,
    initialise,
    write_run_folder,
)
from histoldm.train.validation import ValidationGrid


def _check_inputs(cfg: TrainConfig, latent_meta: dict, text_dim: int) -> None:
    """Contract checks between config and caches, before any compute."""
    if cfg.model.checkpoint_levels is not None and not cfg.model.gradient_checkpointing:
        raise UserError("model.checkpoint_levels: set model.gradient_checkpointing: true as well")
    if cfg.model.context_dim is not None and cfg.model.context_dim != text_dim:
        raise UserError(
            f"{cfg.data.text_cache}: embeddings are {text_dim}-d but model.context_dim is {cfg.model.context_dim}"
        )
    expected = cfg.model.autoencoder_fingerprint
    if cfg.model.autoencoder and not expected:
        expected = load_autoencoder(cfg.model.autoencoder).fingerprint
    if expected and expected != latent_meta.get("fingerprint"):
        made_by = latent_meta.get("autoencoder", "?")
        raise UserError(
            f"{cfg.data.latents}: latents were made by another autoencoder ({made_by}) than the config names"
        )


# Model settings that change neither the weights nor what they mean (the caches' fingerprints cover the autoencoder).
NOT_IN_CONTRACT = {
    "gradient_checkpointing",
    "checkpoint_levels",
    "channels_last",
    "compile",
    "compile_mode",
    "autoencoder",
    "autoencoder_fingerprint",
    "init",
    "init_from",
}  # init*: read only when a run starts


def run_contract(cfg: TrainConfig, latent_meta: dict, text_meta: dict) -> dict:
    """What a resumed run must share with the run it continues: the model and the caches it learns from.
    Speed settings, step counts and the optimiser's hyper-parameters may change between sessions."""
    return {
        "model": cfg.model.model_dump(mode="json", exclude=NOT_IN_CONTRACT),
        "ema": cfg.ema,
        **cache_contract(latent_meta, text_meta),
    }


def _bundle_meta(cfg: TrainConfig, latent_meta: dict, text_meta: dict, step: int, source: str) -> BundleMeta:
    """What the exported bundle records: the UNet, the caches' contracts and the steps trained."""
    text = TextContract(
        **{k: text_meta[k] for k in ("encoder", "mode", "max_length", "dim")},
        fingerprint=text_meta.get("fingerprint", ""),
    )
    keys = ("channels", "size", "scaling_factor", "autoencoder", "kind", "fingerprint")
    latent = LatentContract(**{k: latent_meta[k] for k in keys if k in latent_meta})
    return BundleMeta(
        unet_preset=cfg.model.unet_preset,
        prediction_type=cfg.model.prediction_type,
        text=text,
        latent=latent,
        trained_steps=step,
        source=source,
    )


def check_captions_cached(cfg: TrainConfig, dataset: LatentTextDataset, text_meta: dict) -> None:
    """Captions re-made after encode-text (a summary changed) are not in the text cache: training on the rest
    would silently drop their patches, so it stops naming the command that encodes them."""
    missing = dataset.skipped["caption_not_in_text_cache"]
    if not missing:
        return
    if cfg.data.allow_missing_captions:
        print(
            f"train: {missing} training pairs left out: their {len(dataset.missing_captions)} captions are not "
            "in the text cache (data.allow_missing_captions)",
            file=sys.stderr,
        )
        return

    fix = (
        f"histoldm encode-text {quote(str(cfg.data.captions))} --out {quote(str(cfg.data.text_cache))} "
        f"--text-encoder {quote(str(text_meta['encoder']))} --mode {text_meta['mode']} "
        f"--max-length {text_meta['max_length']}"
    )
    raise UserError(
        f"{cfg.data.text_cache}: {len(dataset.missing_captions)} of the captions in {cfg.data.captions} "
        f"({missing} training pairs) are not in the text cache; encode them with `{fix}`, "
        "or set data.allow_missing_captions: true to train without them"
    )


@dataclass(frozen=True)
class TrainResult:
    """`histoldm train`, on every process (each with its own device's peak memory)."""

    run_dir: Path
    bundle: Path  # RUN/model: the exported inference weights
    steps: int
    peak_memory: dict[str, Any]  # allocated_gib, reserved_gib (None on CPU, with the reason), device
    img_s: float | None  # mean training throughput over the logging windows after the first
    processes: int


def _open_inputs(cfg: TrainConfig) -> tuple[TextTable, LatentTextDataset, dict[str, Any]]:
    """The caches, checked against the config and each other: the text table, the training pairs and the
    latent metadata as the UNet sees it (`size`: the crop window; `image_size`: the crop in pixels)."""
    latents, text = LatentCache.open(cfg.data.latents), TextTable(cfg.data.text_cache)
    _check_inputs(cfg, latents.meta, text.dim)
    window = crop_window(latents.meta, cfg.data.crop)
    model_meta = {**latents.meta, "size": window, "image_size": cfg.data.crop or latents.meta.get("image_size")}
    dataset = LatentTextDataset(latents, text, cfg.data.captions, cfg.data.split, cfg.data.split_name)
    check_captions_cached(cfg, dataset, text.meta)
    return text, dataset, model_meta


def _validator(
    cfg: TrainConfig, session: Session, text: TextTable, model_meta: dict[str, Any]
) -> ValidationGrid | None:
    """The validation grid's renderer, on the main process when validation.every is set."""
    if not (cfg.validation.every and session.is_main):
        return None
    return ValidationGrid(cfg.validation, text, model_meta, cfg.model.prediction_type, session.device, cfg.seed)


def _place_unet(unet: torch.nn.Module, model: ModelSection, device: torch.device) -> torch.memory_format:
    """Gradient checkpointing (when on) and the UNet on the device in training mode, in the memory format
    the latents then take too."""
    if model.gradient_checkpointing:
        enable_gradient_checkpointing(unet, model.checkpoint_levels)
    memory_format = training_memory_format(model.channels_last, device)
    unet.to(device, memory_format=memory_format).train()
    return memory_format


def _batch_recipe(
    cfg: TrainConfig, session: Session, window: int, memory_format: torch.memory_format, text: TextTable
) -> BatchRecipe:
    """Train's micro-batches: caption pick, guidance dropout, crop; flips and the objective's noise share the
    NOISE stream (one generator, flips drawn first)."""
    return batch_recipe(cfg, session, window, memory_format, text.uncond_row, uncond_prob=cfg.data.uncond_prob)


def _log(session: Session, writer, step: int, loss: float, lr: float, grad_norm: torch.Tensor, img_s: float) -> None:
    """One line of stats.jsonl and TensorBoard's scalars, on the main process (the one with a writer)."""
    record = {
        "step": step,
        "loss": loss,
        "lr": lr,
        "grad_norm": float(grad_norm),
        "img_s": img_s,
        "peak_gib": peak_memory(session.device)["allocated_gib"],
        "time": time.time(),
    }
    if writer is not None:
        append_jsonl(session.run_dir / "stats.jsonl", [record])
        for key in ("loss", "lr", "grad_norm", "img_s", "peak_gib"):
            if record[key] is not None:
                writer.add_scalar(f"train/{key}", record[key], step)


def _write_outputs(
    cfg: TrainConfig,
    session: Session,
    state: TrainingState,
    meta: BundleMeta,
    dataset: LatentTextDataset,
    step: int,
    started: float,
    extra: dict,
) -> None:
    """The model bundle (EMA weights when on) and the run manifest, on the main process."""
    run_dir = session.run_dir
    export_bundle(run_dir / "model", meta, state.unet, state.ema)
    write_manifest(
        run_dir / "manifest.json",
        stage="train",
        config=cfg,
        seed=cfg.seed,
        started=started,
        inputs=cache_inputs(cfg.data, session.resume_from),
        produced={
            "steps": step,
            "bundle": str(run_dir / "model"),
            "pairs": len(dataset),
            "cases": dataset.cases,
            "skipped_pairs": dataset.skipped,
        },
        extra={**extra, "processes": session.accelerator.num_processes, "precision": dtype_name(session.dtype)},
    )


def run_train(cfg: TrainConfig) -> TrainResult:
    """Train a UNet on the caches (module docstring); a re-run resumes by itself; RUN/model at the end."""
    from accelerate.utils import set_seed
    from torch.utils.tensorboard import SummaryWriter

    started = time.time()

    # Inputs: open both caches and check every contract before any compute.
    text, dataset, model_meta = _open_inputs(cfg)
    window = int(model_meta["size"])

    # Processes and run folder: every rank agrees on the folder rank 0 chose; a resume keeps the contract.
    session = start_session(cfg, "train", dataset)
    accelerator, device, run_dir = session.accelerator, session.device, session.run_dir
    contract = run_contract(cfg, model_meta, text.meta)
    check_contract(session.resume_from, contract)

    # Model: fp32 master weights, seeded; starting weights checked before the run folder is written.
    set_seed(cfg.seed)
    channels = int(model_meta["channels"])
    unet = build_unet(cfg.model.unet_preset, context_dim=text.dim, latent_channels=channels, sample_size=window)
    init = initialise(unet, cfg.model, session.resume_from, run_dir, accelerator.print)
    if session.is_main:
        write_run_folder(run_dir, cfg, contract, init if session.resume_from is None else None)
    validator = _validator(cfg, session, text, model_meta)

    # Speed settings, optimizer, schedule, EMA; then resume the lot (the optimizer's hyper-parameters are
    # this config's) with the loss scaler, the RNG and the data position.
    memory_format = _place_unet(unet, cfg.model, device)
    optimizer, lr_scheduler, schedule = make_optimizer(unet, cfg.optim, cfg.max_steps, session.on_gpu)
    ema = EMA(unet, cfg.ema_decay) if cfg.ema else None
    objective = DiffusionObjective(cfg.model.prediction_type, cfg.optim.min_snr_gamma, device)
    table = caption_table(text, cfg.data.preload_text, session)
    model, optimizer = accelerator.prepare(unet, optimizer)
    state = TrainingState(unet, ema, optimizer, lr_scheduler, schedule)
    resumed = state.resume(session, "train") if session.resume_from is not None else {}
    step, data_position = resumed.get("step", 0), resumed.get("data_position", 0)
    if cfg.model.compile and session.on_gpu:
        model = compile_unet(model, cfg.model.compile_mode)

    # Data: a seeded, resumable order per rank, as micro-batches that draw from their own random streams.
    loader = make_loader(dataset, cfg.batch_size, cfg.seed, cfg.data.workers, session, data_position)
    batches = micro_batches(loader, table, _batch_recipe(cfg, session, window, memory_format, text), data_position)

    # Logging: TensorBoard and stats.jsonl on the main process only.
    writer = SummaryWriter(str(run_dir / "tb")) if session.is_main else None
    if session.on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    window_stats = LossWindow(device, cfg.batch_size * cfg.grad_accum * accelerator.num_processes)
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train", unit="step", disable=not session.is_main)

    while step < cfg.max_steps:
        # Forward and backward over the micro-batches; DDP syncs gradients on the last one only.
        for micro in range(cfg.grad_accum):
            batch = next(batches)
            with accelerator.no_sync(model) if micro < cfg.grad_accum - 1 else nullcontext():
                loss = objective.loss(model, batch.latents, batch.context, batch.gen)
                accelerator.backward(loss / cfg.grad_accum)
            window_stats.add(loss)
        data_position += cfg.grad_accum

        # Optimizer step: the gradient norm is logged, so it is measured at log steps when not clipping.
        log_now = is_due(step + 1, cfg.log_every, cfg.max_steps)
        norm = state.optimizer_step(accelerator, model, cfg.optim.grad_clip, measure_norm=log_now)
        step += 1
        window_stats.steps += 1
        bar.update(1)

        # Log every log_every steps: the only regular host sync.
        if log_now:
            loss_mean = window_stats.close(session, step, cfg.grad_accum)
            _log(session, writer, step, loss_mean, lr_scheduler.get_last_lr()[0], norm, window_stats.rates[-1])
            bar.set_postfix(loss=f"{loss_mean:.4f}")

        # Checkpoint every checkpoint_every steps and at the end; `latest` moves only when complete.
        if is_due(step, cfg.checkpoint_every, cfg.max_steps):
            window_stats.stop_if_diverged(session, step)
            state.save(session, step, data_position, cfg.keep_checkpoints)

        # Validation grid every validation.every steps, on the main process; the others wait.
        if cfg.validation.every and step % cfg.validation.every == 0:
            if validator is not None:
                validator.render(unet, step, run_dir, writer, None if session.dtype == torch.float32 else session.dtype)
            accelerator.wait_for_everyone()
    bar.close()
    batches.close()

    # Export the model bundle (EMA weights when on) and the run manifest.
    peak, img_s = peak_memory(device), window_stats.mean_img_s()
    if session.is_main:
        writer.close()
        meta = _bundle_meta(cfg, model_meta, text.meta, step, source=str(run_dir))
        extra = {"peak_memory": peak, "img_s": img_s, "init": init}
        extra["optimizer_changes_on_resume"] = resumed.get("optimizer_changes", {})
        _write_outputs(cfg, session, state, meta, dataset, step, started, extra)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(run_dir, run_dir / "model", step, peak, img_s, accelerator.num_processes)
