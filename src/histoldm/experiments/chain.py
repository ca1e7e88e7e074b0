"""The stages chained end to end, shared by `histoldm demo` and `histoldm sweep`.

Each step calls the same library function as its CLI subcommand and writes into its own folder
of the work directory, so every intermediate file and manifest stays inspectable. Steps whose
output already exists are resumed or skipped by the stage itself.

The recipe holds the stage settings as the stages' own configs: one section per stage
(`train_vae`: TrainVAEConfig, `encode_latents`: EncodeLatentsConfig, `encode_text`: EncodeTextConfig,
`train`: TrainConfig, `sample`: SampleConfig, `evaluate`: EvaluateConfig), each holding the keys the
user gave, nested as in that config (`recipe.train.optim.lr`). Only four knobs sit at the recipe level,
because they span stages: `image_size` (autoencoder, latents, real images), `autoencoder` (trained or
used as is, then encoding), `seed` (every stage, and seed + 1 for the noise floor) and `n_samples`
(held-out captions: not a stage setting). A stage's config is built as: the stage's defaults <- this
experiment's (EXPERIMENT_DEFAULTS: the demo's scale) <- values derived from the others when not given
(a short run checkpoints at its end, KID subsets no larger than the set, ...) <- the user's section <-
what the experiment fills in itself: the paths of its data and work folder and the recipe-level knobs.
A user who sets one of those is refused (it would be overwritten). Every section is built into its
stage's config when the recipe is loaded, with stand-in paths, so a typo or a bad value is a one-line
error naming the key (`recipe.train.optim.lrr`) before any compute.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, Field, ValidationError, model_validator

from histoldm.config import StrictModel, deep_merge, key_error, load_config, nested_error
from histoldm.data.export import export_patches, split_items
from histoldm.errors import UserError
from histoldm.fileio import atomic_write_json, atomic_write_jsonl
from histoldm.memory import PeakRSS
from histoldm.models.presets import AUTOENCODER_PRESETS, UNET_PRESETS

if TYPE_CHECKING:
    from histoldm.evaluate.config import EvaluateConfig
    from histoldm.sampling.config import SampleConfig
    from histoldm.text.config import EncodeTextConfig
    from histoldm.train.config import EncodeLatentsConfig, TrainConfig, TrainVAEConfig

C = TypeVar("C", bound=BaseModel)

# What this experiment sets beyond each stage's own defaults: the demo's scale (CPU, minutes, a few hundred
# patches), so `histoldm demo` needs no config. A full-scale sweep overrides them (configs/sweep_token_lengths.yaml).
EXPERIMENT_DEFAULTS: dict[str, dict[str, Any]] = {
    # Decoded once and kept in memory (preload), in this process: at 64 px decoding cost as much as a step.
    # Batch 8: held-out PSNR and condition adherence hold on two seeds at half the compute of batch 16 (RESULTS.md).
    "train_vae": {"steps": 250, "batch_size": 8, "lr": 1e-3, "workers": 0, "preload": True, "log_every": 50},
    "encode_latents": {"batch_size": 32, "workers": 0},
    "encode_text": {"text_encoder": "minilm", "mode": "truncate", "max_length": 64},
    # tiny-mid (cross-attention in the middle block only; 0.6-0.7x the step of `tiny`), 1000 steps at lr 2e-3 with a
    # cosine to 0: tumor adherence holds on two seeds, where lr 1e-3 at 800 or 1000 steps loses it (RESULTS.md).
    # precision auto: bfloat16 on a GPU that has it, else float32 (the trainer's own default autocasts bf16 on CPU too)
    "train": {
        "max_steps": 1000,
        "batch_size": 32,
        "precision": "auto",
        "ema": True,
        "ema_decay": 0.995,
        "log_every": 20,
        "keep_checkpoints": 1,
        "data": {"workers": 0},
        "model": {"unet_preset": "tiny-mid"},
        "optim": {"lr": 2e-3, "warmup_steps": 50, "decay": "cosine"},
    },
    "sample": {},  # the stage's: DDIM-50, guidance 1.75 (preset `paper`; `recipe.sample.preset: fast` for speed)
    "evaluate": {"fid_method": "eigh", "adherence": True},  # eigh: the same trace as sqrtm, ~10x faster on CPU
}
# Stage keys filled from a recipe-level knob: a user who sets one is pointed at the knob.
_KNOBS = {
    "seed": "recipe.seed",
    "image_size": "recipe.image_size",
    "init": "recipe.autoencoder",
    "vae": "recipe.autoencoder",
}
_HERE = Path(".")  # the stand-in path a section is validated with when the recipe is loaded


class ModelRecipe(StrictModel):
    """Everything from captions to metrics for one set of summaries (one row of the sweep)."""

    image_size: int | None = Field(64, ge=8)  # resolution the models work at; None = the stored patch size
    autoencoder: str = (
        "kl-f4-lite"  # a KL preset is trained here (`train_vae`); a VQ preset, folder or hub id is used as is
    )
    seed: int = 0
    n_samples: int = Field(48, ge=2)  # held-out patches whose captions are sampled (and their real images)
    train_vae: dict[str, Any] = Field(
        default_factory=dict
    )  # TrainVAEConfig keys; used when `autoencoder` is a KL preset
    encode_latents: dict[str, Any] = Field(default_factory=dict)  # EncodeLatentsConfig keys
    encode_text: dict[str, Any] = Field(default_factory=dict)  # EncodeTextConfig keys
    train: dict[str, Any] = Field(
        default_factory=dict
    )  # TrainConfig keys, nested: {optim: {lr: ...}, data: {workers: ...}}
    sample: dict[str, Any] = Field(default_factory=dict)  # SampleConfig keys (for both seeds of the noise floor)
    evaluate: dict[str, Any] = Field(
        default_factory=dict
    )  # EvaluateConfig keys; the noise floor measures with the same protocol

    @model_validator(mode="after")
    def _sections_are_stage_configs(self) -> ModelRecipe:
        """Every stage's config, built now with stand-in paths: a bad key fails here, not after minutes of compute."""
        if trains_autoencoder(self):
            vae_config(self, _HERE, _HERE, _HERE)
        elif self.train_vae:
            raise key_error(
                ("train_vae",),
                f"used only when recipe.autoencoder is a KL preset (trained here); '{self.autoencoder}' is used as is",
            )
        latents_config(self, _HERE, self.autoencoder, _HERE)
        text_config(self, _HERE, _HERE)
        preset = train_config(self, "x", _HERE, _HERE, _HERE, _HERE, _HERE).model.unet_preset
        if preset not in UNET_PRESETS:  # the trainer finds out only after the autoencoder has trained
            raise key_error(
                ("train", "model", "unet_preset"),
                f"unknown UNet preset '{preset}' (choose from {', '.join(UNET_PRESETS)})",
            )
        sample_config(self, _HERE, _HERE, _HERE, self.seed, _HERE)
        evaluate_config(self, _HERE, _HERE, _HERE, _HERE, self.n_samples, 1.0)
        return self

    def settings(self, stage: str) -> dict[str, Any]:
        """The stage's keys this experiment sets or the user gave (not the stage's own defaults)."""
        return deep_merge(EXPERIMENT_DEFAULTS[stage], getattr(self, stage))

    def stage(
        self, stage: str, model: type[C], owned: dict[str, Any], derived: Callable[[C], dict[str, Any]] | None = None
    ) -> C:
        """The stage's config: its defaults <- EXPERIMENT_DEFAULTS <- the user's section <- `owned` (the
        experiment's paths and knobs, refused from the user); then `derived` (from the built config) for
        the keys the user did not give."""
        given = getattr(self, stage)
        if clash := _common_key(given, owned):
            knob = _KNOBS.get(clash[-1]) if len(clash) == 1 else None
            raise key_error(
                (stage, *clash),
                f"set by the experiment from {knob}; set that instead"
                if knob
                else "set by the experiment (a path of its data or work folder, or the run's name)",
            )
        try:
            cfg = model.model_validate(deep_merge(self.settings(stage), owned))
        except ValidationError as e:
            raise nested_error((stage,), e) from None
        updates = {k: v for k, v in (derived(cfg) if derived else {}).items() if k not in given}
        return cfg.model_copy(update=updates) if updates else cfg


