"""The sampling stages' configs (sample, sample-region) and the presets that fill their solver fields.

Typed, described and torch-free: the CLI builds each stage's options from these models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, model_validator

from histoldm.config import DtypeName, Numerics, StrictModel
from histoldm.data.config import DEFAULT_TEMPLATE, KNOWN_PLACEHOLDERS, placeholders

# `preset` fills the solver fields a config or flag leaves unset (docs/sampling.md says which to use for what, as
# measured): paper = PathLDM's DDIM-50 with the seed paper's guidance 1.75 everywhere (PathLDM's notebook: 1.5);
# fast = DPM-Solver++ 2M in fewer steps with guidance only on an interval of noise levels (the unconditional UNet
# pass skipped elsewhere).
SAMPLE_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"solver": "ddim", "steps": 50, "guidance": 1.75, "guidance_interval": None},
    # (44, 634): the sigma interval (0.28, 5.42] Kynkaanniemi et al. found for SD-XL, on PathLDM's schedule
    "fast": {"solver": "dpmpp", "steps": 12, "guidance": 1.75, "guidance_interval": (44, 634)},
    # a student made by `histoldm distill`: 4 consistency steps, one UNet pass each, guidance an input. The
    # student follows a scale more weakly than its teacher's guided DDIM: at 2.5 its FID and condition adherence
    # come closest to the teacher's at 1.75 (docs/sampling.md)
    "turbo": {"solver": "lcm", "steps": 4, "guidance": 2.5, "guidance_interval": None},
}

RegionPreset = Literal["paper", "fast"]  # a region is sampled by a teacher: no distilled student's turbo
REGION_PRESETS = get_args(RegionPreset)
LCM_MAX_STEPS = 8  # a consistency student is distilled for 1-8 steps

REGION_PLACEHOLDERS = {"tumor", "til", "summary"}


def fill_from_preset(data: Any) -> Any:
    """The preset's value for each solver field left unset (absent, or None where None cannot mean anything
    else); a value given beside the preset wins. guidance_interval None means every step, so only its absence
    takes the preset's."""
    if not isinstance(data, dict):
        return data
    preset = SAMPLE_PRESETS.get(data.get("preset", "paper"), {})  # an unknown name fails on the field itself
    unset = {k for k in preset if k not in data or (data[k] is None and k != "guidance_interval")}
    return {**data, **{k: preset[k] for k in unset}}


def _from_preset(field: str, presets: tuple[str, ...] = tuple(SAMPLE_PRESETS)) -> str:
    """'(default: from --preset: paper 50, fast 12, turbo 4)': what each preset gives a field left unset."""
    shown = {None: "every step"}
    values = (SAMPLE_PRESETS[name][field] for name in presets)
    given = ", ".join(
        f"{name} {shown.get(v, v) if not isinstance(v, tuple) else ' '.join(map(str, v))}"
        for name, v in zip(presets, values)
    )
    return f"(default: from --preset: {given})"


