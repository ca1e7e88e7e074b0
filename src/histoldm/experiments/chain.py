"""The stages chained end to end, shared by `histoldm demo` and `histoldm sweep`.

Each step calls the same library function as its CLI subcommand and writes into its own folder
of the work directory, so every intermediate file and manifest stays inspectable. Steps whose
output already exists are resumed or skipped by the stage itself.

A stage's config is its recipe section (histoldm.experiments.config; the values in configs/demo.yaml)
plus what the experiment owns: the paths of its data and work folder and the recipe-level knobs.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from histoldm.config import deep_merge, load_config, nested_error
from histoldm.data.captions import run_captions
from histoldm.data.config import CaptionsConfig
from histoldm.data.export import export_patches, split_items
from histoldm.data.store import PatchStore
from histoldm.evaluate.config import EvaluateConfig, SeedFloorConfig
from histoldm.evaluate.noise_floor import run_seed_floor
from histoldm.evaluate.results import Metrics
from histoldm.evaluate.run import run_evaluate
from histoldm.experiments.config import ModelRecipe
from histoldm.fileio import atomic_write_json, atomic_write_jsonl, record_or_check_settings
from histoldm.memory import PeakRSS
from histoldm.models.presets import AUTOENCODER_PRESETS
from histoldm.sampling.config import SAMPLE_PRESETS, SampleConfig
from histoldm.sampling.run import run_sample
from histoldm.summaries.config import SummarizeConfig
from histoldm.summaries.summarize import run_summarize
from histoldm.text.cache import run_encode_text
from histoldm.text.config import EncodeTextConfig
from histoldm.train.config import DistillConfig, EncodeLatentsConfig, TrainConfig, TrainVAEConfig
from histoldm.train.latents import run_encode_latents
from histoldm.train.trainer import run_train
from histoldm.train.vae import run_train_vae

if TYPE_CHECKING:
    from histoldm.data.captions import CaptionsResult
    from histoldm.evaluate.features import FeatureSet
    from histoldm.evaluate.run import EvaluateResult
    from histoldm.text.cache import EncodeTextResult
    from histoldm.train.trainer import TrainResult

C = TypeVar("C", bound=BaseModel)


@dataclass(frozen=True)
class LatentCache:
    """prepare_latents: the latent cache and, when the autoencoder was trained here, its held-out PSNR (dB)."""

    latents: Path
    autoencoder_psnr: float | None


@dataclass(frozen=True)
class ChainResult:
    """train_sample_evaluate: what each stage of one model's chain gave, and the configs it ran with."""

    captions: CaptionsResult
    captions_file: Path
    text: EncodeTextResult
    train: TrainResult
    train_peak_rss: dict[str, Any]  # histoldm.memory.PeakRSS.result(), of the run that trained
    items: list[dict[str, Any]]  # the held-out patches sampled (split_items rows)
    sample_list: Path  # their captions, the sampler's input
    samples: Path
    real: Path  # their real images at the model's size
    metrics: Metrics
    fake_features: FeatureSet | None  # kept for the noise floor and the per-group metrics; not written to disk
    real_features: FeatureSet | None
    text_config: EncodeTextConfig
    train_config: TrainConfig
    sample_config: SampleConfig
    evaluate_config: EvaluateConfig

    @property
    def text_cache(self) -> Path:
        return Path(self.text_config.out)


def stage_config(recipe: ModelRecipe, stage: str, model: type[C], owned: dict[str, Any]) -> C:
    """The stage's config: its recipe section with what the experiment owns (`owned`) filled in."""
    try:
        return model.model_validate(deep_merge(getattr(recipe, stage), owned))
    except ValidationError as e:
        raise nested_error((stage,), e) from None


def trains_autoencoder(recipe: ModelRecipe) -> bool:
    return AUTOENCODER_PRESETS.get(recipe.autoencoder, {}).get("kind") == "kl"


def vae_config(recipe: ModelRecipe, store: Path, split: Path, out: Path) -> TrainVAEConfig:
    owned = {"store": store, "out": out, "split": split, "init": recipe.autoencoder, "image_size": recipe.image_size}
    return stage_config(recipe, "train_vae", TrainVAEConfig, {**owned, "seed": recipe.seed})


