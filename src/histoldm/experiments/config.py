"""The configs of `histoldm demo` and `histoldm sweep`, torch-free so `--help` and config checks stay instant.

The stage settings of both live in one YAML file, configs/demo.yaml (histoldm/resources/configs/demo.yaml):
its `recipe` holds one section per stage, written as that stage's own config keys (`train_vae`:
TrainVAEConfig, `encode_latents`: EncodeLatentsConfig, `encode_text`: EncodeTextConfig, `train`: TrainConfig,
`sample`: SampleConfig, `evaluate`: EvaluateConfig, `distill`: DistillConfig), nested as in that config
(`recipe.train.optim.lr`).
A recipe given in a config file or by --set is read over that file, key by key, so a sweep or a user's
config names only what it changes. A stage's config is then its section plus what the experiment fills in
itself: the paths of its data and work folder and four recipe-level knobs that span stages (`image_size`,
`autoencoder`, `seed`, `n_samples`); a section that sets one of those is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from histoldm.config import StrictModel, deep_merge, key_error, nested_error, read_yaml
from histoldm.config_files import shipped_config
from histoldm.data.config import VisibleFact
from histoldm.evaluate.config import EvaluateConfig
from histoldm.models.presets import UNET_PRESETS
from histoldm.sampling.config import SampleConfig
from histoldm.summaries.config import SummarizeConfig
from histoldm.text.config import EncodeTextConfig
from histoldm.train.config import DistillConfig, EncodeLatentsConfig, TrainConfig, TrainVAEConfig

# Stage keys the experiment fills in from a recipe-level knob: a section that sets one is pointed at the knob.
KNOBS = {
    "seed": "recipe.seed",
    "image_size": "recipe.image_size",
    "init": "recipe.autoencoder",
    "vae": "recipe.autoencoder",
}
# Per stage, the keys the experiment fills in (its folders, the run's name and the knobs); nested as in the config.
OWNED: dict[str, dict[str, Any]] = {
    "train_vae": {"store": None, "out": None, "split": None, "init": None, "image_size": None, "seed": None},
    "encode_latents": {"store": None, "vae": None, "out": None, "image_size": None},
    "encode_text": {"captions": None, "out": None},
    "train": {
        "name": None,
        "run_dir": None,
        "seed": None,
        "data": {"latents": None, "text_cache": None, "captions": None, "split": None},
    },
    "sample": {"checkpoint": None, "captions": None, "out": None, "seed": None, "text_cache": None},
    "evaluate": {"real": None, "fake": None, "out": None, "seed": None, "captions": None, "adherence_mpp": None},
    "distill": {
        "teacher": None,
        "run_dir": None,
        "seed": None,
        "data": {"latents": None, "text_cache": None, "captions": None, "split": None},
    },
}


def demo_recipe() -> dict[str, Any]:
    """The `recipe` of configs/demo.yaml: the base every demo and sweep recipe is read over."""
    return read_yaml(shipped_config("demo"))["recipe"]


def stage_models() -> dict[str, type[BaseModel]]:
    """Each section's stage config."""
    return {
        "train_vae": TrainVAEConfig,
        "encode_latents": EncodeLatentsConfig,
        "encode_text": EncodeTextConfig,
        "train": TrainConfig,
        "sample": SampleConfig,
        "evaluate": EvaluateConfig,
        "distill": DistillConfig,
    }


def owned_key(given: dict[str, Any], owned: dict[str, Any]) -> tuple[str, ...] | None:
    """The first key path in both (nested sections are compared key by key)."""
    for key in given.keys() & owned.keys():
        if isinstance(given[key], dict) and isinstance(owned[key], dict):
            if sub := owned_key(given[key], owned[key]):
                return (key, *sub)
        else:
            return (key,)
    return None