def _common_key(given: dict[str, Any], owned: dict[str, Any]) -> tuple[str, ...] | None:
    """The first key path in both (nested sections are compared key by key)."""
    for key in given.keys() & owned.keys():
        if isinstance(given[key], dict) and isinstance(owned[key], dict):
            if sub := _common_key(given[key], owned[key]):
                return (key, *sub)
        else:
            return (key,)
    return None


def trains_autoencoder(recipe: ModelRecipe) -> bool:
    return AUTOENCODER_PRESETS.get(recipe.autoencoder, {}).get("kind") == "kl"


def vae_config(recipe: ModelRecipe, store: Path, split: Path, out: Path) -> TrainVAEConfig:
    from histoldm.train.config import TrainVAEConfig

    owned = {
        "store": store,
        "out": out,
        "split": split,
        "init": recipe.autoencoder,
        "image_size": recipe.image_size,
        "seed": recipe.seed,
    }
    return recipe.stage("train_vae", TrainVAEConfig, owned, lambda c: {"checkpoint_every": c.steps})


def latents_config(recipe: ModelRecipe, store: Path, vae: str, out: Path) -> EncodeLatentsConfig:
    from histoldm.train.config import EncodeLatentsConfig

    return recipe.stage(
        "encode_latents", EncodeLatentsConfig, {"store": store, "vae": vae, "out": out, "image_size": recipe.image_size}
    )