def latents_config(recipe: ModelRecipe, store: Path, vae: str, out: Path) -> EncodeLatentsConfig:
    owned = {"store": store, "vae": vae, "out": out, "image_size": recipe.image_size}
    return stage_config(recipe, "encode_latents", EncodeLatentsConfig, owned)


def text_config(recipe: ModelRecipe, captions: Path, out: Path) -> EncodeTextConfig:
    return stage_config(recipe, "encode_text", EncodeTextConfig, {"captions": captions, "out": out})


def train_config(
    recipe: ModelRecipe, name: str, run_dir: Path, latents: Path, text_cache: Path, captions: Path, split: Path
) -> TrainConfig:
    owned = {
        "name": name,
        "run_dir": run_dir,
        "seed": recipe.seed,
        "data": {"latents": latents, "text_cache": text_cache, "captions": captions, "split": split},
    }
    return stage_config(recipe, "train", TrainConfig, owned)


def sample_config(
    recipe: ModelRecipe,
    checkpoint: Path,
    captions: Path,
    out: Path,
    seed: int,
    text_cache: Path,
    preset: str | None = None,
) -> SampleConfig:
    """The recipe's sampler; with `preset` (a student's `turbo`), that preset's solver settings instead of the
    recipe's, its other keys (batch size, device, ...) kept."""
    owned = {"checkpoint": checkpoint, "captions": captions, "out": out, "seed": seed, "text_cache": text_cache}
    if preset is not None:
        solver_keys = {"preset", *SAMPLE_PRESETS[preset]}
        section = {k: v for k, v in recipe.sample.items() if k not in solver_keys}
        recipe = recipe.model_copy(update={"sample": {**section, "preset": preset}})
    return stage_config(recipe, "sample", SampleConfig, owned)


def distill_config(recipe: ModelRecipe, teacher: Path, run_dir: Path, train: TrainConfig) -> DistillConfig:
    """Distil `teacher` on the caches it was trained on (`train`'s data section)."""
    data = train.data
    caches = {"latents": data.latents, "text_cache": data.text_cache, "captions": data.captions, "split": data.split}
    owned = {"teacher": teacher, "run_dir": run_dir, "seed": recipe.seed, "data": caches}
    return stage_config(recipe, "distill", DistillConfig, owned)


def evaluate_config(
    recipe: ModelRecipe, real: Path, fake: Path, out: Path, captions: Path, mpp: float
) -> EvaluateConfig:
    """`mpp`: the model images' microns per pixel (model_mpp), so adherence measures nuclei at their size."""

    owned = {"real": real, "fake": fake, "out": out, "seed": recipe.seed, "captions": captions, "adherence_mpp": mpp}
    return stage_config(recipe, "evaluate", EvaluateConfig, owned)


def summarize(reports: Path, out: Path, budget: int, options: dict[str, Any] | None = None) -> Path:
    run_summarize(
        load_config(SummarizeConfig, None, {**(options or {}), "input": reports, "out": out, "budget": budget})
    )
    return out


def prepare_latents(work: Path, store: Path, split: Path, recipe: ModelRecipe) -> LatentCache:
    """Train the autoencoder (on the training cases only) when the recipe names a KL preset, then cache
    latents of every patch."""
    work = Path(work)
    autoencoder, psnr = recipe.autoencoder, None
    if trains_autoencoder(recipe):
        vae_dir = work / "vae"
        vae_cfg = vae_config(recipe, store, split, vae_dir)
        # a finished autoencoder is reused only if trained with these settings
        mismatch = f"{vae_dir}: autoencoder trained with other settings than this recipe's"
        record_or_check_settings(work / "vae-settings.json", vae_cfg.model_dump(mode="json"), mismatch)
        if (vae_dir / "metrics.json").is_file():
            psnr = json.loads((vae_dir / "metrics.json").read_text())["psnr"]
        else:
            psnr = run_train_vae(vae_cfg).psnr
        autoencoder = str(vae_dir / "autoencoder")
    latents = work / "latents"
    run_encode_latents(latents_config(recipe, store, autoencoder, latents))
    return LatentCache(latents, psnr)


def model_mpp(store: Path, size: int | None) -> float:
    """Microns per pixel of the images the model sees (median over the store's patches)."""
    patches = PatchStore.open(store)
    mpps = [m for m in patches.table.column("mpp").to_pylist() if m]
    stored = patches.image(patches.patch_ids[0]).size[0]
    return (statistics.median(mpps) if mpps else 1.0) * stored / (size or stored)


