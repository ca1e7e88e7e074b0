"""The training stages' configs (train-vae, encode-latents, train, distill) and their nested sections.

Typed, described and torch-free: the CLI builds each stage's options from these models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from histoldm.config import AutocastDtypeName, DtypeName, StrictModel

Decay = Literal["constant", "cosine"]


class DataSection(StrictModel):
    """The caches train reads: no autoencoder and no text encoder runs in the loop."""

    latents: Path = Field(description="encode-latents output folder")
    text_cache: Path = Field(description="encode-text output folder")
    captions: Path = Field(description="captions.parquet")
    split: Path | None = Field(None, description="split.json; None = every captioned patch")
    split_name: str = Field("train", description="the split trained on")
    augment: Literal["none", "flips", "dihedral"] = Field(
        "dihedral", description="in latent space: flips (PathLDM's) or the 8 symmetries of the square"
    )
    crop: int | None = Field(
        None,
        ge=8,
        description="pixels: a fresh random crop of each stored patch per read (PathLDM: 256 of 448); None = whole "
        "patch",
    )
    uncond_prob: float = Field(0.1, ge=0, le=1, description="guidance dropout: share of captions replaced by empty")
    preload_text: bool = Field(True, description="keep the caption-embedding table on the device")
    workers: int = Field(2, ge=0, description="DataLoader worker processes")
    allow_missing_captions: bool = Field(
        False,
        description="train on the patches whose captions are in the text cache when "
        "some are not (their count is in the manifest); off: such a run stops and names the fix",
    )


class ModelSection(StrictModel):
    """The UNet: its preset, how it starts, and how its steps are computed."""

    unet_preset: str = Field("pathldm", description="UNet preset (histoldm.models.presets)")
    prediction_type: Literal["epsilon", "v_prediction"] = Field("epsilon", description="what the UNet predicts")
    context_dim: int | None = Field(None, description="when set, must equal the text cache's width")
    autoencoder: str = Field(
        "", description="when set, the latent cache must have been made by this autoencoder (fingerprint)"
    )
    autoencoder_fingerprint: str = Field("", description="the same check without loading the autoencoder")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass")
    checkpoint_levels: list[int] | None = Field(
        None, description="with gradient_checkpointing: only these resolution levels (0 = full); None = all"
    )
    channels_last: bool | None = Field(
        None,
        description="NHWC weights and latents; None = on CPU (measured 2-5% faster a step), off on CUDA (measured "
        "slower)",
    )
    compile: bool = Field(False, description="torch.compile the UNet (CUDA only)")
    compile_mode: Literal["full", "fullgraph", "blocks"] = Field(
        "full",
        description="blocks: each ResNet/transformer block (compiles much faster); fullgraph: one graph or an error",
    )
    init: Literal["diffusers", "compvis"] = Field(
        "diffusers",
        description="initialisation from scratch; compvis zero-inits resnet conv2, proj_out and conv_out",
    )
    init_from: Path | None = Field(
        None,
        description="start the UNet from a model bundle, run folder or CompVis checkpoint (read only when a run "
        "starts: ignored on resume)",
    )


class OptimSection(StrictModel):
    """AdamW and its learning-rate schedule."""

    lr: float = Field(2.5e-5, gt=0, description="learning rate (PathLDM's); not scaled by batch size")
    weight_decay: float = Field(0.01, description="AdamW weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    warmup_steps: int = Field(1000, ge=0, description="steps of linear warm-up from lr/warmup_steps to lr")
    decay: Decay = Field("constant", description="after warm-up: hold lr (PathLDM's), or a cosine to 0 at max_steps")
    grad_clip: float | None = Field(None, description="gradient norm clip; None = none (PathLDM); logged either way")
    min_snr_gamma: float | None = Field(
        None, description="min-SNR loss weighting with this gamma, e.g. 5.0; None = off"
    )


class ValidationSection(StrictModel):
    """An image grid during training: the same captions and seeds every time, DDIM with guidance, decoded."""

    every: int = Field(0, description="steps between grids; 0 = off")
    autoencoder: str = Field("", description="needed when on; must be the autoencoder the latent cache was made with")
    captions: list[str] = Field(
        default_factory=list, description="captions present in the text cache; empty = the cache's first n"
    )
    n: int = Field(4, description="images in the grid when captions is empty")
    steps: int = Field(25, ge=1, le=999, description="DDIM steps")
    guidance_scale: float = Field(1.75, description="classifier-free guidance scale (the seed paper's)")


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
    """`histoldm train`: the latent diffusion UNet, trained from the latent and text caches."""

    ema: bool = Field(False, description="keep an EMA copy of the UNet (the bundle then holds it)")
    ema_decay: float = Field(0.9999, description="EMA decay per step")
    log_every: int = Field(50, gt=0, description="steps between log lines")
    checkpoint_every: int = Field(5000, gt=0, description="steps between checkpoints")
    keep_checkpoints: int = Field(3, gt=0, description="newest checkpoints kept")
    data: DataSection = Field(description="the caches trained on")
    model: ModelSection = Field(default_factory=ModelSection, description="the UNet and how it starts")
    optim: OptimSection = Field(default_factory=OptimSection, description="AdamW and its learning-rate schedule")
    validation: ValidationSection = Field(
        default_factory=ValidationSection, description="image grid during training; off by default"
    )

    @model_validator(mode="after")
    def _checkpoint_every_within_run(self) -> TrainConfig:
        """A run shorter than checkpoint_every checkpoints at its end: the interval is at most the run."""
        if self.checkpoint_every > self.max_steps:
            self.checkpoint_every = self.max_steps
        return self


class DistillData(StrictModel):
    """The caches distill reads: the teacher's training caches."""

    latents: Path = Field(description="encode-latents folder the teacher was trained on")
    text_cache: Path = Field(description="encode-text folder of the training captions")
    captions: Path = Field(description="captions.parquet")
    split: Path | None = Field(None, description="split.json; None = every captioned patch")
    split_name: str = Field("train", description="the split to distil on")
    augment: Literal["none", "flips", "dihedral"] = Field(
        "dihedral", description="latent-space flips / the 8 symmetries of the square"
    )
    crop: int | None = Field(
        None, ge=8, description="pixels: a random crop per read, as the teacher's training (None = whole patch)"
    )
    preload_text: bool = Field(True, description="keep the caption-embedding table on the device")
    workers: int = Field(0, ge=0, description="DataLoader worker processes")


