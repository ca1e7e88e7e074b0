"""`histoldm train`: the latent diffusion training loop, on accelerate (CPU, one GPU, DDP, multi-node).

The loop reads only caches (latents and caption-embedding rows): no autoencoder and no text encoder
is ever on the device. Precision is one policy: fp32 master weights, autocast in bf16 or fp16 (with
a loss scaler), or plain fp32. Every per-step draw comes from a generator seeded by (seed, step,
rank) and the data order from (seed, epoch), so a resumed run is the uninterrupted run.
See docs/training.md for the configs, resume semantics and launch commands.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from histoldm.config import DtypeName, StrictModel
from histoldm.devices import dtype_name, resolve_dtype, training_memory_format
from histoldm.errors import UserError
from histoldm.train.lr_schedule import Decay, make_lr_scheduler
from histoldm.train.validation import ValidationSection


class DataSection(StrictModel):
    latents: Path  # encode-latents output folder
    text_cache: Path  # encode-text output folder
    captions: Path  # captions.parquet
    split: Path | None = None  # split.json; None = every captioned patch
    split_name: str = "train"
    augment: Literal["none", "flips", "dihedral"] = "dihedral"  # in latent space; flips = PathLDM's
    crop: int | None = Field(
        None, ge=8
    )  # pixels: a fresh random crop of each stored patch per read (PathLDM: 256 of 448); None = whole patch
    uncond_prob: float = Field(0.1, ge=0, le=1)  # guidance dropout, applied uniformly
    preload_text: bool = True  # keep the caption-embedding table on the device
    workers: int = Field(2, ge=0)  # DataLoader worker processes
    allow_missing_captions: bool = Field(
        False,
        description="train on the patches whose captions are in the text cache when "
        "some are not (their count is in the manifest); off: such a run stops and names the fix",
    )


class ModelSection(StrictModel):
    unet_preset: str = "pathldm"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    context_dim: int | None = None  # when set, must equal the text cache's width
    autoencoder: str = ""  # when set, the latent cache must have been made by it (fingerprint)
    autoencoder_fingerprint: str = ""  # the same check without loading the autoencoder
    gradient_checkpointing: bool = False
    checkpoint_levels: list[int] | None = (
        None  # with gradient_checkpointing: only these resolution levels (0 = full); None = all
    )
    channels_last: bool | None = (
        None  # NHWC weights and latents; None = on CPU (measured 2-5% faster a step), off on CUDA (measured slower)
    )
    compile: bool = False  # torch.compile, CUDA only
    compile_mode: Literal["full", "fullgraph", "blocks"] = (
        "full"  # blocks: each ResNet/transformer block (compiles much faster); fullgraph: one graph or an error
    )
    init: Literal["diffusers", "compvis"] = (
        "diffusers"  # from scratch; compvis zero-inits resnet conv2, proj_out, conv_out
    )
    init_from: Path | None = Field(
        None,
        description="start the UNet from a model bundle, run folder or CompVis checkpoint (read only when a run starts: ignored on resume)",
    )


class OptimSection(StrictModel):
    lr: float = Field(2.5e-5, gt=0)  # PathLDM; not scaled by batch size
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(1000, ge=0)  # linear from lr/warmup to lr, then constant
    decay: Decay = "constant"  # after warm-up: hold lr (PathLDM), or a cosine to 0 at max_steps
    grad_clip: float | None = None  # None: no clipping (PathLDM); the norm is logged either way
    min_snr_gamma: float | None = None  # e.g. 5.0 turns on min-SNR weighting


class TrainingRunConfig(StrictModel):
    """The run-folder, resume and step settings every UNet training stage (train, distill) shares."""

    name: str = Field("ldm", description="run name: the run folder is RUNS_DIR/{id:05d}-{name}")
    runs_dir: Path = Field(Path("runs"), description="folder of the numbered run folders")
    run_dir: Path | None = Field(None, description="explicit run folder instead of a numbered one")
    resume: str = Field(
        "auto",
        description="auto (resume this run if it has a checkpoint) | latest | none | PATH (checkpoint or run folder)",
    )
    seed: int = Field(0, description="random seed")
    max_steps: int = Field(1000, gt=0, description="optimizer steps")
    batch_size: int = Field(32, gt=0, description="per process, per micro-batch")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    precision: DtypeName = Field(
        "bfloat16", description="autocast dtype of the UNet (also on CPU); auto: bfloat16 where supported, else float32"
    )
    cpu: bool = Field(False, description="force CPU even when a GPU is present")


class TrainConfig(TrainingRunConfig):
    ema: bool = Field(False, description="keep an EMA copy of the UNet (the bundle then holds it)")
    ema_decay: float = Field(0.9999, description="EMA decay per step")
    log_every: int = Field(50, gt=0, description="steps between log lines")
    checkpoint_every: int = Field(5000, gt=0, description="steps between checkpoints")
    keep_checkpoints: int = Field(3, gt=0, description="newest checkpoints kept")
    data: DataSection
    model: ModelSection = ModelSection()
    optim: OptimSection = OptimSection()
    validation: ValidationSection = ValidationSection()  # image grid; off by default

    @model_validator(mode="after")
    def _checkpoint_every_within_run(self) -> TrainConfig:
        """A run shorter than checkpoint_every checkpoints at its end: the interval is at most the run."""
        if self.checkpoint_every > self.max_steps:
            self.checkpoint_every = self.max_steps
        return self


# The one place the resolved dtype becomes accelerate's mixed_precision (float32: no autocast).
MIXED_PRECISION = {torch.float32: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _check_inputs(cfg: TrainConfig, latent_meta: dict, text_dim: int) -> None:
    """Contract checks between config and caches, before any compute."""
    if cfg.model.context_dim is not None and cfg.model.context_dim != text_dim:
        raise UserError(
            f"{cfg.data.text_cache}: embeddings are {text_dim}-d but model.context_dim is {cfg.model.context_dim}"
        )
    expected = cfg.model.autoencoder_fingerprint
    if cfg.model.autoencoder and not expected:
        from histoldm.models.autoencoder import load_autoencoder

        expected = load_autoencoder(cfg.model.autoencoder).fingerprint
    if expected and expected != latent_meta.get("fingerprint"):
        made_by = latent_meta.get("autoencoder", "?")
        raise UserError(
            f"{cfg.data.latents}: latents were made by another autoencoder ({made_by}) than the config names"
        )


CONTRACT = "contract.json"
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
INIT_FILE = "init.json"


def run_contract(cfg: TrainConfig, latent_meta: dict, text_meta: dict) -> dict:
    """What a resumed run must share with the run it continues: the model and the caches it learns from.
    Speed settings, step counts and the optimiser's hyper-parameters may change between sessions."""
    return {
        "model": cfg.model.model_dump(mode="json", exclude=NOT_IN_CONTRACT),
        "ema": cfg.ema,
        "latents": {k: latent_meta.get(k) for k in ("fingerprint", "scaling_factor", "channels", "size")},
        "text_cache": {k: text_meta.get(k) for k in ("encoder", "fingerprint", "mode", "max_length")},
    }