class SampleConfig(StrictModel):
    """`histoldm sample`: one image per caption; the preset fills the solver fields left unset."""

    renamed_keys = {"precision": "numerics"}  # `precision` names autocast dtypes only (train, train-vae)

    checkpoint: Path = Field(description="model bundle folder, or a training run folder (uses RUN/model/)")
    out: Path = Field(description="output folder (re-run into it to resume)")
    captions: Path | None = Field(None, description=".txt (one per line), .jsonl (id, caption) or captions.parquet")
    prompt: str | None = Field(None, description="one caption instead of --captions")
    num_images: int = Field(1, ge=1, description="images for --prompt")
    split: Path | None = Field(None, description="split.json: sample only the cases of --split-name (captions.parquet)")
    split_name: str = Field("test", description="the split --split selects")
    preset: Literal["paper", "fast", "turbo"] = Field(
        "paper",
        description="paper: DDIM 50 steps, guidance 1.75; fast: DPM-Solver++ 2M, fewer steps, guidance on an "
        "interval; turbo: a distilled student (histoldm distill), 4 steps (docs/sampling.md); options "
        "given beside it win",
    )
    steps: int | None = Field(None, ge=1, le=999, description=f"solver steps {_from_preset('steps')}")
    guidance: float | None = Field(
        None,
        description=f"classifier-free guidance scale (1 = conditional only) {_from_preset('guidance')}",
    )
    guidance_interval: tuple[int, int] | None = Field(
        None,
        description="LO HI: guide only at training timesteps LO..HI (0-999, Kynkaanniemi et al. 2024); elsewhere the "
        f"unconditional UNet pass is skipped {_from_preset('guidance_interval')}",
    )
    solver: Literal["ddim", "dpmpp", "unipc", "lcm"] | None = Field(
        None,
        description="ddim, dpmpp = DPM-Solver++ 2M, unipc = UniPC (try --steps 20), or lcm = consistency steps of a "
        f"distilled student {_from_preset('solver')}",
    )
    eta: float = Field(0.0, ge=0.0, description="DDIM eta; 0 = deterministic DDIM, as PathLDM")
    batch_size: int = Field(16, ge=1, description="images per UNet call (the UNet sees twice as many: cond + uncond)")
    decode_batch: int = Field(
        32, ge=1, description="images per decoder call: a 256 px decoder needs ~0.3 GiB per image in fp32"
    )
    seed: int = Field(0, description="base seed; each image is seeded from (seed, id)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the models run")
    dtype: DtypeName = Field(
        "auto",
        description="auto: bfloat16 on a CUDA device that supports it, else float32 (histoldm.devices.resolve_dtype)",
    )
    numerics: Numerics = Field(
        "default",
        description="default: ours; pathldm: PathLDM's numerics (fp32 text encoder, fp32 UNet under fp16 autocast, "
        "8-bit by truncation)",
    )
    text_encoder: str | None = Field(
        None, description="text encoder to use (default: the checkpoint's); must match the checkpoint's fingerprint"
    )
    text_cache: Path | None = Field(
        None, description="encode-text folder to take caption embeddings from instead of the encoder"
    )
    compile: bool = Field(
        False, description="torch.compile the UNet (pays off for long runs; on a CPU it needs a C++ compiler)"
    )
    compile_mode: Literal["full", "fullgraph", "blocks"] = Field(
        "full", description="whole UNet, whole UNet as one graph, or block by block (faster to compile)"
    )
    compile_tuning: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default",
        description="torch.compile mode: reduce-overhead = CUDA graphs; max-autotune = tuned kernels + CUDA graphs",
    )
    channels_last: bool = Field(
        False, description="NHWC UNet on CUDA: measured 18% slower (docs/performance.md), kept as an option"
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        return fill_from_preset(data)

    @model_validator(mode="after")
    def _check_interval(self) -> SampleConfig:
        if (
            self.guidance_interval is not None
            and not 0 <= self.guidance_interval[0] <= self.guidance_interval[1] <= 999
        ):
            raise ValueError(
                f"guidance_interval {list(self.guidance_interval)}: needs 0 <= lo <= hi <= 999 (training timesteps)"
            )
        if self.solver == "lcm" and self.steps > LCM_MAX_STEPS:
            raise ValueError(f"steps {self.steps}: a distilled student samples in 1-{LCM_MAX_STEPS} steps")
        if self.solver == "lcm" and self.guidance_interval is not None:
            raise ValueError(
                "guidance_interval: a distilled student has guidance baked in (no unconditional pass to skip)"
            )
        return self


class RegionConfig(StrictModel):
    """`histoldm sample-region`: regions larger than the model, one caption per window from a label map."""

    renamed_keys = {"precision": "numerics"}

    checkpoint: Path = Field(description="model bundle folder, or a training run folder (uses RUN/model/)")
    out: Path = Field(description="output folder (re-run into it to resume)")
    size: int = Field(1024, ge=8, description="region side in pixels (square); at least the model's image size")
    label_map: Path | None = Field(
        None,
        description="CSV (cells TUMOR/TIL, e.g. high/low) or PNG (red = tumour, green = TIL probability x 255): one "
        "cell per window",
    )
    level: str | None = Field(
        None, description="one TUMOR/TIL level for every window instead of --label-map, e.g. high/low"
    )
    summary: str = Field("", description="the case's report summary ({summary} of the template)")
    template: str = Field(
        DEFAULT_TEMPLATE, description="caption of each window, filled from its map cell as training captions are"
    )
    levels: list[str] = Field(
        default_factory=lambda: ["low", "high"], description="level names the map may use (the captions' --levels)"
    )
    regions: Path | None = Field(
        None,
        description="JSONL, one region a line: id, and optionally summary, label_map (path relative to the file), "
        "level, size; overrides --num-regions",
    )
    num_regions: int = Field(1, ge=1, description="regions of the flags' settings (ids 000001, ...; each its own seed)")
    stride: int | None = Field(
        None, ge=1, description="window stride in latent pixels (default: half the model's latent size)"
    )
    preset: RegionPreset = Field(
        "paper",
        description="as in `sample`: paper = DDIM 50, guidance 1.75; fast = DPM-Solver++ 2M, 12 steps, guidance on "
        "an interval",
    )
    steps: int | None = Field(None, ge=1, le=999, description=f"solver steps {_from_preset('steps', REGION_PRESETS)}")
    guidance: float | None = Field(
        None,
        description=f"classifier-free guidance scale (1 = conditional only) {_from_preset('guidance', REGION_PRESETS)}",
    )
    guidance_interval: tuple[int, int] | None = Field(
        None,
        description="LO HI: guide only at training timesteps LO..HI "
        f"{_from_preset('guidance_interval', REGION_PRESETS)}",
    )
    solver: Literal["ddim", "dpmpp", "unipc"] | None = Field(
        None, description=f"ddim, dpmpp (DPM-Solver++ 2M) or unipc {_from_preset('solver', REGION_PRESETS)}"
    )
    eta: float = Field(0.0, ge=0.0, description="DDIM eta")
    batch_size: int = Field(64, ge=1, description="windows per UNet call (the UNet sees twice as many with guidance)")
    decode_tile: int | None = Field(
        None, ge=1, description="latent pixels per decoder tile (default: the model's latent size)"
    )
    decode_stride: int | None = Field(
        None, ge=1, description="decoder tile stride in latent pixels (default: half a tile)"
    )
    decode_batch: int = Field(4, ge=1, description="tiles per decoder call")
    mpp: float = Field(
        1.0, gt=0, description="microns per pixel of the model's images (10x: ~1.0), written to the TIFF"
    )
    preview_size: int = Field(1024, ge=16, description="longest side of the PNG preview")
    seed: int = Field(0, description="base seed; each region is seeded from (seed, id)")
    shard: tuple[int, int] | None = Field(
        None, description="K/N: make only regions K, K+N, ... (0 <= K < N); jobs share --out"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the models run")
    dtype: DtypeName = Field("auto", description="UNet dtype, as in `sample`")
    numerics: Numerics = Field("default", description="default or pathldm numerics, as in `sample`")
    text_encoder: str | None = Field(None, description="text encoder to use (default: the checkpoint's)")
    text_cache: Path | None = Field(None, description="encode-text folder holding every window caption")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        return fill_from_preset(data)

    @model_validator(mode="after")
    def _check(self) -> RegionConfig:
        if self.shard is not None and not 0 <= self.shard[0] < self.shard[1]:
            raise ValueError(f"shard {self.shard[0]}/{self.shard[1]}: needs 0 <= K < N")
        if unknown := placeholders(self.template) - REGION_PLACEHOLDERS:
            raise ValueError(
                f"template placeholders {sorted(unknown)} have no value in a region (it fills "
                f"{sorted(REGION_PLACEHOLDERS)}; "
                f"captions knows {sorted(KNOWN_PLACEHOLDERS)})"
            )
        if self.regions is None and (self.label_map is None) == (self.level is None):
            raise ValueError("give exactly one of label_map and level (or a regions file)")
        return self

    def sample_config(self) -> SampleConfig:
        """The patch sampler's config with the same model, numerics and solver (it loads the models)."""
        keep = (
            "checkpoint",
            "out",
            "steps",
            "guidance",
            "guidance_interval",
            "solver",
            "eta",
            "seed",
            "device",
            "dtype",
            "numerics",
            "text_encoder",
            "text_cache",
        )
        return SampleConfig(prompt="region", preset=self.preset, **{k: getattr(self, k) for k in keep})