def check_section(stage: str, model: type[BaseModel], section: dict[str, Any]) -> None:
    """A section is its stage's config less the keys the experiment fills in: unknown keys, bad values and
    keys the experiment owns fail here, when the recipe is loaded, not after minutes of compute."""
    if clash := owned_key(section, OWNED[stage]):
        knob = KNOBS.get(clash[-1]) if len(clash) == 1 else None
        why = f"set by the experiment from {knob}; set that instead" if knob else "set by the experiment"
        raise key_error((stage, *clash), why + (" (a path of its data or work folder, or the run's name)" * (not knob)))
    try:
        model.model_validate(section)
    except ValidationError as e:
        if any(err["type"] != "missing" for err in e.errors()):  # the owned keys are filled in later
            raise nested_error((stage,), e, skip={"missing"}) from None


class ModelRecipe(StrictModel):
    """Everything from captions to metrics for one set of summaries (one row of the sweep)."""

    image_size: int | None = Field(64, ge=8, description="resolution the models work at; null = the stored patch size")
    autoencoder: str = Field(
        "kl-f4-lite", description="a KL preset is trained here (train_vae); a VQ preset, folder or hub id is used as is"
    )
    seed: int = Field(0, description="every stage's seed; seed + 1 samples the noise floor's second set")
    n_samples: int = Field(48, ge=2, description="held-out patches whose captions are sampled (and their real images)")
    train_vae: dict[str, Any] = Field(
        default_factory=dict, description="TrainVAEConfig keys; used when `autoencoder` is a KL preset"
    )
    encode_latents: dict[str, Any] = Field(default_factory=dict, description="EncodeLatentsConfig keys")
    encode_text: dict[str, Any] = Field(default_factory=dict, description="EncodeTextConfig keys")
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig keys, nested: {optim: {lr: ...}}")
    sample: dict[str, Any] = Field(default_factory=dict, description="SampleConfig keys (both noise-floor seeds)")
    evaluate: dict[str, Any] = Field(
        default_factory=dict, description="EvaluateConfig keys; the noise floor measures with the same protocol"
    )
    distill: dict[str, Any] = Field(
        default_factory=dict, description="DistillConfig keys; used by the demo's --with-turbo (the 4-step student)"
    )

    @model_validator(mode="after")
    def _sections_are_stage_configs(self) -> ModelRecipe:
        for stage, model in stage_models().items():
            check_section(stage, model, getattr(self, stage))
        preset = self.train.get("model", {}).get("unet_preset")
        if preset is not None and preset not in UNET_PRESETS:  # the trainer finds out only after the autoencoder
            raise key_error(
                ("train", "model", "unet_preset"),
                f"unknown UNet preset '{preset}' (choose from {', '.join(UNET_PRESETS)})",
            )
        return self


def _over_demo_recipe(data: Any) -> Any:
    """A given recipe read over configs/demo.yaml's, key by key."""
    if isinstance(data, dict):
        given = data.get("recipe", {})
        data = {**data, "recipe": deep_merge(demo_recipe(), given) if isinstance(given, dict) else given}
    return data


class DemoDataConfig(StrictModel):
    """The demo dataset: the bundled CC0 slide plus synthetic H&E-like cases with known attributes."""

    magnification: float = 10.0  # PathLDM's; synthetic tiles are drawn at the same 1 um/px
    patch_size: int = 256
    overlap: int = 192  # the CC0 slide is small: without overlap 10x gives only a handful of patches
    synthetic_cases: int = Field(8, ge=2)
    tiles_per_case: int = Field(12, ge=1)
    test_fraction: float = Field(0.3, gt=0, lt=1)  # of the synthetic cases
    slide_block: int = Field(
        128, ge=16, description="side in pixels of the square blocks the slide is cut into; each block is a case"
    )
    held_out_block_rows: int = Field(
        2, ge=1, description="the slide's top block rows held out (patches overlapping them are dropped from training)"
    )
    seed: int = 0
    visible_facts: list[VisibleFact] = Field(
        default_factory=list,
        description="facts drawn per synthetic case into its tiles and stated by its report: necrosis, grade, growth",
    )