def _check_contract(checkpoint: Path | None, contract: dict) -> None:
    """Refuse, before any compute, to resume a run on another model or other caches (it would mix two)."""
    if checkpoint is None:
        return
    from histoldm.fileio import settings_changes

    run_dir = Path(checkpoint).parent.parent  # RUN/checkpoints/step-XXXXXXXX
    if changed := list(settings_changes(run_dir / CONTRACT, contract)):
        raise UserError(
            f"{run_dir}: resuming with another {' and '.join(changed)} than the run was trained with; "
            "give the run a new name (or resume: none)"
        )


def _resolve_run_dir(cfg: TrainConfig) -> Path:
    """The explicit run_dir, else the newest unfinished run of this name (auto-resume), else a new id."""
    if cfg.run_dir is not None:
        return Path(cfg.run_dir)
    runs = sorted(p for p in Path(cfg.runs_dir).glob("[0-9]" * 5 + "-*") if p.is_dir())
    mine = [p for p in runs if p.name[6:] == cfg.name and not (p / "manifest.json").is_file()]
    if mine and cfg.resume != "none":
        return mine[-1]
    next_id = int(runs[-1].name[:5]) + 1 if runs else 0
    new = Path(cfg.runs_dir) / f"{next_id:05d}-{cfg.name}"
    finished = [p for p in runs if p.name[6:] == cfg.name and (p / "manifest.json").is_file()]
    if finished and cfg.resume == "auto":  # say so: at full scale a silent restart repeats days of training
        print(
            f"train: {finished[-1]} is finished; starting a new run {new.name} (resume: {finished[-1]} continues that one)"
        )
    return new