def text_config(recipe: ModelRecipe, captions: Path, out: Path) -> EncodeTextConfig:
    from histoldm.text.config import EncodeTextConfig

    return recipe.stage("encode_text", EncodeTextConfig, {"captions": captions, "out": out})


def train_config(
    recipe: ModelRecipe, name: str, run_dir: Path, latents: Path, text_cache: Path, captions: Path, split: Path
) -> TrainConfig:
    from histoldm.train.config import TrainConfig

    owned = {
        "name": name,
        "run_dir": run_dir,
        "seed": recipe.seed,
        "data": {"latents": latents, "text_cache": text_cache, "captions": captions, "split": split},
    }
    # a run shorter than checkpoint_every checkpoints at its end
    return recipe.stage(
        "train", TrainConfig, owned, lambda c: {"checkpoint_every": min(c.checkpoint_every, c.max_steps)}
    )


def sample_config(
    recipe: ModelRecipe, checkpoint: Path, captions: Path, out: Path, seed: int, text_cache: Path
) -> SampleConfig:
    from histoldm.sampling.config import SampleConfig

    owned = {"checkpoint": checkpoint, "captions": captions, "out": out, "seed": seed, "text_cache": text_cache}
    return recipe.stage("sample", SampleConfig, owned)


def evaluate_config(
    recipe: ModelRecipe, real: Path, fake: Path, out: Path, captions: Path, n_items: int, mpp: float
) -> EvaluateConfig:
    from histoldm.evaluate.config import EvaluateConfig

    owned = {"real": real, "fake": fake, "out": out, "seed": recipe.seed, "captions": captions}
    return recipe.stage(
        "evaluate",
        EvaluateConfig,
        owned,
        lambda c: {"kid_subset_size": min(c.kid_subset_size, n_items), "adherence_mpp": mpp},
    )


def summarize(reports: Path, out: Path, budget: int, options: dict[str, Any] | None = None) -> Path:
    from histoldm.summaries.config import SummarizeConfig
    from histoldm.summaries.summarize import run_summarize

    run_summarize(
        load_config(SummarizeConfig, None, {**(options or {}), "input": reports, "out": out, "budget": budget})
    )
    return out


def prepare_latents(work: Path, store: Path, split: Path, recipe: ModelRecipe) -> dict[str, Any]:
    """Train the autoencoder (on the training cases only) when the recipe names a KL preset, then cache
    latents of every patch."""
    import dataclasses

    from histoldm.train.latents import run_encode_latents
    from histoldm.train.vae import run_train_vae

    work = Path(work)
    autoencoder, vae_metrics = recipe.autoencoder, None
    if trains_autoencoder(recipe):
        vae_dir = work / "vae"
        vae_cfg = vae_config(recipe, store, split, vae_dir)
        if (vae_dir / "metrics.json").is_file():  # finished earlier: reuse it only if trained with these settings
            trained_with = json.loads((vae_dir / "manifest.json").read_text())["config"]
            if trained_with != vae_cfg.model_dump(mode="json"):
                raise UserError(
                    f"{vae_dir}: autoencoder trained with other settings than this recipe's; choose another --out"
                )
            vae_metrics = json.loads((vae_dir / "metrics.json").read_text())
        else:
            vae_metrics = dataclasses.asdict(run_train_vae(vae_cfg))
        autoencoder = str(vae_dir / "autoencoder")
    latents = work / "latents"
    run_encode_latents(latents_config(recipe, store, autoencoder, latents))
    return {"latents": latents, "vae_metrics": vae_metrics}


def model_mpp(store: Path, size: int | None) -> float:
    """Microns per pixel of the images the model sees (median over the store's patches)."""
    import statistics

    from histoldm.data.store import PatchStore

    patches = PatchStore.open(store)
    mpps = [m for m in patches.table.column("mpp").to_pylist() if m]
    stored = patches.image(patches.patch_ids[0]).size[0]
    return (statistics.median(mpps) if mpps else 1.0) * stored / (size or stored)


