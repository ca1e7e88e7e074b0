"""`histoldm train-vae`: train or fine-tune a KL autoencoder (f = 4) on a patch store.

Loss: L1 reconstruction + kl_weight * KL(posterior || N(0, I)) (CompVis' weight 1e-6). The LPIPS
perceptual term and the patch-GAN term of CompVis' recipe are left out: their weights are not
available offline, and an L1 + KL model is what the latent cache needs to be well defined.

Held-out patches are whole cases (chosen by a hash of the case id, so the choice is stable and
no slide leaks into both sides); PSNR and SSIM on them go into metrics.json. Single device; the
run checkpoints and resumes with the same machinery as the LDM trainer (histoldm.train.checkpoint).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from histoldm.config import normalise_dtype_name
from histoldm.data.splits import load_split
from histoldm.data.store import PatchStore
from histoldm.devices import resolve_device, resolve_dtype, training_memory_format
from histoldm.errors import UserError
from histoldm.fileio import append_jsonl, atomic_write_json, follow_umask, settings_changes
from histoldm.manifest import write_manifest
from histoldm.models.autoencoder import load_autoencoder
from histoldm.train.checkpoint import (
    clean_partial,
    describe_changes,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
    truncate_stats,
)
from histoldm.train.config import TrainVAEConfig
from histoldm.train.data import ResumableSampler, augment_dihedral, step_generator
from histoldm.train.latents import PatchImages, as_list, image_batches
from histoldm.train.loop import is_due
from histoldm.train.lr_schedule import make_lr_scheduler


def _split_cases(store: Path, holdout: int, split: Path | None) -> tuple[list[Path], list[Path]]:
    table = PatchStore.open(store).table.select(["case_id", "path"]).to_pydict()
    order = sorted(set(table["case_id"]), key=lambda c: hashlib.sha256(str(c).encode()).hexdigest())
    if split is not None:
        assigned = load_split(split)
        held = {c for c in order if assigned.get(c) != "train"}
    else:
        held = set()
        counts = {c: 0 for c in order}
        for c in table["case_id"]:
            counts[c] += 1
        for c in order:
            if sum(counts[h] for h in held) >= holdout:
                break
            held.add(c)
    train = [store / p for p, c in zip(table["path"], table["case_id"]) if c not in held]
    test = [store / p for p, c in zip(table["path"], table["case_id"]) if c in held]
    if (not train or not test) and split is not None:
        in_train = sum(c not in held for c in order)
        raise UserError(
            f"{split}: puts {in_train} of the {len(order)} cases of {store} in train and {len(order) - in_train} in "
            f"its other splits ({len(train)} training, {len(test)} held-out patches); train-vae needs cases on both "
            "sides: split again with a larger test share (histoldm split --fractions train=0.8,test=0.2)"
        )
    if not train or not test:
        raise UserError(
            f"{store}: holding out at least holdout_patches={holdout} patches as whole cases leaves {len(train)} of "
            f"{len(table['path'])} for training ({len(order)} cases); give --split SPLIT.json (the split the LDM "
            "trains on) or lower --set holdout_patches=N"
        )
    return train, test


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = (g / g.sum()).float()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5) of images in [0, 1]."""
    c = a.shape[1]
    w = _gaussian_window().to(a).expand(c, 1, 11, 11)
    mu_a, mu_b = F.conv2d(a, w, groups=c), F.conv2d(b, w, groups=c)
    var_a = F.conv2d(a * a, w, groups=c) - mu_a**2
    var_b = F.conv2d(b * b, w, groups=c) - mu_b**2
    cov = F.conv2d(a * b, w, groups=c) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean(dim=(1, 2, 3))


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [0, 1]."""
    mse = (a - b).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


def _load_model(spec: str):
    from diffusers import AutoencoderKL

    ae = load_autoencoder(spec)
    if ae.kind != "kl":
        raise UserError(f"{spec}: train-vae trains KL autoencoders; this is a {ae.kind.upper()} model")
    if len(ae.model.config.block_out_channels) != 3:
        raise UserError(f"{spec}: expected a downsampling factor of 4 (three blocks)")
    model: AutoencoderKL = ae.model
    return model.requires_grad_(True).train()


def _stack_ok(items) -> torch.Tensor | None:
    images = [img for img, ok, _ in items if ok]
    if not images:
        return None
    shape = images[0].shape
    return torch.stack([im for im in images if im.shape == shape])


@torch.no_grad()
def evaluate(
    model, paths: list[Path], batch_size: int, device: torch.device, dtype: torch.dtype, size: int | None = None
) -> dict:
    """PSNR and SSIM of reconstructions (posterior mean) of the held-out patches."""
    model.eval()
    psnrs, ssims = [], []
    for items in image_batches(paths, batch_size, 0, size):
        x = _stack_ok(items)
        if x is None:
            continue
        x = x.to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            rec = model.decode(model.encode(x).latent_dist.mean).sample
        a, b = (x.float() + 1) / 2, (rec.float().clamp(-1, 1) + 1) / 2
        psnrs.append(psnr(a, b).cpu())
        ssims.append(ssim(a, b).cpu())
    model.train()
    if not psnrs:
        raise UserError("held-out patches: none readable")
    return {
        "psnr": float(torch.cat(psnrs).mean()),
        "ssim": float(torch.cat(ssims).mean()),
        "n": int(sum(len(p) for p in psnrs)),
    }


# Settings a resumed autoencoder run may change: how long, how often it saves and logs, how it loads, its memory
# layout, and the learning rate (applied from the resumed step on, like the LDM trainer's optimizer settings).
RESUMABLE_CHANGES = {
    "steps",
    "log_every",
    "checkpoint_every",
    "workers",
    "preload",
    "channels_last",
    "resume",
    "device",
    "lr",
    "decay",
}


def _check_same_training(out: Path, cfg: TrainVAEConfig, resuming: bool) -> None:
    """Resuming with other data or hyper-parameters would overwrite the autoencoder with a mix of two."""
    if not resuming:
        return
    changes = settings_changes(out / "config.json", cfg.model_dump(mode="json", exclude=RESUMABLE_CHANGES))
    # a run recorded with an older spelling (bf16, fp32) resumes under the one vocabulary's name
    changed = sorted(
        k for k, (old, new) in changes.items() if not (k == "precision" and normalise_dtype_name(old) == new)
    )
    if changed:
        raise UserError(
            f"{out}: holds an autoencoder run with other {', '.join(changed)}; choose another --out (or resume: none)"
        )


def _batches(paths: list[Path], sampler, cfg: TrainVAEConfig):
    """Per step, the sampler's batch as (image, ok, error) items: decoded by a DataLoader, or, with
    `preload`, decoded once up front (at the demo's 64 px the decoding cost as much as the model's step)."""
    images = PatchImages(paths, cfg.image_size)
    if not cfg.preload:
        yield from torch.utils.data.DataLoader(
            images, batch_sampler=sampler, num_workers=cfg.workers, collate_fn=as_list
        )
        return
    decoded = [images[i] for i in range(len(images))]
    for indices in sampler:
        yield [decoded[i] for i in indices]


# train-vae's random streams (step_generator's `stream`): flips, then the posterior's sample, share one
# generator; crop offsets have their own. The numbers are part of every run's random draws.
VAE_FLIPS_AND_NOISE = 0
VAE_CROP = 1


def _train_step(
    model,
    optimizer,
    x: torch.Tensor,
    cfg: TrainVAEConfig,
    step: int,
    dtype: torch.dtype,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """One L1 + KL step on dihedral flips (and random crops) of a batch; returns the detached loss."""
    gen = step_generator(cfg.seed, step, 0, x.device, VAE_FLIPS_AND_NOISE)
    x = augment_dihedral(x, gen)
    if cfg.crop is not None and cfg.crop < x.shape[-1]:
        crop_gen = step_generator(cfg.seed, step, 0, torch.device("cpu"), VAE_CROP)
        top, left = torch.randint(0, x.shape[-1] - cfg.crop + 1, (2,), generator=crop_gen).tolist()
        x = x[..., top : top + cfg.crop, left : left + cfg.crop]
    x = x.contiguous(memory_format=memory_format)
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
        posterior = model.encode(x).latent_dist
        rec = model.decode(posterior.sample(gen)).sample
    loss = F.l1_loss(rec.float(), x) + cfg.kl_weight * posterior.kl().float().mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


@dataclass(frozen=True)
class TrainVAEResult:
    """`histoldm train-vae`: the autoencoder folder and its held-out reconstruction quality."""

    autoencoder: Path
    psnr: float  # dB, mean over the held-out patches
    ssim: float
    n: int  # held-out patches measured


def _resume(out: Path, resume_from: Path, slots: dict, schedule: dict) -> dict:
    """Restore model, optimizer and schedule from the checkpoint (the lr is the config's); the log lines
    after it are re-made, so they are cut from stats.jsonl. Returns load_checkpoint's state."""
    state = load_checkpoint(resume_from, **slots, schedule=schedule)
    truncate_stats(out / "stats.jsonl", state["step"])
    print(f"train-vae: resumed from {resume_from} at step {state['step']}")
    if state["optimizer_changes"]:
        print(f"train-vae: resuming with the config's {describe_changes(state['optimizer_changes'])}")
    return state


def run_train_vae(cfg: TrainVAEConfig) -> TrainVAEResult:
    started = time.time()

    # Data and device: held-out cases first, precision checked before any compute.
    train_paths, test_paths = _split_cases(Path(cfg.store), cfg.holdout_patches, cfg.split)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.precision, device, stage="train-vae precision")
    out = Path(cfg.out)
    resume_from = resolve_resume(out, cfg.resume)
    _check_same_training(out, cfg, resume_from is not None)

    # Model and optimizer (constant LR or a cosine to 0), restored from the latest checkpoint when there is one.
    torch.manual_seed(cfg.seed)
    memory_format = training_memory_format(cfg.channels_last, device)
    model = _load_model(cfg.init).to(device, memory_format=memory_format)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.5, 0.9), weight_decay=0.0, fused=device.type == "cuda" or None
    )
    lr_scheduler, schedule = make_lr_scheduler(optimizer, 0, cfg.decay, cfg.steps)
    out.mkdir(parents=True, exist_ok=True)
    clean_partial(out)
    atomic_write_json(out / "config.json", cfg.model_dump(mode="json"))
    slots = {"model": model, "ema": None, "optimizer": optimizer, "lr_scheduler": lr_scheduler, "scaler": None}
    resumed = _resume(out, resume_from, slots, schedule) if resume_from is not None else {}
    step, optimizer_changes = resumed.get("step", 0), resumed.get("optimizer_changes", {})

    # Training loop; NaN is checked at every host sync, so no checkpoint ever holds diverged weights.
    sampler = ResumableSampler(len(train_paths), cfg.batch_size, cfg.seed, start=step)
    batches = _batches(train_paths, sampler, cfg)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    start = step
    for step in tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train-vae", unit="step"):
        x = _stack_ok(next(batches))
        if x is not None:
            loss = _train_step(model, optimizer, x.to(device, non_blocking=True), cfg, step, dtype, memory_format)
            nonfinite |= ~torch.isfinite(loss)
        lr_scheduler.step()
        log_now, checkpoint_now = (
            is_due(step + 1, cfg.log_every, cfg.steps),
            is_due(step + 1, cfg.checkpoint_every, cfg.steps),
        )
        if log_now or checkpoint_now:  # the only host syncs
            if bool(nonfinite):
                raise UserError(f"{out}: loss became NaN or infinite by step {step + 1}; last good checkpoint kept")
            if x is not None and log_now:
                append_jsonl(out / "stats.jsonl", [{"step": step + 1, "loss": float(loss), "time": time.time()}])
            if checkpoint_now:
                save_checkpoint(out, step + 1, **slots, data_position=step + 1, keep=1, schedule=schedule)
    del batches

    # Evaluate on the held-out cases, save with safetensors, write metrics and manifest.
    metrics = evaluate(model, test_paths, cfg.batch_size, device, dtype, cfg.image_size)
    model.to(memory_format=torch.contiguous_format).save_pretrained(out / "autoencoder", safe_serialization=True)
    follow_umask(out / "autoencoder")
    held_out_by = f"split {cfg.split} (cases not in train)" if cfg.split else "sha256(case_id) order"
    atomic_write_json(out / "metrics.json", {**metrics, "held_out_cases_by": held_out_by, "steps": cfg.steps})
    write_manifest(
        out / "manifest.json",
        stage="train-vae",
        config=cfg,
        inputs={"store": Path(cfg.store) / "patches.parquet", "init": cfg.init, "split": cfg.split},
        produced={"autoencoder": str(out / "autoencoder"), **metrics, "train_patches": len(train_paths)},
        started=started,
        seed=cfg.seed,
        extra={"optimizer_changes_on_resume": optimizer_changes},
    )
    return TrainVAEResult(out / "autoencoder", **metrics)