def _initialise(unet, cfg: TrainConfig, resume_from: Path | None, run_dir: Path, say=print) -> dict:
    """The UNet's starting weights, chosen when a run starts; a resumed run's come from its checkpoint,
    and what it started from is read back from RUN/init.json for the manifest."""
    from histoldm.train.init import compvis_init, load_init_weights, skipped_lines

    if resume_from is not None:
        if cfg.model.init_from is not None:
            say(
                f"train: resuming {run_dir}; model.init_from ({cfg.model.init_from}) is read only when a run starts, ignored"
            )
        path = run_dir / INIT_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if cfg.model.init_from is not None:
        report = load_init_weights(cfg.model.init_from, unet).as_dict()
        listed = f" (each listed in {run_dir / INIT_FILE})" if report["skipped"] else ""
        say(
            f"train: UNet from {report['source']} ({report['kind']}): {report['loaded']} tensors loaded, {len(report['skipped'])} skipped{listed}"
            + "".join(f"\n  {line}" for line in skipped_lines(report["skipped"]))
        )
        return report
    return {
        "source": "scratch",
        "init": cfg.model.init,
        "zeroed": compvis_init(unet) if cfg.model.init == "compvis" else 0,
    }


def _bundle_meta(cfg: TrainConfig, latent_meta: dict, text_meta: dict, step: int, source: str):
    from histoldm.models.bundle import BundleMeta, LatentContract, TextContract

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


def _export_bundle(folder: Path, meta, unet, ema) -> None:
    """Save the inference weights (EMA when on) as a model bundle, from a contiguous CPU copy."""
    from diffusers import UNet2DConditionModel

    from histoldm.models.bundle import save_bundle

    state = ema.averaged_state_dict(unet) if ema is not None else unet.state_dict()
    export = UNet2DConditionModel.from_config(unet.config)
    export.load_state_dict({k: v.detach().cpu().contiguous() for k, v in state.items()})
    save_bundle(folder, meta, export)


def _peak_memory(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"allocated_gib": None, "reserved_gib": None, "reason": "trained on CPU: no GPU memory to measure"}
    return {
        "allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
        "reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 3),
        "device": torch.cuda.get_device_name(device),
    }


def _stop_if_diverged(accelerator, nonfinite: torch.Tensor, step: int, run_dir: Path) -> None:
    """One host sync, only at log / checkpoint steps: a NaN never reaches a checkpoint. Reduced over
    ranks, so every process stops together instead of one waiting forever at the next barrier."""
    if accelerator.reduce(nonfinite.float(), "sum").item() > 0:
        from histoldm.train.checkpoint import read_latest

        kept = read_latest(run_dir) or "none yet"
        raise UserError(
            f"{run_dir}: loss became NaN or infinite by step {step}; stopped, last good checkpoint kept: {kept}"
        )


def check_captions_cached(cfg: TrainConfig, dataset, text_meta: dict) -> None:
    """Captions re-made after encode-text (a summary changed) are not in the text cache: training on the rest
    would silently drop their patches, so it stops naming the command that encodes them."""
    missing = dataset.skipped["caption_not_in_text_cache"]
    if not missing:
        return
    if cfg.data.allow_missing_captions:
        print(
            f"train: {missing} training pairs left out: their {len(dataset.missing_captions)} captions are not in the text cache "
            "(data.allow_missing_captions)",
            file=sys.stderr,
        )
        return
    from shlex import quote

    fix = (
        f"histoldm encode-text {quote(str(cfg.data.captions))} --out {quote(str(cfg.data.text_cache))} "
        f"--text-encoder {quote(str(text_meta['encoder']))} --mode {text_meta['mode']} --max-length {text_meta['max_length']}"
    )
    raise UserError(
        f"{cfg.data.text_cache}: {len(dataset.missing_captions)} of the captions in {cfg.data.captions} ({missing} training "
        f"pairs) are not in the text cache; encode them with `{fix}`, or set data.allow_missing_captions: true to train without them"
    )