def train_sample_evaluate(
    work: Path, *, store: Path, split: Path, summaries: Path, latents: Path, recipe: ModelRecipe, name: str
) -> dict[str, Any]:
    """captions -> caption embeddings -> LDM training -> sampling of held-out captions -> FID/KID/P-R."""
    from histoldm.data.captions import run_captions
    from histoldm.data.config import CaptionsConfig
    from histoldm.evaluate.run import run_evaluate
    from histoldm.text.cache import run_encode_text
    from histoldm.train.trainer import run_train

    work = Path(work)
    captions = work / "captions.parquet"
    caption_result = run_captions(CaptionsConfig(store=store, summaries=summaries, out=captions))
    text_cache = work / "text-cache"
    text_cfg = text_config(recipe, captions, text_cache)
    text = run_encode_text(text_cfg)
    train_cfg = train_config(recipe, name, work / "run", latents, text_cache, captions, split)
    finished_before = (work / "run" / "model").is_dir()  # the bundle is exported when training ends
    with PeakRSS() as rss:
        train = run_train(train_cfg)
    train_peak_rss = _train_peak_rss(work / "train-peak-rss.json", rss, finished_before)

    items = split_items(captions, split, recipe.n_samples, recipe.seed)
    sample_list = work / "held-out-captions.jsonl"
    atomic_write_jsonl(sample_list, ({"id": r["patch_id"], "caption": r["caption"]} for r in items))
    sample_cfg = sample_held_out(train.run_dir, sample_list, work / "samples", recipe, recipe.seed, text_cache)
    samples = sample_cfg.out
    real = export_patches(store, items, work / "real-held-out", recipe.image_size)
    evaluate_cfg = evaluate_config(
        recipe, real, samples, work / "eval", captions, len(items), model_mpp(store, recipe.image_size)
    )
    evaluated = run_evaluate(evaluate_cfg)
    return {
        "captions": caption_result,
        "captions_file": captions,
        "text": text,
        "train": train,
        "train_peak_rss": train_peak_rss,
        "samples": samples,
        "real": real,
        "metrics": evaluated.metrics,
        "fake_features": evaluated.fake_features,
        "real_features": evaluated.real_features,
        "items": items,
        "sample_list": sample_list,
        "text_cache": text_cache,
        "configs": {"encode_text": text_cfg, "train": train_cfg, "sample": sample_cfg, "evaluate": evaluate_cfg},
    }


def sample_held_out(
    checkpoint: Path, captions: Path, out: Path, recipe: ModelRecipe, seed: int, text_cache: Path
) -> SampleConfig:
    """The recipe's sampler over a caption list (its config returned); only `seed` varies between calls on one model."""
    from histoldm.sampling.run import run_sample

    cfg = sample_config(recipe, checkpoint, captions, out, seed, text_cache)
    run_sample(cfg)
    return cfg


def _train_peak_rss(path: Path, rss: PeakRSS, finished_before: bool) -> dict[str, Any]:
    """The training's peak RSS, kept in `path`: a re-run that finds training finished measures only
    loading, so it reports the figure recorded by the run that trained."""
    if finished_before and path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    measured = rss.result()
    atomic_write_json(path, measured)
    return measured


def noise_floor(work: Path, result: dict[str, Any], recipe: ModelRecipe) -> dict[str, Any]:
    """The seed-to-seed floor of `result`'s FID and KID: its held-out captions sampled again from the
    same model with seed + 1 (WORK/samples-seed<N>), compared with its samples under the evaluation's protocol
    and KID settings."""
    from histoldm.evaluate.config import SeedFloorConfig
    from histoldm.evaluate.noise_floor import run_seed_floor

    work = Path(work)
    second = work / f"samples-seed{recipe.seed + 1}"
    sample_held_out(
        result["train"].run_dir, result["sample_list"], second, recipe, recipe.seed + 1, result["text_cache"]
    )
    evaluated = result["configs"]["evaluate"]
    shared = (SeedFloorConfig.model_fields.keys() & type(evaluated).model_fields.keys()) - {"out"}
    return run_seed_floor(
        SeedFloorConfig(
            **{k: getattr(evaluated, k) for k in shared},
            first=result["samples"],
            second=second,
            out=work / "noise-floor",
        ),
        first_features=result["fake_features"],
    ).metrics  # the same extractor and resize: evaluate's