class DistillConfig(TrainingRunConfig):
    """`histoldm distill`: a trained bundle -> a few-step student by latent consistency distillation."""

    name: str = Field("turbo", description="run name: the run folder is RUNS_DIR/{id:05d}-{name}")
    batch_size: int = Field(
        16, gt=0, description="per process, per micro-batch (each costs 4 UNet passes: student, teacher x2, target)"
    )
    precision: DtypeName = Field(
        "bfloat16",
        description="autocast dtype of the UNets (also on CPU); auto: bfloat16 where supported, else float32",
    )
    teacher: Path = Field(description="the trained model bundle (or training run folder) to distil")
    solver_steps: int = Field(
        50,
        ge=2,
        le=1000,
        description="the teacher's DDIM grid: one distillation step jumps 1000/N training steps (LCM: 50)",
    )
    guidance_range: tuple[float, float] = Field(
        (1.0, 3.0), description="guidance scales drawn per sample; the student samples at any scale in this range"
    )
    embedding_dim: int = Field(
        256, ge=2, description="width of the guidance-scale embedding added to the timestep embedding"
    )
    target_decay: float = Field(
        0.95,
        ge=0,
        lt=1,
        description="EMA decay of the consistency target (LCM: 0.95); the bundle holds the target's weights",
    )
    loss: Literal["l2", "huber"] = Field(
        "huber", description="distance between student and target: LCM's pseudo-Huber (c=0.001) or squared error"
    )
    log_every: int = Field(50, gt=0, description="steps between log lines")
    checkpoint_every: int = Field(500, gt=0, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, gt=0, description="newest checkpoints kept")
    data: DistillData = Field(description="the teacher's training caches")
    optim: OptimSection = Field(
        OptimSection(lr=1e-5, warmup_steps=100), description="AdamW and its schedule (train's optim section)"
    )

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        if not 0 < self.guidance_range[0] <= self.guidance_range[1]:
            raise ValueError(f"guidance_range {list(self.guidance_range)}: needs 0 < lo <= hi")
        if self.embedding_dim % 2:
            raise ValueError(f"embedding_dim {self.embedding_dim}: needs an even width (sin and cos halves)")
        if self.optim.min_snr_gamma is not None:
            raise ValueError(
                "optim.min_snr_gamma: a weighting of train's diffusion loss; distill's consistency loss has none"
            )
        return self


