"""The machinery of a UNet training loop that train and distill share: processes and precision (accelerate),
the optimizer and its schedule, what a checkpoint holds, and the loss and throughput between log lines.
The loops themselves (trainer.py, distill.py) only orchestrate these."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from histoldm.devices import resolve_dtype
from histoldm.errors import UserError
from histoldm.train.checkpoint import (
    describe_changes,
    load_checkpoint,
    read_latest,
    resolve_resume,
    save_checkpoint,
    truncate_stats,
)
from histoldm.train.data import BatchRecipe, ResumableSampler
from histoldm.train.ema import EMA
from histoldm.train.lr_schedule import make_lr_scheduler
from histoldm.train.run_folder import report_training_data, resolve_run_dir

if TYPE_CHECKING:
    from accelerate import Accelerator

# The one place the resolved dtype becomes accelerate's mixed_precision (float32: no autocast).
MIXED_PRECISION = {torch.float32: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class Session:
    """This process's part of a run: accelerate's view of the processes, the autocast dtype, the run folder
    every rank agrees on and the checkpoint it resumes from (None: a run that starts here)."""

    accelerator: Accelerator
    dtype: torch.dtype
    run_dir: Path
    resume_from: Path | None

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def on_gpu(self) -> bool:
        return self.accelerator.device.type == "cuda"

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


def start_session(cfg, stage: str, dataset) -> Session:
    """Processes, precision and run folder for a TrainingRunConfig `cfg`: rank 0 says what it trains on
    and chooses the folder; every rank takes that folder and its resume point."""
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list

    use_cpu = (
        cfg.cpu
        or not torch.cuda.is_available()
        or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    )
    device = torch.device("cpu" if use_cpu else "cuda")
    dtype = resolve_dtype(cfg.precision, device, stage=f"{stage} precision", training=True)
    accelerator = Accelerator(mixed_precision=MIXED_PRECISION[dtype], cpu=use_cpu)  # cpu=True: gloo DDP, torchrun
    if accelerator.is_main_process:
        report_training_data(cfg, len(dataset), dataset.cases, stage)
    chosen = str(resolve_run_dir(cfg, stage)) if accelerator.is_main_process else None
    run_dir = Path(broadcast_object_list([chosen])[0])
    return Session(accelerator, dtype, run_dir, resolve_resume(run_dir, cfg.resume))


def make_optimizer(unet: torch.nn.Module, optim, max_steps: int, on_gpu: bool):
    """AdamW over the UNet and its warm-up / decay schedule, from an OptimSection; the schedule's
    settings dict is kept in checkpoints. Returns (optimizer, lr_scheduler, schedule)."""

    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay, fused=on_gpu or None
    )
    lr_scheduler, schedule = make_lr_scheduler(optimizer, optim.warmup_steps, optim.decay, max_steps)
    return optimizer, lr_scheduler, schedule


def caption_table(text, preload: bool, session: Session) -> torch.Tensor:
    """The caption-embedding table with the empty caption last: on the device when preloaded, else pinned
    host memory on a GPU (rows are then gathered on the host and copied)."""
    table = text.table_with_uncond()
    return table.to(session.device) if preload else (table.pin_memory() if session.on_gpu else table)


def batch_recipe(
    cfg, session: Session, window: int, memory_format: torch.memory_format, uncond_row: int, **stage: Any
) -> BatchRecipe:
    """The micro-batch recipe of this session and rank from the config's seed and data section (augment,
    preload_text); `stage` gives what the stage decides itself (uncond_prob, streams)."""
    return BatchRecipe(
        seed=cfg.seed,
        rank=session.accelerator.process_index,
        device=session.device,
        window=window,
        augment=cfg.data.augment,
        memory_format=memory_format,
        uncond_row=uncond_row,
        preload_text=cfg.data.preload_text,
        **stage,
    )


def make_loader(dataset, batch_size: int, seed: int, workers: int, session: Session, start: int):
    """A seeded, resumable order per rank (`start`: batches already seen), pinned when copied to a GPU."""

    accelerator = session.accelerator
    sampler = ResumableSampler(
        len(dataset), batch_size, seed, accelerator.process_index, accelerator.num_processes, start=start
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=session.on_gpu,
        persistent_workers=workers > 0,
    )


@dataclass
class TrainingState:
    """What a checkpoint holds besides the RNG and the data position: the UNet, its EMA (distill: the
    consistency target), the optimizer, the LR scheduler and the schedule's settings."""

    unet: torch.nn.Module
    ema: EMA | None
    optimizer: torch.optim.Optimizer  # accelerate's wrapper after prepare
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    schedule: dict[str, Any]

    def resume(self, session: Session, stage: str) -> dict[str, Any]:
        """Restore the checkpoint the session resumes from (step, data_position, optimizer_changes); log
        lines after it are re-made by this session, so they are cut from stats.jsonl."""
        accelerator = session.accelerator
        state = load_checkpoint(
            session.resume_from,
            model=self.unet,
            ema=self.ema,
            optimizer=self.optimizer,
            lr_scheduler=self.lr_scheduler,
            scaler=accelerator.scaler,
            schedule=self.schedule,
        )
        if session.is_main:
            truncate_stats(session.run_dir / "stats.jsonl", state["step"])
        accelerator.print(f"resumed from {session.resume_from} at step {state['step']}")
        if state["optimizer_changes"]:
            changes = describe_changes(state["optimizer_changes"], "optim.")
            accelerator.print(f"{stage}: resuming with the config's {changes}")
        return state

    def optimizer_step(self, accelerator, model, grad_clip: float | None, measure_norm: bool) -> torch.Tensor | None:
        """Gradient norm (clipped when `grad_clip` is set, else only measured when asked: it reads and rescales
        every gradient), AdamW, the LR schedule, the EMA. Returns the norm when computed."""
        norm = None
        if grad_clip is not None or measure_norm:
            norm = accelerator.clip_grad_norm_(model.parameters(), grad_clip if grad_clip is not None else float("inf"))
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.unet)
        return norm

    def save(self, session: Session, step: int, data_position: int, keep: int) -> None:
        """Checkpoint `step` on the main process (`latest` moves only when it is complete); the others wait."""
        if session.is_main:
            save_checkpoint(
                session.run_dir,
                step,
                model=self.unet,
                ema=self.ema,
                optimizer=self.optimizer,
                lr_scheduler=self.lr_scheduler,
                scaler=session.accelerator.scaler,
                data_position=data_position,
                keep=keep,
                schedule=self.schedule,
            )
        session.accelerator.wait_for_everyone()