def train_sample_evaluate(
    work: Path, *, store: Path, split: Path, summaries: Path, latents: Path, recipe: ModelRecipe, name: str
) -> ChainResult:
    """captions -> caption embeddings -> LDM training -> sampling of held-out captions -> FID/KID/P-R."""
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
    train_peak_rss = kept_measurement(work / "train-peak-rss.json", rss.result, finished_before)

    items = split_items(captions, split, recipe.n_samples, recipe.seed)
    sample_list = work / "held-out-captions.jsonl"
    atomic_write_jsonl(sample_list, ({"id": r["patch_id"], "caption": r["caption"]} for r in items))
    sample_cfg = sample_held_out(train.run_dir, sample_list, work / "samples", recipe, recipe.seed, text_cache)
    real = export_patches(store, items, work / "real-held-out", recipe.image_size)
    mpp = model_mpp(store, recipe.image_size)
    evaluate_cfg = evaluate_config(recipe, real, sample_cfg.out, work / "eval", captions, mpp)
    evaluated = run_evaluate(evaluate_cfg)
    return ChainResult(
        captions=caption_result,
        captions_file=captions,
        text=text,
        train=train,
        train_peak_rss=train_peak_rss,
        items=items,
        sample_list=sample_list,
        samples=sample_cfg.out,
        real=real,
        metrics=evaluated.metrics,
        fake_features=evaluated.fake_features,
        real_features=evaluated.real_features,
        text_config=text_cfg,
        train_config=train_cfg,
        sample_config=sample_cfg,
        evaluate_config=evaluate_cfg,
    )


def sample_held_out(
    checkpoint: Path,
    captions: Path,
    out: Path,
    recipe: ModelRecipe,
    seed: int,
    text_cache: Path,
    preset: str | None = None,
) -> SampleConfig:
    """The recipe's sampler (or `preset`'s, see sample_config) over a caption list (its config returned); only
    `seed` varies between calls on one model."""
    cfg = sample_config(recipe, checkpoint, captions, out, seed, text_cache, preset)
    run_sample(cfg)
    return cfg


def sample_and_evaluate(
    checkpoint: Path, samples: Path, out: Path, *, like: ChainResult, recipe: ModelRecipe, preset: str
) -> tuple[SampleConfig, EvaluateResult]:
    """Another model's (or sampler's) images of `like`'s held-out captions with its seed, evaluated against the
    same real held-out patches with the same evaluate config (only the generated folder and OUT differ)."""
    seed = like.sample_config.seed
    sample_cfg = sample_held_out(checkpoint, like.sample_list, samples, recipe, seed, like.text_cache, preset)
    evaluate_cfg = like.evaluate_config.model_copy(update={"fake": sample_cfg.out, "out": Path(out)})
    return sample_cfg, run_evaluate(evaluate_cfg)


def kept_measurement(path: Path, measure: Callable[[], dict[str, Any]], finished_before: bool) -> dict[str, Any]:
    """`measure()` of a training stage (peak RSS, time), kept in `path`: a re-run that finds the stage finished
    measures only loading, so it reports the figure recorded by the run that trained."""
    if finished_before and path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    measured = measure()
    atomic_write_json(path, measured)
    return measured


def noise_floor(work: Path, result: ChainResult, recipe: ModelRecipe) -> Metrics:
    """The seed-to-seed floor of `result`'s FID and KID: its held-out captions sampled again from the
    same model with seed + 1 (WORK/samples-seed<N>), compared with its samples under the evaluation's protocol
    and KID settings."""
    work = Path(work)
    second = work / f"samples-seed{recipe.seed + 1}"
    sample_held_out(result.train.run_dir, result.sample_list, second, recipe, recipe.seed + 1, result.text_cache)
    evaluated = result.evaluate_config
    shared = (SeedFloorConfig.model_fields.keys() & type(evaluated).model_fields.keys()) - {"out"}
    return run_seed_floor(
        SeedFloorConfig(
            **{k: getattr(evaluated, k) for k in shared}, first=result.samples, second=second, out=work / "noise-floor"
        ),
        first_features=result.fake_features,
    ).metrics  # the same extractor and resize: evaluate's