class TrainVAEConfig(StrictModel):
    """`histoldm train-vae`: a KL autoencoder trained or fine-tuned on a patch store."""

    store: Path = Field(description="patch store folder (with patches.parquet)")
    out: Path = Field(description="output folder (autoencoder/ + metrics.json + manifest.json)")
    init: str = Field(
        "kl-f4", description="start from: a KL preset (random weights) or an AutoencoderKL folder / hub id to fine-tune"
    )
    steps: int = Field(20000, gt=0, description="optimizer steps")
    batch_size: int = Field(8, gt=0, description="patches per step")
    lr: float = Field(1e-4, gt=0, description="learning rate")
    decay: Decay = Field(
        "constant", description="learning rate after the start: constant, or a cosine to 0 at the last step"
    )
    kl_weight: float = Field(1e-6, ge=0, description="weight of the KL term")
    crop: int | None = Field(None, ge=8, description="random square crop of this many pixels (default: whole patches)")
    image_size: int | None = Field(
        None, ge=8, description="resize patches to this many pixels first (default: as stored)"
    )
    holdout_patches: int = Field(
        256, gt=0, description="without --split: hold out whole cases with at least this many patches"
    )
    split: Path | None = Field(
        None, description="split.json: train on its train cases, report PSNR/SSIM on the others (no test patch seen)"
    )
    precision: AutocastDtypeName = Field(
        "auto",
        description="autocast dtype; auto: bfloat16 on a GPU that supports it, else float32 (no float16: no loss "
        "scaler here)",
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    seed: int = Field(0, description="random seed")
    workers: int = Field(2, ge=0, description="image-decoding worker processes")
    preload: bool = Field(
        False, description="decode the training patches once and keep them in memory (small stores: the demo)"
    )
    channels_last: bool | None = Field(
        None, description="NHWC model and images (default: on CPU only, measured 0-20% faster a step there)"
    )
    log_every: int = Field(100, gt=0, description="steps between log lines")
    checkpoint_every: int = Field(2000, gt=0, description="steps between checkpoints")
    resume: str = Field("auto", description="auto (resume OUT if it has a checkpoint) | latest | none | PATH")

    @model_validator(mode="after")
    def _checkpoint_every_within_run(self) -> TrainVAEConfig:
        """A run shorter than checkpoint_every checkpoints at its end: the interval is at most the run."""
        if self.checkpoint_every > self.steps:
            self.checkpoint_every = self.steps
        return self


class EncodeLatentsConfig(StrictModel):
    """`histoldm encode-latents`: every patch of a store encoded once into latent shards."""

    store: Path = Field(description="patch store folder (with patches.parquet)")
    vae: str = Field(description="autoencoder: vq-f4 | kl-f4 | kl-f4-tiny | kl-f4-lite | local folder | hub id")
    out: Path = Field(description="output folder")
    batch_size: int = Field(32, description="patches per encoder call")
    shard_size: int = Field(8192, description="patches per shard file")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    precision: AutocastDtypeName = Field(
        "auto", description="autocast dtype; auto: bfloat16 on a GPU that supports it, else float32"
    )
    scale_batches: int = Field(4, description="KL: batches used to measure the latent std")
    scaling_factor: float | None = Field(None, description="override the measured (KL) or preset (VQ) scaling factor")
    workers: int = Field(2, description="image-decoding worker processes")
    image_size: int | None = Field(
        None, ge=8, description="resize patches to this many pixels before encoding (default: as stored)"
    )