class DemoConfig(StrictModel):
    out: Path = Field(Path("demo-out"), description="output folder; a re-run resumes finished stages")
    budget: int = Field(35, description="summary length in CLIP tokens (the seed paper's best)")
    data: DemoDataConfig = DemoDataConfig()
    recipe: ModelRecipe = Field(
        default_factory=lambda: ModelRecipe.model_validate(demo_recipe()),
        description="stage settings, read over configs/demo.yaml: --set recipe.train.max_steps=600",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads (default: one per core no other process is using at the start; "
        "1 when others may start later)",
    )
    region_scale: int = Field(
        8,
        ge=0,
        description="the report's large region (sample-region, fast preset) is this many model images across: "
        "512 px at 64 px; 0 = none",
    )
    utility_samples: int = Field(
        96,
        ge=2,
        description="training captions sampled for the utility evaluation (the generated set its probes train on)",
    )
    with_turbo: bool = Field(
        False,
        description="also distil the trained UNet into a 4-step student (recipe.distill), sample the held-out "
        "captions with it (--preset turbo) and report it beside DDIM-50",
    )

    @model_validator(mode="before")
    @classmethod
    def _recipe_over_demo(cls, data: Any) -> Any:
        return _over_demo_recipe(data)


class SweepConfig(StrictModel):
    out: Path = Field(
        Path("sweep-out"),
        description="output folder (results.csv, results.md, results.png, tokens.png, report.html, one folder per "
        "budget)",
    )
    budgets: list[int] = Field(
        default_factory=lambda: [20, 35, 50, 154], min_length=1, description="summary budgets in CLIP tokens"
    )
    summarize: dict[str, Any] = Field(
        default_factory=dict, description="SummarizeConfig keys: backend, prompt, model, base_url, ..."
    )
    reports: Path | None = Field(
        None, description="reports (CSV, .txt folder or JSONL) of your own data (default: the demo's synthetic reports)"
    )
    store: Path | None = Field(None, description="patch store with scores.parquet (default: the demo dataset)")
    split: Path | None = Field(None, description="split.json of the store's cases")
    demo_data: DemoDataConfig = DemoDataConfig()
    recipe: ModelRecipe = Field(
        default_factory=lambda: ModelRecipe.model_validate(demo_recipe()),
        description="stage settings, read over configs/demo.yaml",
    )
    text_context: Literal["budget", "recipe"] = Field(
        "budget",
        description="budget: per-row text length (context_length); recipe: recipe.encode_text.max_length for all",
    )
    noise_floor: bool = Field(
        True, description="sample every row's held-out captions twice (two seeds) for the FID/KID floor"
    )
    seeds: list[int] | None = Field(
        None,
        min_length=1,
        description="train, sample and evaluate every budget once per seed (the autoencoder and latents are shared); "
        "the table gives each seed's values and their mean (default: recipe.seed only)",
    )

    @property
    def row_seeds(self) -> list[int]:
        """The seeds every budget runs with."""
        return self.seeds or [self.recipe.seed]

    @model_validator(mode="before")
    @classmethod
    def _recipe_over_demo(cls, data: Any) -> Any:
        """The given recipe read over the demo's; a text length of its own only where rows do not set theirs."""
        if isinstance(data, dict) and data.get("text_context", "budget") == "budget":
            if "max_length" in data.get("recipe", {}).get("encode_text", {}):
                raise key_error(
                    ("recipe", "encode_text", "max_length"),
                    "set per budget by text_context: budget; give text_context: recipe to use this length in every row",
                )
        return _over_demo_recipe(data)

    @model_validator(mode="after")
    def _own_data_complete(self) -> SweepConfig:
        given = [name for name in ("reports", "store", "split") if getattr(self, name) is not None]
        if given and len(given) != 3:
            raise ValueError("give reports, store and split together (or none of them for the demo dataset)")
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise key_error(("seeds",), f"each seed once (got {self.seeds})", self.seeds)
        if {"input", "out", "budget"} & set(self.summarize):
            raise ValueError("summarize: input, out and budget are set by the sweep")
        # typos fail now, not after minutes of training
        SummarizeConfig.model_validate({**self.summarize, "input": ".", "out": ".", "budget": 1})
        return self
