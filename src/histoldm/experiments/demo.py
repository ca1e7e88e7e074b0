"""`histoldm demo`: every stage for real, at tiny scale, on CPU, ending in one HTML report.

The CC0 slide is tiled, a synthetic report per case is summarised to 35 CLIP tokens, captions get
tumor/TIL levels (proxy scores on the slide, known values on the synthetic cases), the cases are
split by patient, a small autoencoder and a tiny conditional UNet are trained, held-out captions
are sampled with DDIM-50 and guidance 1.75, and FID/KID/precision-recall plus condition adherence
are measured against the held-out real patches, overall and separately for the slide's held-out blocks
(real tissue) and the synthetic cases. Training captions are sampled too, for the utility evaluation:
linear probes trained on real, synthetic and both, scored on the held-out real patches. With `--with-turbo`
the trained UNet is also distilled into a 4-step student whose samples of the same held-out captions are
measured the same way and reported beside DDIM-50's (histoldm.experiments.turbo_step).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histoldm.data.captions import load_summaries
from histoldm.data.splits import load_split
from histoldm.devices import machine_facts, set_cpu_threads
from histoldm.evaluate.adherence import run_adherence
from histoldm.evaluate.results import Adherence, Metrics
from histoldm.evaluate.utility import table_rows, utility_lines
from histoldm.experiments.chain import (
    ChainResult,
    LatentCache,
    model_mpp,
    noise_floor,
    prepare_latents,
    summarize,
    train_sample_evaluate,
)
from histoldm.experiments.config import DemoConfig
from histoldm.experiments.demo_data import SLIDE_GROUP, SYNTHETIC_GROUP, build_demo_data
from histoldm.experiments.demo_region import demo_region
from histoldm.experiments.held_out_groups import group_ids, group_metrics, group_rows
from histoldm.experiments.turbo_step import TURBO_SAMPLES, TurboResult, turbo_step
from histoldm.experiments.utility_step import utility_step
from histoldm.fileio import atomic_write_json, read_jsonl
from histoldm.html_report import caption_rows, stage_manifests, write_report
from histoldm.manifest import stage_times
from histoldm.sampling.solvers import passes_per_image


@dataclass(frozen=True)
class DemoResult:
    """`histoldm demo`: the report and the time per stage (timing.json)."""

    report: Path
    timing: dict[str, Any]  # stage_timing's

    @property
    def minutes(self) -> float:
        return self.timing["total_s"] / 60


HELD_OUT_GROUPS = {"real tissue": SLIDE_GROUP, "synthetic cases": SYNTHETIC_GROUP}
TURBO_GROUP = "4-step student (--with-turbo)"
# Timing rows named by folder where the manifest's stage name is shared: the student's samples apart from DDIM-50's.
STAGE_BY_FOLDER = {f"model/{TURBO_SAMPLES}": "sample-turbo"}


def loss_curve(stats: Path, out: Path) -> Path:
    """PNG of the training loss from the run's stats.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(read_jsonl(stats))
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], marker=".")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("MSE loss (epsilon)")
    ax.set_title("LDM training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _adherence_rows(adherence: Adherence | None, label: str) -> list[tuple[str, str, str]]:
    rows = []
    for attr, r in adherence.by_attribute.items() if adherence else ():
        if r.measured:
            rows.append(
                (
                    f"condition adherence, {label}: {attr}",
                    f"AUROC {r.auroc:.3f} (chance 0.5, p = {r.p_value:.3g})",
                    f"{r.descriptor} of {r.n_high} high vs {r.n_low} low {attr} captions",
                )
            )
        else:
            rows.append((f"condition adherence, {label}: {attr}", "not measured", str(r.status or "")))
    return rows


def _metric_rows(metrics: Metrics, real_adherence: Adherence | None, floor: Metrics) -> list[tuple[str, str, str]]:
    seeds = "seed-to-seed floor ({} vs {} of the same captions and model)".format(*floor.fid.protocol["seeds"])
    fid, kid, pr = metrics.fid, metrics.kid, metrics.precision_recall
    rows = [("FID", f"{fid.value:.2f} (floor {floor.fid.value:.2f})", f"{fid.protocol_line}; {seeds}")]
    if kid.measured:
        value = f"{kid.mean:.4f} ± {kid.std:.4f} (floor {floor.kid.mean:.4f})"
        rows.append(("KID", value, f"{kid.protocol_line}; {seeds}"))
    if pr.measured:
        rows.append(("precision / recall (k=3)", f"{pr.precision:.3f} / {pr.recall:.3f}", pr.protocol_line))
    rows += _adherence_rows(metrics.adherence, "generated")
    rows += _adherence_rows(real_adherence, "real held-out (ceiling)")
    return rows


def _seconds_per_image(samples: Path) -> str:
    """The sample stage's wall time (loading included) over the images it made, from its manifest."""
    produced = json.loads((samples / "manifest.json").read_text(encoding="utf-8"))
    made = produced["produced"]["new_this_run_main_process"]
    if not made:
        return "not measured (its images were made by an earlier run)"
    return f"{produced['wall_time_s'] / made:.3f} s"


def _turbo_rows(turbo: TurboResult, result: ChainResult, floor: Metrics, machine: str) -> list[tuple[str, str, str]]:
    """The student's row group, after the teacher's metrics: its metrics as the teacher's (the same floor), its
    cost beside the teacher's sampler."""
    d, teacher, student = turbo.distill_config, result.sample_config, turbo.sample_config
    name = f"{teacher.solver.upper()}-{teacher.steps}"  # DDIM-50 with the demo's recipe
    passes = [passes_per_image(c.solver, c.steps, c.guidance_interval) for c in (teacher, student)]
    return [
        (
            f"{TURBO_GROUP}: distillation",
            f"{turbo.cost['steps']} steps in {_seconds(turbo.cost['seconds'])}",
            f"histoldm distill of the UNet above on its training caches (model/run-turbo): batch {d.batch_size}, "
            f"lr {d.optim.lr:g}, guidance range {d.guidance_range[0]:g}-{d.guidance_range[1]:g}; the wall time "
            f"of the steps in the session that finished them, on {machine}",
        ),
        *(
            (f"{TURBO_GROUP}: {metric}", value, protocol)
            for metric, value, protocol in _metric_rows(turbo.metrics, None, floor)
        ),
        (
            f"{TURBO_GROUP}: UNet passes per image",
            f"{passes[1]} ({name}: {passes[0]})",
            f"{student.solver.upper()} {student.steps} steps, one pass each (guidance {student.guidance} an input "
            f"of the student); {name} with guidance {teacher.guidance}: a conditional and an unconditional pass "
            + ("per step" if teacher.guidance_interval is None else "per step inside its guidance interval"),
        ),
        (
            f"{TURBO_GROUP}: wall time per image",
            f"{_seconds_per_image(turbo.samples)} ({name}: {_seconds_per_image(result.samples)})",
            f"each sample stage's wall time, model loading included, over the images it made (model/{TURBO_SAMPLES}/"
            f"manifest.json, model/samples/manifest.json), on {machine}",
        ),
    ]


def _real_tissue_first(result: ChainResult) -> list:
    """The grid's rows: captions of held-out real tissue first, then of synthetic cases."""
    ids = {name: group_ids(result.items, pattern) for name, pattern in HELD_OUT_GROUPS.items()}
    return [
        row
        for name in HELD_OUT_GROUPS
        for row in caption_rows(
            [r for r in result.items if r["patch_id"] in ids[name]],
            result.samples,
            result.real,
            max_rows=4,
            label=f"[{name}] ",
        )
    ]


def _utility_rows(utility: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Headline rows: AUROC (mean of the seeds) of the real, TSTR and real + synthetic probes, and the curve's
    first point."""
    rows = []
    first = min(utility["protocol"]["fractions"])
    for attr, a in utility["by_attribute"].items():
        names = {r["condition"]: r for r in a["conditions"]}
        wanted = [
            "real",
            "synthetic only (TSTR)",
            "real + synthetic",
            f"{first:.0%} real",
            f"{first:.0%} real + synthetic",
        ]
        for g in ("real tissue", "synthetic cases"):
            parts = []
            for w in wanted:
                r = names.get(w, {}).get("by_group", {}).get(g, {})
                parts.append(f"{w} {r['auroc_mean']:.2f}" if "auroc_mean" in r else f"{w} n/a")
            rows.append((f"utility {attr}, held-out {g}", "AUROC " + "; ".join(parts), utility["protocol_line"]))
    return rows


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 600 else f"{s / 60:.1f} min"


def stage_timing(out: Path, total_s: float, machine: dict[str, Any]) -> dict[str, Any]:
    """Seconds per stage (from the manifests, summed by stage name in run order), the rest of the run,
    the total and the machine, plus the one-line form the demo prints last."""
    stages: dict[str, float] = {}
    for label, stage, seconds in stage_times(stage_manifests(out)):
        stage = STAGE_BY_FOLDER.get(label, stage)
        stages[stage] = stages.get(stage, 0.0) + seconds
    other = max(0.0, total_s - sum(stages.values()))  # real-image and per-group metrics, loss curve, between stages
    machine_text = (
        f"{machine['cpu']}, {machine['cores']} cores, {machine['threads']} torch "
        f"thread{'s' * (machine['threads'] != 1)}"
    )
    line = (
        f"{_seconds(total_s)} on {machine_text} ("
        + ", ".join(f"{k} {_seconds(v)}" for k, v in [*stages.items(), ("other", other)])
        + ")"
    )
    return {
        "stages_s": {k: round(v, 1) for k, v in stages.items()},
        "other_s": round(other, 1),
        "total_s": round(total_s, 1),
        "machine": machine,
        "machine_text": machine_text,
        "line": line,
    }


def _region_figure(out: Path, cfg: DemoConfig, result: ChainResult, summaries: Path, case: str, mpp: float) -> Path:
    """One large region from a held-out case's summary and a quadrant map (histoldm.experiments.demo_region)."""
    size = cfg.region_scale * (cfg.recipe.image_size or cfg.data.patch_size)
    steps = {"steps": cfg.recipe.sample["steps"]} if "steps" in cfg.recipe.sample else {}
    summary = load_summaries(summaries).get(case, "")
    return demo_region(out / "region", result.train.run_dir / "model", summary, mpp, size, {"preset": "fast", **steps})


def _figures(
    out: Path, cfg: DemoConfig, result: ChainResult, turbo: TurboResult | None, summaries: Path, case: str, mpp: float
) -> list[tuple[str, Path]]:
    """The report's figures: loss curve, the held-out grid (and the student's, with --with-turbo), the large
    region (when asked for), the utility plot."""
    curve = loss_curve(result.train.run_dir / "stats.jsonl", out / "loss.png")
    region = []
    if cfg.region_scale:
        size = cfg.region_scale * (cfg.recipe.image_size or cfg.data.patch_size)
        title = (
            f"A generated {size} x {size} px region (sample-region, fast preset) from the summary of held-out case "
            f"{case} (right), and the map its windows followed (left: red = tumour level, green = TIL level; "
            "top-left quadrant high/high)"
        )
        region = [(title, _region_figure(out, cfg, result, summaries, case, mpp))]
    utility = (
        "Does the synthetic data help? AUROC of linear probes on held-out real patches against the share of real "
        "training patches, with and without the generated set (bars: seed-0 95% case-bootstrap interval)"
    )
    student = (
        [(f"{TURBO_GROUP}: the same held-out captions and seed as the grid above", turbo.samples / "grid.png")]
        if turbo
        else []
    )
    return [
        ("Training loss", curve),
        ("Generated held-out captions (grid)", result.samples / "grid.png"),
        *student,
        *region,
        (utility, out / "model" / "utility" / "utility.png"),
    ]


def _intro(
    cfg: DemoConfig, split: dict[str, list[str]], latents: LatentCache, result: ChainResult, timing: dict[str, Any]
) -> str:
    """The report's first paragraph: what ran, on what data, at what scale, and how to read the numbers."""
    d, r = cfg.data, cfg.recipe
    text, train, sample = result.text_config, result.train_config, result.sample_config
    psnr = latents.autoencoder_psnr if latents.autoencoder_psnr is not None else float("nan")
    return (
        f"Every stage of histoldm ran for real at demo scale in {timing['total_s'] / 60:.1f} min on "
        f"{timing['machine_text']} (time per stage below). Data: the CC0 slide CMU-1-Small-Region "
        f"(Carnegie Mellon University) tiled at {d.magnification:g}x, {d.patch_size} px, plus "
        f"{d.synthetic_cases} synthetic H&amp;E-like cases with known tumor/TIL levels; reports are synthetic and say "
        f"so. The slide is cut into blocks of {d.slide_block} px that act as cases; its top {d.held_out_block_rows} "
        "block rows are held out and the training patches overlapping them are left out, so held-out tissue is never "
        "seen in training. Blocks of one slide are not independent patients (neighbouring tissue, one stain, one "
        "scan): read the real-tissue numbers as a check, not as a generalisation estimate. Split by case: "
        f"{len(split.get('train', []))} train cases; the held-out test cases, whose patches are the real side of "
        f"every metric, are {', '.join(split.get('test', []))}. Metrics are given over all of them and separately "
        "for the real tissue and the synthetic cases. "
        f"Models work at {r.image_size or d.patch_size} px: a {r.autoencoder} autoencoder "
        f"(held-out PSNR {psnr:.1f} dB), text encoder {text.text_encoder} ({text.mode}), "
        f"UNet preset {train.model.unet_preset} trained {result.train.steps} steps. Samples: "
        f"{sample.solver.upper()} {sample.steps} steps, guidance {sample.guidance}. At this scale the numbers show "
        "that the pipeline works end to end, not image quality: FID on a few dozen images is dominated by its bias. "
        "Beside FID and KID stands their seed-to-seed floor: the same captions sampled again from the same model "
        "with the next seed, measured against the first set."
    )


def _tables(utility: dict[str, Any], timing: dict[str, Any], summaries: Path) -> list[tuple[str, list[str], list]]:
    """The report's tables: utility per held-out group, time per stage, the summaries."""
    utility_header = [
        "attribute",
        "probe trained on",
        "N real / synthetic",
        "AUROC (seed 0; seed 1)",
        "balanced accuracy (seed 0; seed 1)",
    ]
    per_group = [
        (
            f"Utility, held-out {g}: AUROC and balanced accuracy per seed [95% case-bootstrap interval] "
            "(protocol: the metrics table)",
            utility_header,
            table_rows(utility, g),
        )
        for g in ("real tissue", "synthetic cases")
    ]
    times = [
        *([k, f"{v:.1f}"] for k, v in timing["stages_s"].items()),
        ["other (real-image and per-group metrics, loss curve, between stages)", f"{timing['other_s']:.1f}"],
        [f"total, on {timing['machine_text']}", f"{timing['total_s']:.1f}"],
    ]
    summary_rows = [[r["case_id"], r["tokens"], r["status"], r["summary"]] for r in read_jsonl(summaries)]
    return [
        *per_group,
        ("Time per stage", ["stage", "seconds"], times),
        ("Summaries", ["case", "tokens", "status", "summary"], summary_rows),
    ]


def _cases_by_split(split_file: Path) -> dict[str, list[str]]:
    split: dict[str, list[str]] = defaultdict(list)
    for case, name in sorted(load_split(split_file).items()):
        split[name].append(case)
    return split


def run_demo(cfg: DemoConfig) -> DemoResult:
    started = time.time()
    threads = set_cpu_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    seed = cfg.recipe.seed

    # Data: the CC0 slide + synthetic cases, scores, synthetic reports, a patient-level split.
    data = build_demo_data(out / "data", cfg.data, workers=threads)  # the synthetic tiles: one process per free core
    # Summaries at the paper's best budget with the offline extractive backend.
    summaries = summarize(data["reports"], out / "summaries.jsonl", cfg.budget)
    # Autoencoder and latent cache, then captions -> text cache -> training -> sampling -> metrics.
    latents = prepare_latents(out, data["store"], data["split"], cfg.recipe)
    chain = {"store": data["store"], "split": data["split"], "recipe": cfg.recipe}
    result = train_sample_evaluate(out / "model", summaries=summaries, latents=latents.latents, name="demo", **chain)
    # FID/KID of a second seed's samples against the first: the noise the metrics carry at this N.
    floor = noise_floor(out / "model", result, cfg.recipe)
    # The same adherence check on the real held-out images: the ceiling a perfect model would reach.
    mpp = model_mpp(data["store"], cfg.recipe.image_size)
    real_adherence = run_adherence(result.real, captions_parquet=result.captions_file, mpp=mpp, seed=seed)
    # The same numbers for the real-tissue and the synthetic held-out cases apart, then the utility evaluation.
    by_group = group_metrics(result, HELD_OUT_GROUPS, mpp=mpp, seed=seed)
    utility = utility_step(
        out / "model", result=result, n_fake=cfg.utility_samples, groups=HELD_OUT_GROUPS, **chain
    ).metrics["utility"]
    # With --with-turbo: the trained UNet distilled into a 4-step student, its held-out samples measured the same way.
    turbo = turbo_step(out / "model", result=result, recipe=cfg.recipe) if cfg.with_turbo else None
    atomic_write_json(out / "model" / "held-out-groups.json", {name: g.to_json() for name, g in by_group.items()})
    for line in utility_lines(utility):
        print(line)

    # Report.
    split = _cases_by_split(data["split"])
    figures = _figures(out, cfg, result, turbo, summaries, split["test"][0], mpp)
    timing = stage_timing(out, time.time() - started, machine_facts())
    student = _turbo_rows(turbo, result, floor, timing["machine_text"]) if turbo else []
    report = write_report(
        out / "report.html",
        title="histoldm demo",
        intro=_intro(cfg, split, latents, result, timing),
        caption_rows=_real_tissue_first(result),
        metrics=_metric_rows(result.metrics, real_adherence, floor)
        + student
        + group_rows(by_group, result.metrics.fid.protocol_line)
        + _utility_rows(utility),
        figures=figures,
        tables=_tables(utility, timing, summaries),
        manifests=stage_manifests(out),
    )
    atomic_write_json(out / "timing.json", timing)
    return DemoResult(report, timing)