def report_training_data(cfg: TrainConfig, patches: int, cases: int) -> None:
    """Say what the model learns from; without a split that includes the test cases, which would
    make every later evaluation on them meaningless, so it is said loudly."""
    if cfg.data.split is None:
        print(
            f"train: WARNING: no data.split given: training on every captioned patch, test cases included "
            f"({patches} patches from {cases} cases); set data.split to a split.json to hold cases out",
            file=sys.stderr,
        )
    else:
        print(
            f"train: {patches} training patches from {cases} cases (split '{cfg.data.split_name}' of {cfg.data.split})"
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


def run_train(cfg: TrainConfig) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list, set_seed
    from tqdm import tqdm

    from histoldm.fileio import append_jsonl, atomic_write_json
    from histoldm.manifest import write_manifest
    from histoldm.models.presets import build_unet
    from histoldm.models.speed import compile_unet, enable_gradient_checkpointing
    from histoldm.train.checkpoint import (
        clean_partial,
        describe_changes,
        load_checkpoint,
        resolve_resume,
        save_checkpoint,
        truncate_stats,
    )
    from histoldm.train.data import (
        LatentTextDataset,
        ResumableSampler,
        TextTable,
        augment_dihedral,
        crop_window,
        drop_captions,
        pick_captions,
        random_crop,
        step_generator,
    )
    from histoldm.train.ema import EMA
    from histoldm.train.latents import LatentCache
    from histoldm.train.objective import DiffusionObjective
    from histoldm.train.validation import ValidationGrid

    started = time.time()

    # Inputs: open both caches and check every contract before any compute.
    latents = LatentCache.open(cfg.data.latents)
    text = TextTable(cfg.data.text_cache)
    _check_inputs(cfg, latents.meta, text.dim)
    window = crop_window(latents.meta, cfg.data.crop)
    model_meta = {
        **latents.meta,
        "size": window,
        "image_size": cfg.data.crop or latents.meta.get("image_size"),
    }  # what the UNet sees
    dataset = LatentTextDataset(latents, text, cfg.data.captions, cfg.data.split, cfg.data.split_name)
    check_captions_cached(cfg, dataset, text.meta)
    use_cpu = (
        cfg.cpu
        or not torch.cuda.is_available()
        or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    )
    on_gpu = not use_cpu
    dtype = resolve_dtype(
        cfg.precision, torch.device("cuda" if on_gpu else "cpu"), stage="train precision", training=True
    )
    if cfg.model.checkpoint_levels is not None and not cfg.model.gradient_checkpointing:
        raise UserError("model.checkpoint_levels: set model.gradient_checkpointing: true as well")

    # Processes and run folder: every rank agrees on the folder rank 0 chose.
    accelerator = Accelerator(mixed_precision=MIXED_PRECISION[dtype], cpu=use_cpu)  # cpu=True: gloo DDP under torchrun
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    if accelerator.is_main_process:
        report_training_data(cfg, len(dataset), dataset.cases)
    run_dir = Path(broadcast_object_list([str(_resolve_run_dir(cfg)) if accelerator.is_main_process else None])[0])
    resume_from = resolve_resume(run_dir, cfg.resume)
    contract = run_contract(cfg, model_meta, text.meta)
    _check_contract(resume_from, contract)

    # Model: fp32 master weights, seeded; starting weights checked before the run folder is written.
    set_seed(cfg.seed)
    unet = build_unet(
        cfg.model.unet_preset, context_dim=text.dim, latent_channels=int(latents.meta["channels"]), sample_size=window
    )
    init = _initialise(unet, cfg, resume_from, run_dir, accelerator.print)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        clean_partial(run_dir)
        atomic_write_json(run_dir / "config.json", cfg.model_dump(mode="json"))
        atomic_write_json(run_dir / CONTRACT, contract)
        if resume_from is None:
            atomic_write_json(run_dir / INIT_FILE, init)
    validator = None
    if cfg.validation.every and accelerator.is_main_process:
        validator = ValidationGrid(cfg.validation, text, model_meta, cfg.model.prediction_type, device, cfg.seed)

    # Speed settings, optimizer, schedule, EMA.
    if cfg.model.gradient_checkpointing:
        enable_gradient_checkpointing(unet, cfg.model.checkpoint_levels)
    memory_format = training_memory_format(cfg.model.channels_last, device)
    unet.to(device, memory_format=memory_format).train()
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, fused=on_gpu or None
    )
    lr_scheduler, schedule = make_lr_scheduler(
        optimizer, o.warmup_steps, o.decay, cfg.max_steps
    )  # schedule: kept in checkpoints
    ema = EMA(unet, cfg.ema_decay) if cfg.ema else None
    objective = DiffusionObjective(cfg.model.prediction_type, o.min_snr_gamma, device)
    table = text.table_with_uncond()
    table = table.to(device) if cfg.data.preload_text else (table.pin_memory() if on_gpu else table)

    # Resume: weights, EMA, optimizer state, LR schedule position, loss scaler, RNG and data position; the
    # optimizer's hyper-parameters (peak lr, betas, weight decay, warmup) are this config's.
    step, data_position, optimizer_changes = 0, 0, {}
    model, optimizer = accelerator.prepare(unet, optimizer)
    if resume_from is not None:
        state = load_checkpoint(
            resume_from,
            model=unet,
            ema=ema,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            scaler=accelerator.scaler,
            schedule=schedule,
        )
        step, data_position, optimizer_changes = state["step"], state["data_position"], state["optimizer_changes"]
        if accelerator.is_main_process:  # log lines after the checkpoint are re-made by this session
            truncate_stats(run_dir / "stats.jsonl", step)
        accelerator.print(f"resumed from {resume_from} at step {step}")
        if optimizer_changes:
            accelerator.print(f"train: resuming with the config's {describe_changes(optimizer_changes, 'optim.')}")
    if cfg.model.compile and on_gpu:
        model = compile_unet(model, cfg.model.compile_mode)

    # Data: a seeded, resumable order per rank; pinned, non-blocking copies to the device.
    sampler = ResumableSampler(len(dataset), cfg.batch_size, cfg.seed, rank, world, start=data_position)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.data.workers,
        pin_memory=on_gpu,
        persistent_workers=cfg.data.workers > 0,
    )
    batches = iter(loader)

    # Logging: TensorBoard and stats.jsonl on the main process only.
    writer = None
    if accelerator.is_main_process:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    loss_sum = torch.zeros((), device=device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    window_start, window_steps, rates = time.perf_counter(), 0, []
    images_per_step = cfg.batch_size * cfg.grad_accum * world
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train", unit="step", disable=not accelerator.is_main_process)

    while step < cfg.max_steps:
        # Forward and backward over the micro-batches; DDP syncs gradients on the last one only.
        for micro in range(cfg.grad_accum):
            lat, rows, counts = next(batches)
            draw = data_position + micro
            gen = step_generator(cfg.seed, draw, rank, device)
            rows = pick_captions(rows, counts, step_generator(cfg.seed, draw, rank, torch.device("cpu"), stream=3))
            rows = drop_captions(
                rows,
                text.uncond_row,
                cfg.data.uncond_prob,
                step_generator(cfg.seed, draw, rank, torch.device("cpu"), stream=1),
            )
            lat = lat.to(device, non_blocking=True)
            lat = random_crop(lat, window, step_generator(cfg.seed, draw, rank, torch.device("cpu"), stream=2))
            lat = (
                augment_dihedral(lat, gen, transpose=cfg.data.augment == "dihedral")
                if cfg.data.augment != "none"
                else lat
            )
            lat = lat.contiguous(memory_format=memory_format)
            context = (
                table[rows.to(device, non_blocking=True)]
                if cfg.data.preload_text
                else table[rows].to(device, non_blocking=True)
            ).float()
            with accelerator.no_sync(model) if micro < cfg.grad_accum - 1 else nullcontext():
                loss = objective.loss(model, lat, context, gen)
                accelerator.backward(loss / cfg.grad_accum)
            loss_sum += loss.detach()
            nonfinite |= ~torch.isfinite(loss.detach())
        data_position += cfg.grad_accum

        # Optimizer step: gradient norm (clipped when configured), AdamW, LR schedule, EMA. Unclipped, the
        # norm is only logged, so it is computed at log steps only: it reads and rescales every gradient.
        if o.grad_clip is not None or (step + 1) % cfg.log_every == 0 or step + 1 == cfg.max_steps:
            grad_norm = accelerator.clip_grad_norm_(
                model.parameters(), o.grad_clip if o.grad_clip is not None else float("inf")
            )
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(unet)
        step += 1
        window_steps += 1
        bar.update(1)

        # Log every log_every steps: the only regular host sync.
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            mean_loss = accelerator.reduce(loss_sum, "mean").item() / (window_steps * cfg.grad_accum)
            _stop_if_diverged(accelerator, nonfinite, step, run_dir)
            elapsed = time.perf_counter() - window_start
            rates.append(window_steps * images_per_step / elapsed)
            record = {
                "step": step,
                "loss": mean_loss,
                "lr": lr_scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm),
                "img_s": rates[-1],
                "peak_gib": _peak_memory(device)["allocated_gib"],
                "time": time.time(),
            }
            if writer is not None:
                append_jsonl(run_dir / "stats.jsonl", [record])
                for key in ("loss", "lr", "grad_norm", "img_s", "peak_gib"):
                    if record[key] is not None:
                        writer.add_scalar(f"train/{key}", record[key], step)
            bar.set_postfix(loss=f"{mean_loss:.4f}")
            loss_sum.zero_()
            window_start, window_steps = time.perf_counter(), 0

        # Checkpoint every checkpoint_every steps and at the end; `latest` moves only when complete.
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            _stop_if_diverged(accelerator, nonfinite, step, run_dir)
            if accelerator.is_main_process:
                save_checkpoint(
                    run_dir,
                    step,
                    model=unet,
                    ema=ema,
                    optimizer=optimizer,
                    lr_scheduler=lr_scheduler,
                    scaler=accelerator.scaler,
                    data_position=data_position,
                    keep=cfg.keep_checkpoints,
                    schedule=schedule,
                )
            accelerator.wait_for_everyone()

        # Validation grid every validation.every steps, on the main process; the others wait.
        if cfg.validation.every and step % cfg.validation.every == 0:
            if validator is not None:
                validator.render(unet, step, run_dir, writer, None if dtype == torch.float32 else dtype)
            accelerator.wait_for_everyone()
    bar.close()
    del batches

    # Export the model bundle (EMA weights when on) and the run manifest.
    peak = _peak_memory(device)
    img_s = sum(rates[1:]) / len(rates[1:]) if len(rates) > 1 else (rates[0] if rates else None)
    if accelerator.is_main_process:
        writer.close()
        meta = _bundle_meta(cfg, model_meta, text.meta, step, source=str(run_dir))
        _export_bundle(run_dir / "model", meta, unet, ema)
        write_manifest(
            run_dir / "manifest.json",
            stage="train",
            config=cfg,
            seed=cfg.seed,
            started=started,
            inputs={
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
                "cases": dataset.cases,
                "skipped_pairs": dataset.skipped,
            },
            extra={
                "peak_memory": peak,
                "img_s": img_s,
                "processes": world,
                "precision": dtype_name(dtype),
                "init": init,
                "optimizer_changes_on_resume": optimizer_changes,
            },
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(run_dir, run_dir / "model", step, peak, img_s, world)
