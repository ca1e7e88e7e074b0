"""The subcommands that run one stage (or one experiment) from its config: a row each.

A row names the stage's config model (imported here: the config modules are torch-free), a function
that imports and calls the stage's run function (so that `histoldm --help` pays for no stage's imports)
and how to print its result; the options come from the config model (commands/_flags.py), so a new
config field needs no edit here.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from histoldm.commands._common import StageCommand
from histoldm.data.config import CaptionsConfig, ExportPatchesConfig, ScoresConfig, SplitConfig, TileConfig
from histoldm.evaluate.config import EvaluateConfig, FidRefConfig, RegionEvalConfig, UtilityConfig
from histoldm.experiments.config import DemoConfig, SweepConfig
from histoldm.models.config import ConvertConfig
from histoldm.sampling.config import RegionConfig, SampleConfig
from histoldm.summaries.config import SummarizeConfig
from histoldm.text.config import EncodeTextConfig
from histoldm.train.config import DistillConfig, EncodeLatentsConfig, TrainConfig, TrainVAEConfig

if TYPE_CHECKING:
    from histoldm.data.captions import CaptionsResult
    from histoldm.data.export import ExportPatchesResult
    from histoldm.data.scores import ScoresResult
    from histoldm.data.splits import SplitResult
    from histoldm.data.tiling import TileResult
    from histoldm.evaluate.region import RegionEvalResult
    from histoldm.evaluate.run import EvaluateResult, FidRefResult
    from histoldm.evaluate.utility import UtilityResult
    from histoldm.experiments.demo import DemoResult
    from histoldm.experiments.sweep import SweepResult
    from histoldm.models.convert import ConvertResult
    from histoldm.sampling.region_run import RegionResult
    from histoldm.sampling.run import SampleResult
    from histoldm.summaries.summarize import SummarizeResult
    from histoldm.text.cache import EncodeTextResult
    from histoldm.train.distill import DistillResult
    from histoldm.train.latents import EncodeLatentsResult
    from histoldm.train.trainer import TrainResult
    from histoldm.train.vae import TrainVAEResult


def parse_shard(text: str) -> list[int]:
    """'K/N' -> [K, N], for `--shard $SLURM_ARRAY_TASK_ID/10`; anything else is a UserError naming what was typed."""
    from histoldm.errors import UserError

    k, sep, n = text.partition("/")
    if not (sep and k.strip().isdigit() and n.strip().isdigit() and int(k) < int(n)):
        raise UserError(f"--shard {text}: expected K/N with 0 <= K < N, e.g. 0/4")
    return [int(k), int(n)]


def _tile(r: TileResult, cfg: Any) -> None:
    pending = f"; shard {r.shard}, {r.slides_pending} slides of other shards not finished yet)" if r.shard else ")"
    print(
        f"{r.patches} patches in {r.store} ({r.slides_tiled} slides tiled, {r.slides_resumed} resumed, "
        f"{r.slides_failed} skipped{pending}"
    )
    for s in r.skipped:
        print(f"skipped: {s['reason']}")


def _scores(r: ScoresResult, cfg: Any) -> None:
    print(f"{r.scored}/{r.patches} patches scored ({r.method}) -> {r.out}; {len(r.skipped)} rows or scores skipped")
    for s in r.skipped[:10]:
        print(f"skipped: {s}")


def _summarize(r: SummarizeResult, cfg: Any) -> None:
    from histoldm.summaries.summarize import SummarizeDryRun

    if isinstance(r, SummarizeDryRun):  # the prompts were printed
        return
    counts = ", ".join(f"{k} {v}" for k, v in sorted(r.counts.items())) or "nothing new"
    print(f"{r.out}: {r.written} written ({counts}), {r.skipped_finished} already done; manifest {r.manifest}")
    shown = 10
    for f in r.failed[:shown]:
        print(f"failed: {f['case_id']}: {f['reason']}")
    if r.failed:
        more = f"{len(r.failed) - shown} more; " if len(r.failed) > shown else ""
        print(
            f"{len(r.failed)} cases failed ({more}all listed in the manifest's skipped); fix the cause and re-run "
            "with --retry-failed"
        )


def _split(r: SplitResult, cfg: Any) -> None:
    print(f"{r.out}: " + ", ".join(f"{k} {v}" for k, v in r.counts.items()) + " cases")
    for w in r.warnings:
        print(f"warning: {w}", file=sys.stderr)


def _captions(r: CaptionsResult, cfg: Any) -> None:
    print(
        f"{r.caption_rows} captions of {r.patches} patches ({r.unique_captions} unique) -> {r.out}; "
        f"{r.patches_without_summary} patches without a summary ({len(r.cases_without_summary)} cases)"
    )
    if r.empty_captions:
        print(
            f"warning: {r.empty_captions} patches have an empty caption (no scores and no summary); "
            "encode-text skips them and train leaves them out",
            file=sys.stderr,
        )


def _export_patches(r: ExportPatchesResult, cfg: Any) -> None:
    print(f"{r.images} patches in {r.out}")


def _encode_text(r: EncodeTextResult, cfg: Any) -> None:
    skipped = (
        f"; {r.n_skipped} rows skipped (empty or non-text captions, listed in the manifest)" if r.n_skipped else ""
    )
    print(
        f"{r.out}: {r.n_captions} captions ({r.n_new} new, {r.n_reused} already cached), shape {r.shape}, "
        f"{r.n_truncated} truncated, fingerprint {r.meta['fingerprint'][:12]}{skipped}"
    )


def _train_vae(r: TrainVAEResult, cfg: Any) -> None:
    print(f"autoencoder in {r.autoencoder}: held-out PSNR {r.psnr:.2f} dB, SSIM {r.ssim:.4f}")


def _encode_latents(r: EncodeLatentsResult, cfg: Any) -> int:
    if r.shards_missing:
        print(f"{r.out}: {r.shards_missing} of {r.shards} shards not encoded (a process stopped); re-run to finish")
        return 1
    print(f"{r.latents} latents ({r.skipped} skipped) in {r.out}, scaling factor {r.scaling_factor:.5g}")
    return 0


def _train(r: TrainResult, cfg: Any) -> None:
    peak = r.peak_memory["allocated_gib"]
    img_s = f"{r.img_s:.1f}" if r.img_s is not None else "n/a"
    memory = f"peak GPU memory {peak:.2f} GiB" if peak is not None else "CPU: no GPU memory to measure"
    print(f"trained {r.steps} steps in {r.run_dir} ({img_s} img/s, {memory}); model: {r.bundle}")


def _distill(r: DistillResult, cfg: Any) -> None:
    img_s = f"{r.img_s:.1f}" if r.img_s is not None else "n/a"
    print(
        f"distilled {r.steps} steps in {r.run_dir} ({r.seconds:.0f} s this session, {img_s} img/s); "
        f"student: {r.bundle} (sample it with --preset turbo)"
    )


def _sample(r: SampleResult, cfg: Any) -> None:
    grid = f", grid {r.grid}" if r.grid else ""
    print(
        f"{r.out}: {r.images} images ({r.n_new} new), {r.n_truncated} captions truncated, {r.skipped} input rows "
        f"skipped{grid}"
    )


def _sample_region(r: RegionResult, cfg: Any) -> None:
    speed = f", {r.seconds_per_region:.1f} s per new region" if r.seconds_per_region is not None else ""
    print(f"{r.out}: {r.finished}/{r.n_regions} regions finished ({r.n_new} new{speed})")


def _evaluate(r: EvaluateResult, cfg: EvaluateConfig) -> None:
    from histoldm.evaluate.run import report_lines

    for line in report_lines(r.metrics):
        print(line)
    print(f"wrote {cfg.out / 'metrics.json'}")


def _evaluate_region(r: RegionEvalResult, cfg: Any) -> None:
    from histoldm.evaluate.region import region_report_lines

    for line in region_report_lines(r.metrics):
        print(line)
    print(f"wrote {r.out / 'metrics.json'}")


def _utility(r: UtilityResult, cfg: UtilityConfig) -> None:
    from histoldm.evaluate.utility import utility_lines

    for line in utility_lines(r.metrics["utility"]):
        print(line)
    print(f"wrote {cfg.out / 'metrics.json'} and {r.plot}")


def _fid_ref(r: FidRefResult, cfg: Any) -> None:
    p = r.protocol
    as_real = p.extend(
        n_real=p.n,
        n_fake="-",
        image_format_real=p.image_format,
        image_format_fake="-",
        image_size_real=p.image_size,
        image_size_fake="-",
    )
    print(f"wrote {r.stats}  [{as_real.line()}]")
    if r.skipped:
        print(f"skipped {len(r.skipped)} unreadable files (listed in the manifest)")


def _convert(r: ConvertResult, cfg: Any) -> None:
    counts = ", ".join(
        f"{comp} {c['tensors']} tensors / {c['parameters'] / 1e6:.2f}M" for comp, c in r.converted.items()
    )
    print(f"bundle {r.bundle}: {counts}; {r.skipped} checkpoint entries skipped (see {r.report})")
    for reason, n in r.skipped_by_reason.items():
        print(f"  skipped {n}: {reason}")


def _demo(r: DemoResult, cfg: Any) -> None:
    print(f"demo finished in {r.timing['line']}; open the report: {r.report}")


def _sweep(r: SweepResult, cfg: Any) -> None:
    print(open(r.table, encoding="utf-8").read())
    print(f"table: {r.table}  plot: {r.plot}  report: {r.report}")


def _run_tile(cfg: TileConfig) -> TileResult | None:
    from histoldm.data.tiling import run_tile

    return run_tile(cfg)


def _run_scores(cfg: ScoresConfig) -> ScoresResult | None:
    from histoldm.data.scores import run_scores

    return run_scores(cfg)


def _run_summarize(cfg: SummarizeConfig) -> SummarizeResult | None:
    from histoldm.summaries.summarize import run_summarize

    return run_summarize(cfg)


def _run_split(cfg: SplitConfig) -> SplitResult | None:
    from histoldm.data.splits import run_split

    return run_split(cfg)


def _run_captions(cfg: CaptionsConfig) -> CaptionsResult | None:
    from histoldm.data.captions import run_captions

    return run_captions(cfg)


def _run_export_patches(cfg: ExportPatchesConfig) -> ExportPatchesResult | None:
    from histoldm.data.export import run_export_patches

    return run_export_patches(cfg)


def _run_encode_text(cfg: EncodeTextConfig) -> EncodeTextResult | None:
    from histoldm.text.cache import run_encode_text

    return run_encode_text(cfg)


def _run_train_vae(cfg: TrainVAEConfig) -> TrainVAEResult | None:
    from histoldm.train.vae import run_train_vae

    return run_train_vae(cfg)


def _run_encode_latents(cfg: EncodeLatentsConfig) -> EncodeLatentsResult | None:
    from histoldm.train.latents import run_encode_latents

    return run_encode_latents(cfg)


def _run_train(cfg: TrainConfig) -> TrainResult | None:
    from histoldm.train.trainer import run_train

    return run_train(cfg)


def _run_distill(cfg: DistillConfig) -> DistillResult | None:
    from histoldm.train.distill import run_distill

    return run_distill(cfg)


def _run_sample(cfg: SampleConfig) -> SampleResult | None:
    from histoldm.sampling.run import run_sample

    return run_sample(cfg)


def _run_sample_region(cfg: RegionConfig) -> RegionResult | None:
    from histoldm.sampling.region_run import run_sample_region

    return run_sample_region(cfg)


def _run_evaluate(cfg: EvaluateConfig) -> EvaluateResult | None:
    from histoldm.evaluate.run import run_evaluate

    return run_evaluate(cfg)


def _run_evaluate_region(cfg: RegionEvalConfig) -> RegionEvalResult | None:
    from histoldm.evaluate.region import run_evaluate_region

    return run_evaluate_region(cfg)


def _run_utility(cfg: UtilityConfig) -> UtilityResult | None:
    from histoldm.evaluate.utility import run_utility

    return run_utility(cfg)


def _run_fid_ref(cfg: FidRefConfig) -> FidRefResult | None:
    from histoldm.evaluate.run import run_fid_ref

    return run_fid_ref(cfg)


def _run_convert(cfg: ConvertConfig) -> ConvertResult | None:
    from histoldm.models.convert import run_convert

    return run_convert(cfg)


def _run_demo(cfg: DemoConfig) -> DemoResult | None:
    from histoldm.experiments.demo import run_demo

    return run_demo(cfg)


def _run_sweep(cfg: SweepConfig) -> SweepResult | None:
    from histoldm.experiments.sweep import run_sweep

    return run_sweep(cfg)


COMMANDS = (
    StageCommand(
        "tile",
        "Cut fixed-magnification tissue patches from every slide OpenSlide reads.",
        "histoldm tile slides/ --out store --magnification 10 --size 256 --overlap 32 --workers 2",
        TileConfig,
        _run_tile,
        _tile,
        positional="slides",
        converters={"shard": parse_shard},
        interrupted="the slides tiled so far are kept in {out}; the same command resumes with the rest",
    ),
    StageCommand(
        "scores",
        "Attach tumour and TIL probabilities to patches (CSV, heat-map grids, or an image proxy).",
        "histoldm scores store --csv wsinfer_scores.csv",
        ScoresConfig,
        _run_scores,
        _scores,
        positional="store",
        writes=("out", "store"),
    ),
    StageCommand(
        "summarize",
        "Summarise pathology reports to at most N CLIP tokens (extractive, any OpenAI-compatible LLM, or a local LLM).",
        "histoldm summarize TCGA_Reports.csv --out summaries.jsonl --budget 35 --backend extractive",
        SummarizeConfig,
        _run_summarize,
        _summarize,
        positional="input",
        aliases={"timeout_s": "--timeout"},
        interrupted="the summaries written so far are kept in {out}; the same command resumes with the rest",
    ),
    StageCommand(
        "split",
        "Split cases (patients) into train/val/test; no case in two splits.",
        "histoldm split --store store --out split.json --seed 0 --fractions train=0.8,val=0.1,test=0.1",
        SplitConfig,
        _run_split,
        _split,
    ),
    StageCommand(
        "captions",
        "Build one caption per patch (per summary with --all-summaries) from a template.",
        "histoldm captions store --summaries summaries.jsonl --levels low,mid,high",
        CaptionsConfig,
        _run_captions,
        _captions,
        positional="store",
        writes=("out", "store"),
        converters={"levels": lambda text: text.split(",")},
    ),  # one comma-separated value, as before: `--levels a,b STORE`
    StageCommand(
        "export-patches",
        "Write the real patches of one split (e.g. test) with an index.jsonl; --size resizes them to the model's "
        "resolution.",
        "histoldm export-patches work/store --captions work/captions.parquet --split work/split.json --out "
        "work/test_patches --size 256",
        ExportPatchesConfig,
        _run_export_patches,
        _export_patches,
        positional="store",
    ),
    StageCommand(
        "encode-text",
        "Encode each unique caption once with a frozen text encoder (cache for training and sampling); shardable "
        "with accelerate launch.",
        "histoldm encode-text captions.parquet --text-encoder vinid/plip --mode pathldm --max-length 154 --out "
        "text-cache",
        EncodeTextConfig,
        _run_encode_text,
        _encode_text,
        positional="captions",
        torch_threads=True,
        interrupted="{out} keeps the captions cached by earlier runs; the same command encodes the rest",
    ),
    StageCommand(
        "train-vae",
        "Train or fine-tune a KL autoencoder (f=4) on a patch store; reports PSNR/SSIM on held-out patches.",
        "histoldm train-vae work/store --out work/vae --init kl-f4 --steps 20000",
        TrainVAEConfig,
        _run_train_vae,
        _train_vae,
        positional="store",
        torch_threads=True,
        interrupted="the last checkpoint in {out} is kept; the same command resumes from it",
    ),
    StageCommand(
        "encode-latents",
        "Encode a patch store with an autoencoder (preset, folder or hub id) into latent shards; resumable, "
        "shardable with accelerate launch.",
        "histoldm encode-latents work/store --vae work/vae/autoencoder --out work/latents",
        EncodeLatentsConfig,
        _run_encode_latents,
        _encode_latents,
        positional="store",
        torch_threads=True,
        interrupted="the shards finished so far are kept in {out}; the same command resumes with the rest",
    ),
    StageCommand(
        "train",
        "Train the latent diffusion UNet (CPU, one GPU, or several via `accelerate launch` / `torchrun`); re-running "
        "resumes.",
        "histoldm train --config histoldm --set data.latents=work/latents --resume latest",
        TrainConfig,
        _run_train,
        _train,
        dry_run=True,
        nested={"--init-from": "model.init_from"},
        writes=("run_dir", "runs_dir"),
        torch_threads=True,
        interrupted="the run's last checkpoint is kept; the same command resumes from it",
    ),
    StageCommand(
        "distill",
        "Distil a trained model into a few-step student (latent consistency distillation, guidance baked in); "
        "re-running resumes.",
        "histoldm distill --teacher runs/00001-pathldm --latents work/latents --text-cache work/text-cache "
        "--captions work/captions.parquet --split work/split.json",
        DistillConfig,
        _run_distill,
        _distill,
        dry_run=True,
        nested={
            "--latents": "data.latents",
            "--text-cache": "data.text_cache",
            "--captions": "data.captions",
            "--split": "data.split",
        },
        writes=("run_dir", "runs_dir"),
        torch_threads=True,
        interrupted="the run's last checkpoint is kept; the same command resumes from it",
    ),
    StageCommand(
        "sample",
        "Generate one PNG per caption with DDIM (50 steps as PathLDM; guidance 1.75, the seed paper's: PathLDM's "
        "notebook used 1.5); resumable, shardable with accelerate launch.",
        "histoldm sample --checkpoint runs/00001-pathldm --captions captions.parquet --split split.json --out samples",
        SampleConfig,
        _run_sample,
        _sample,
        torch_threads=True,
        interrupted="the images written so far are kept in {out}; the same command resumes with the rest",
    ),
    StageCommand(
        "sample-region",
        "Generate regions larger than the model (overlapping windows, each captioned from a tumour/TIL map cell) as "
        "pyramidal TIFFs; resumable, --shard K/N.",
        "histoldm sample-region --checkpoint model/ --size 2048 --label-map map.csv --summary 'invasive ductal "
        "carcinoma' --out regions",
        RegionConfig,
        _run_sample_region,
        _sample_region,
        converters={"shard": parse_shard},
        torch_threads=True,
        interrupted="finished regions are kept in {out}; the same command resumes with the rest",
    ),
    StageCommand(
        "evaluate",
        "FID, KID and precision/recall of generated images, each with its protocol; optional memorisation and "
        "adherence checks.",
        "histoldm evaluate --real data/test_patches --fake samples/ --out eval/ --train-real data/train_patches",
        EvaluateConfig,
        _run_evaluate,
        _evaluate,
        torch_threads=True,
        interrupted="metrics.json is written only at the end; run the same command again",
    ),
    StageCommand(
        "evaluate-region",
        "Crop FID/KID (evaluate on random model-size crops), seam score against real slide regions, and map "
        "agreement of sample-region output.",
        "histoldm evaluate-region --regions regions/ --real data/test_patches --out eval-regions/",
        RegionEvalConfig,
        _run_evaluate_region,
        _evaluate_region,
        torch_threads=True,
        interrupted="metrics.json is written only at the end; run the same command again",
    ),
    StageCommand(
        "utility",
        "Does the generated set help? Linear probes per caption attribute: train on real, on synthetic only (TSTR), "
        "on both, and augmentation curves, scored on held-out REAL patches.",
        "histoldm utility --real data/test_patches --train-real data/train_patches --fake samples-train/ --captions "
        "data/captions.parquet --split data/split.json --out utility/",
        UtilityConfig,
        _run_utility,
        _utility,
        torch_threads=True,
        interrupted="metrics.json is written only at the end; run the same command again",
    ),
    StageCommand(
        "fid-ref",
        "Reference FID statistics (mu, sigma; pytorch-fid .npz layout, protocol recorded) of a folder of real images.",
        "histoldm fid-ref data/test_patches --out stats/test.npz",
        FidRefConfig,
        _run_fid_ref,
        _fid_ref,
        positional="images",
        torch_threads=True,
        interrupted="{out} is written only at the end; run the same command again",
    ),
    StageCommand(
        "convert-ldm",
        "Convert a CompVis latent-diffusion checkpoint (PathLDM's release) into a model bundle, checking every tensor.",
        "histoldm convert-ldm pathldm_plip.ckpt --out models/pathldm-plip",
        ConvertConfig,
        _run_convert,
        _convert,
        positional="checkpoint",
        torch_threads=True,
    ),
    StageCommand(
        "demo",
        "Run every stage for real on the bundled CC0 slide and synthetic cases (CPU, minutes) and write report.html.",
        "histoldm demo --out demo-out",
        DemoConfig,
        _run_demo,
        _demo,
        nested={"--train-steps": ("recipe.train.max_steps", TrainConfig.model_fields["max_steps"])},
        interrupted="the stages finished so far are kept in {out}; the same command resumes with the rest",
    ),
    StageCommand(
        "sweep",
        "Summaries at several token budgets -> captions -> train -> sample -> evaluate; FID with its seed-to-seed "
        "floor and train memory per budget.",
        "histoldm sweep --config sweep_demo",
        SweepConfig,
        _run_sweep,
        _sweep,
        dry_run=True,
        torch_threads=True,
        interrupted="the stages finished so far are kept in {out}; the same command resumes with the rest",
    ),
)


def register(sub: Any) -> None:
    for command in COMMANDS:
        command.add_to(sub)
