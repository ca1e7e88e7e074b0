"""The stages chained end to end, shared by `histoldm demo` and `histoldm sweep`.

Each step calls the same library function as its CLI subcommand and writes into its own folder
of the work directory, so every intermediate file and manifest stays inspectable. Steps whose
output already exists are resumed or skipped by the stage itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq
from pydantic import Field

from histoldm.config import DtypeName, StrictModel, deep_merge, load_config
from histoldm.data.export import export_patches, split_items
from histoldm.errors import UserError
from histoldm.fileio import atomic_write_json, atomic_write_jsonl
from histoldm.memory import PeakRSS


class DemoDataConfig(StrictModel):
    """The demo dataset: the bundled CC0 slide plus synthetic H&E-like cases with known attributes."""

    magnification: float = 10.0  # PathLDM's; synthetic tiles are drawn at the same 1 um/px
    patch_size: int = 256
    overlap: int = 192  # the CC0 slide is small: without overlap 10x gives only a handful of patches
    synthetic_cases: int = Field(8, ge=2)
    tiles_per_case: int = Field(12, ge=1)
    test_fraction: float = Field(0.3, gt=0, lt=1)
    seed: int = 0


class ModelRecipe(StrictModel):
    """Everything from captions to metrics for one set of summaries (one row of the sweep)."""

    image_size: int | None = 64  # resolution the models work at; None = the stored patch size
    autoencoder: str = "kl-f4-tiny"  # KL preset trained here, or a folder / hub id used as is
    autoencoder_steps: int = 250  # training steps when `autoencoder` is a preset (0 = random weights)
    autoencoder_batch_size: int = 16
    autoencoder_crop: int | None = None  # random crops of this many pixels (None = whole images); 32 lost the demo's adherence (RESULTS.md)
    text_encoder: str = "minilm"
    text_mode: Literal["pathldm", "truncate", "chunks", "interpolate"] = "truncate"
    text_max_length: int | None = 64
    unet_preset: str = "tiny"
    train_steps: int = 1200  # 600 gave chance-level condition adherence in the demo, 1500 a clear signal
    batch_size: int = 32
    lr: float = 5e-4
    warmup_steps: int = 50
    min_snr_gamma: float | None = None  # min-SNR loss weighting (Hang et al. 2023); None = plain epsilon MSE
    ema: bool = True
    ema_decay: float = 0.995
    precision: DtypeName = "auto"  # the trainer's; auto: bfloat16 on a GPU that supports it, else float32
    log_every: int = Field(20, ge=1)
    checkpoint_every: int = Field(5000, ge=1)
    train_overrides: dict[str, Any] = Field(default_factory=dict)  # any other TrainConfig keys, e.g. {model: {compile: true}}
    sample_steps: int = 50
    guidance: float = 1.75
    solver: Literal["ddim", "dpmpp"] = "ddim"
    n_samples: int = Field(48, ge=2)  # held-out patches whose captions are sampled (and their real images)
    sample_batch_size: int = 16
    kid_subset_size: int = 1000
    seed: int = 0


def demo_reports(store: Path, seed: int) -> list[dict[str, str]]:
    """One synthetic TCGA-style report per case of the store, re-keyed to the store's case ids.

    The texts say on their first line that they are synthetic; they exist so every case has a report."""
    from histoldm.summaries.synthetic import make_synthetic_reports

    cases = sorted(set(pq.read_table(Path(store) / "patches.parquet", columns=["case_id"]).column("case_id").to_pylist()))
    reports = make_synthetic_reports(len(cases), seed)
    return [{"case_id": case, "text": r["text"]} for case, r in zip(cases, reports)]


def build_demo_data(work: Path, cfg: DemoDataConfig) -> dict[str, Path]:
    """Tile the CC0 slide, add synthetic cases, score, merge, write reports and a patient-level split."""
    from histoldm.assets import asset_path
    from histoldm.data.scores import ScoresConfig, run_scores
    from histoldm.data.splits import SplitConfig, run_split
    from histoldm.data.store import merge_stores
    from histoldm.data.synthetic import make_synthetic_dataset
    from histoldm.data.tiling import TileConfig, run_tile

    work = Path(work)
    slide_store, synthetic_store, store = work / "store-slide", work / "store-synthetic", work / "store"
    if not (store / "patches.parquet").is_file():
        run_tile(TileConfig(slides=asset_path("cmu_slide"), out=slide_store, magnification=cfg.magnification,
                            size=cfg.patch_size, overlap=cfg.overlap))
        run_scores(ScoresConfig(store=slide_store, proxy=True))
        if not (synthetic_store / "patches.parquet").is_file():
            make_synthetic_dataset(synthetic_store, cfg.synthetic_cases, cfg.tiles_per_case, seed=cfg.seed, size=cfg.patch_size)
        merge_stores([slide_store, synthetic_store], store)
    reports = work / "reports.jsonl"
    if not reports.is_file():
        atomic_write_jsonl(reports, demo_reports(store, cfg.seed))
    split = work / "split.json"
    if not split.is_file():
        run_split(SplitConfig(out=split, store=store, seed=cfg.seed,
                              fractions={"train": 1 - cfg.test_fraction, "test": cfg.test_fraction}))
    return {"store": store, "reports": reports, "split": split}


def summarize(reports: Path, out: Path, budget: int, options: dict[str, Any] | None = None) -> Path:
    from histoldm.summaries.summarize import SummarizeConfig, run_summarize

    run_summarize(load_config(SummarizeConfig, None, {**(options or {}), "input": reports, "out": out, "budget": budget}))
    return out


def prepare_latents(work: Path, store: Path, split: Path, recipe: ModelRecipe) -> dict[str, Any]:
    """Train the autoencoder (on the training cases only) when the recipe names a preset, then cache
    latents of every patch."""
    import dataclasses

    from histoldm.models.presets import AUTOENCODER_PRESETS
    from histoldm.train.latents import EncodeLatentsConfig, run_encode_latents
    from histoldm.train.vae import TrainVAEConfig, run_train_vae

    work = Path(work)
    autoencoder, vae_metrics = recipe.autoencoder, None
    if recipe.autoencoder in AUTOENCODER_PRESETS and recipe.autoencoder_steps > 0:
        vae_dir = work / "vae"
        vae_cfg = TrainVAEConfig(
            store=store, out=vae_dir, init=recipe.autoencoder, steps=recipe.autoencoder_steps,
            batch_size=recipe.autoencoder_batch_size, lr=1e-3, image_size=recipe.image_size, crop=recipe.autoencoder_crop, seed=recipe.seed,
            split=split, workers=0, preload=True, log_every=50, checkpoint_every=recipe.autoencoder_steps)
        if (vae_dir / "metrics.json").is_file():  # finished earlier: reuse it only if trained with these settings
            trained_with = json.loads((vae_dir / "manifest.json").read_text())["config"]
            if trained_with != vae_cfg.model_dump(mode="json"):
                raise UserError(f"{vae_dir}: autoencoder trained with other settings than this recipe's; choose another --out")
            vae_metrics = json.loads((vae_dir / "metrics.json").read_text())
        else:
            vae_metrics = dataclasses.asdict(run_train_vae(vae_cfg))
        autoencoder = str(vae_dir / "autoencoder")
    latents = work / "latents"
    run_encode_latents(EncodeLatentsConfig(store=store, vae=autoencoder, out=latents, image_size=recipe.image_size,
                                           batch_size=32, workers=0))
    return {"latents": latents, "vae_metrics": vae_metrics}


def model_mpp(store: Path, size: int | None) -> float:
    """Microns per pixel of the images the model sees (median over the store's patches)."""
    import statistics

    from histoldm.data.store import PatchStore

    patches = PatchStore.open(store)
    mpps = [m for m in patches.table.column("mpp").to_pylist() if m]
    stored = patches.image(patches.patch_ids[0]).size[0]
    return (statistics.median(mpps) if mpps else 1.0) * stored / (size or stored)


def train_sample_evaluate(work: Path, *, store: Path, split: Path, summaries: Path, latents: Path,
                          recipe: ModelRecipe, name: str) -> dict[str, Any]:
    """captions -> caption embeddings -> LDM training -> sampling of held-out captions -> FID/KID/P-R."""
    from histoldm.data.captions import CaptionsConfig, run_captions
    from histoldm.evaluate.run import EvaluateConfig, run_evaluate
    from histoldm.text.cache import EncodeTextConfig, run_encode_text
    from histoldm.train.trainer import TrainConfig, run_train

    work = Path(work)
    captions = work / "captions.parquet"
    caption_result = run_captions(CaptionsConfig(store=store, summaries=summaries, out=captions))
    text_cache = work / "text-cache"
    text = run_encode_text(EncodeTextConfig(captions=captions, text_encoder=recipe.text_encoder, mode=recipe.text_mode,
                                            max_length=recipe.text_max_length, out=text_cache))
    train_cfg = {
        "name": name, "run_dir": work / "run", "seed": recipe.seed, "max_steps": recipe.train_steps,
        "batch_size": recipe.batch_size, "precision": recipe.precision, "ema": recipe.ema, "ema_decay": recipe.ema_decay,
        "log_every": recipe.log_every, "checkpoint_every": min(recipe.checkpoint_every, recipe.train_steps), "keep_checkpoints": 1,
        "data": {"latents": latents, "text_cache": text_cache, "captions": captions, "split": split, "workers": 0},
        "model": {"unet_preset": recipe.unet_preset},
        "optim": {"lr": recipe.lr, "warmup_steps": recipe.warmup_steps, "min_snr_gamma": recipe.min_snr_gamma},
    }
    finished_before = (work / "run" / "model").is_dir()  # the bundle is exported when training ends
    with PeakRSS() as rss:
        train = run_train(load_config(TrainConfig, None, deep_merge(train_cfg, recipe.train_overrides)))
    train_peak_rss = _train_peak_rss(work / "train-peak-rss.json", rss, finished_before)

    items = split_items(captions, split, recipe.n_samples, recipe.seed)
    sample_list = work / "held-out-captions.jsonl"
    atomic_write_jsonl(sample_list, ({"id": r["patch_id"], "caption": r["caption"]} for r in items))
    samples = sample_held_out(train.run_dir, sample_list, work / "samples", recipe, recipe.seed, text_cache)
    real = export_patches(store, items, work / "real-held-out", recipe.image_size)
    metrics = run_evaluate(EvaluateConfig(real=real, fake=samples, out=work / "eval", seed=recipe.seed,
                                          kid_subset_size=min(recipe.kid_subset_size, len(items)), fid_method="eigh",
                                          adherence=True, captions=captions, adherence_mpp=model_mpp(store, recipe.image_size))).metrics
    return {"captions": caption_result, "captions_file": captions, "text": text, "train": train, "train_peak_rss": train_peak_rss, "samples": samples, "real": real,
            "metrics": metrics, "items": items, "sample_list": sample_list, "text_cache": text_cache}


def sample_held_out(checkpoint: Path, captions: Path, out: Path, recipe: ModelRecipe, seed: int, text_cache: Path) -> Path:
    """The recipe's sampler over a caption list; only `seed` varies between calls on one model."""
    from histoldm.sampling.run import SampleConfig, run_sample

    run_sample(SampleConfig(checkpoint=checkpoint, captions=captions, out=out, steps=recipe.sample_steps, guidance=recipe.guidance,
                            solver=recipe.solver, batch_size=recipe.sample_batch_size, seed=seed, text_cache=text_cache))
    return out


def _train_peak_rss(path: Path, rss: PeakRSS, finished_before: bool) -> dict[str, Any]:
    """The training's peak RSS, kept in `path`: a re-run that finds training finished measures only
    loading, so it reports the figure recorded by the run that trained."""
    if finished_before and path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    atomic_write_json(path, rss.result())
    return rss.result()


def noise_floor(work: Path, result: dict[str, Any], recipe: ModelRecipe) -> dict[str, Any]:
    """The seed-to-seed floor of `result`'s FID and KID: its held-out captions sampled again from the
    same model with seed + 1 (WORK/samples-seed<N>), compared with its samples under the same protocol."""
    from histoldm.evaluate.noise_floor import SeedFloorConfig, run_seed_floor

    work = Path(work)
    second = work / f"samples-seed{recipe.seed + 1}"
    sample_held_out(result["train"].run_dir, result["sample_list"], second, recipe, recipe.seed + 1, result["text_cache"])
    return run_seed_floor(SeedFloorConfig(first=result["samples"], second=second, out=work / "noise-floor", seed=recipe.seed,
                                          kid_subset_size=min(recipe.kid_subset_size, len(result["items"])))).metrics