@dataclass
class LossWindow:
    """Loss and throughput between log lines. The loss is summed on the device and read only at log and
    checkpoint steps: the loop's only regular host syncs."""

    device: torch.device
    images_per_step: int
    loss_sum: torch.Tensor = field(init=False)
    nonfinite: torch.Tensor = field(init=False)
    start: float = field(init=False, default_factory=time.perf_counter)
    steps: int = 0
    rates: list[float] = field(default_factory=list)  # img/s of each closed window

    def __post_init__(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss.detach()
        self.nonfinite |= ~torch.isfinite(loss.detach())

    def stop_if_diverged(self, session: Session, step: int) -> None:
        """One host sync: a NaN never reaches a checkpoint. Reduced over ranks, so every process stops
        together instead of one waiting forever at the next barrier."""
        if session.accelerator.reduce(self.nonfinite.float(), "sum").item() > 0:
            kept = read_latest(session.run_dir) or "none yet"
            raise UserError(
                f"{session.run_dir}: loss became NaN or infinite by step {step}; stopped, "
                f"last good checkpoint kept: {kept}"
            )

    def close(self, session: Session, step: int, micro_batches: int) -> float:
        """The window's mean loss over all ranks (checked finite); its img/s joins `rates`; a new window starts."""
        mean_loss = session.accelerator.reduce(self.loss_sum, "mean").item() / (self.steps * micro_batches)
        self.stop_if_diverged(session, step)
        self.rates.append(self.steps * self.images_per_step / (time.perf_counter() - self.start))
        self.loss_sum.zero_()
        self.start, self.steps = time.perf_counter(), 0
        return mean_loss

    def mean_img_s(self) -> float | None:
        """Mean throughput over the windows after the first (which pays for warm-up), else the first."""
        rates = self.rates
        return sum(rates[1:]) / len(rates[1:]) if len(rates) > 1 else (rates[0] if rates else None)


def peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak GPU memory of this process (None on CPU, with the reason)."""
    if device.type != "cuda":
        return {"allocated_gib": None, "reserved_gib": None, "reason": "trained on CPU: no GPU memory to measure"}
    return {
        "allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
        "reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 3),
        "device": torch.cuda.get_device_name(device),
    }


def is_due(step: int, every: int, max_steps: int) -> bool:
    """Log and checkpoint steps: every `every` steps and the last."""
    return step % every == 0 or step == max_steps
