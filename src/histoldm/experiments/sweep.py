"""`histoldm sweep`: the seed paper's Table 2 from one config.

For each summary budget (20 / 35 / 50 / 154 CLIP tokens by default): summarise the reports, caption
the patches, encode the captions, train, sample the held-out captions and evaluate. The patch
store, split and latent cache are shared by every budget, so the rows differ only in their
summaries and in the text context length each budget needs (`context_length`). Beside each FID
and KID stands its seed-to-seed floor (the same captions sampled again with the next seed). With `seeds`
every budget runs once per seed and an across-seeds table says which differences stand out of the noise
(histoldm.experiments.sweep_seeds). Writes results.csv, results.md, results.png, tokens.png and report.html;
a re-run resumes finished stages.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histoldm.data.captions import fill_template
from histoldm.data.config import DEFAULT_TEMPLATE, CaptionsConfig
from histoldm.errors import UserError
from histoldm.evaluate.adherence import run_adherence
from histoldm.evaluate.results import Metrics
from histoldm.experiments.chain import (
    ChainResult,
    model_mpp,
    noise_floor,
    prepare_latents,
    summarize,
    train_sample_evaluate,
)
from histoldm.experiments.config import ModelRecipe, SweepConfig
from histoldm.experiments.demo_data import build_demo_data
from histoldm.experiments.sweep_facts import FACT_NOTE, drawn_truth, fact_columns, fact_row
from histoldm.experiments.sweep_seeds import SEEDS_NOTE, across_seeds, seed_metrics
from histoldm.fileio import atomic_write_text, read_jsonl
from histoldm.html_report import caption_rows, stage_manifests, write_report
from histoldm.manifest import write_manifest
from histoldm.text.encoders import load_text_encoder
from histoldm.text.tokenizer import CLIP_CONTEXT, count_tokens

COLUMNS = [
    "budget",
    "seed",
    "mean_summary_tokens",
    "text_context",
    "truncated_captions",
    "unique_captions",
    "fid",
    "fid_floor",
    "kid_mean",
    "kid_std",
    "kid_floor",
    "precision",
    "recall",
    "adherence_tumor_auroc",
    "adherence_til_auroc",
    "adherence_tumor_real_auroc",
    "adherence_til_real_auroc",
    "peak_train_memory_gib",
    "peak_train_rss_gib",
    "train_rss_rise_gib",
    "train_steps",
    "train_img_s",
    "wall_time_s",
]
CONTEXT_RULE = (
    'text context per row = BOS + longest caption prefix ("high tumor; high til;") + max(budget, longest summary '
    "in the encoder's tokens) + EOS; chunks mode rounds up to whole 77-token windows"
)


@dataclass(frozen=True)
class SweepResult:
    """`histoldm sweep`: the results table (Markdown; results.csv beside it), its plot and the report."""

    table: Path
    plot: Path
    report: Path


def _token_counts(encoder: Any, texts: list[str]) -> list[int]:
    """Tokens of each text in the encoder's own tokenizer, without BOS/EOS."""
    return (
        [len(ids) for ids in encoder.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]
        if texts
        else []
    )


def caption_prefix_tokens(encoder: Any) -> int:
    """Tokens the default caption template puts before the summary, longest level words ("high tumor;
    high til;"): the caption minus its summary, so the "; " joining them is counted too."""
    levels = CaptionsConfig.model_fields["levels"].get_default(call_default_factory=True)
    probe = "x"
    captions = [
        fill_template(DEFAULT_TEMPLATE, {"tumor": a, "til": b, "summary": probe}) for a in levels for b in levels
    ]
    return max(_token_counts(encoder, captions)) - _token_counts(encoder, [probe])[0]


def context_length(budget: int, summaries: list[str], encoder: Any) -> int:
    """The row's text context: BOS + caption prefix + max(budget, longest summary) + EOS, in the encoder's tokens.

    The budget counts CLIP tokens (the summariser's unit), so with a CLIP encoder no summary is longer
    than it and the context is set by the budget alone (the paper's 154 = 150-token summary + 4 prefix
    tokens). A tokenizer that splits text finer (MiniLM's WordPiece: up to 23% more tokens on the synthetic
    summaries) gets the longest summary instead, so no caption is cut. `chunks` mode encodes whole
    77-token windows of 75 text tokens each, so its length is rounded up to whole windows."""
    text_tokens = caption_prefix_tokens(encoder) + max(budget, *_token_counts(encoder, summaries), 0)
    if encoder.mode == "chunks":
        return CLIP_CONTEXT * math.ceil(text_tokens / (CLIP_CONTEXT - 2))
    return text_tokens + 2


def row_recipes(cfg: SweepConfig, summaries: dict[int, Path]) -> dict[int, ModelRecipe]:
    """Each budget's recipe with its text context length, checked against the encoder before any training
    (a CLIP `truncate` encoder cannot take a 162-token context: better said now than after three rows)."""
    r = cfg.recipe
    if cfg.text_context == "recipe":
        return {b: r for b in summaries}
    text = r.encode_text
    encoder = load_text_encoder(text["text_encoder"], text.get("mode"), None, device="cpu")
    recipes = {}
    for budget, path in summaries.items():
        texts = [rec["summary"] for rec in read_jsonl(path) if rec.get("status") != "failed" and rec.get("summary")]
        length = context_length(budget, texts, encoder)
        try:
            load_text_encoder(text["text_encoder"], text.get("mode"), length, device="cpu")
        except UserError as e:
            raise UserError(f"budget {budget} needs a {length}-token text context ({CONTEXT_RULE}): {e}") from None
        recipes[budget] = r.model_copy(update={"encode_text": {**r.encode_text, "max_length": length}})
    return recipes


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def row_name(budget: int, seed: int, recipe_seed: int) -> str:
    """A row's work folder: budget-B for the recipe's seed (a one-seed sweep's layout), budget-B-seedS otherwise."""
    return f"budget-{budget}" if seed == recipe_seed else f"budget-{budget}-seed{seed}"


def _row(
    budget: int, seed: int, summaries: Path, result: ChainResult, floor: Metrics | None, seconds: float
) -> dict[str, Any]:
    tokens = [r["tokens"] for r in read_jsonl(summaries) if r.get("status") != "failed"]
    m = result.metrics
    kid, pr = m.kid, m.precision_recall
    by_attribute = m.adherence.by_attribute if m.adherence else {}
    tumor, til = by_attribute.get("tumor"), by_attribute.get("til")
    rss, train = result.train_peak_rss, result.train
    return {
        "budget": budget,
        "seed": seed,
        "mean_summary_tokens": round(statistics.mean(tokens), 1) if tokens else None,
        "text_context": result.text.meta["length"],
        "truncated_captions": result.text.n_truncated,
        "unique_captions": result.captions.unique_captions,
        "fid": round(m.fid.value, 3),
        "fid_floor": round(floor.fid.value, 3) if floor else None,
        "kid_mean": _round(kid.mean, 5),
        "kid_std": _round(kid.std, 5),
        "kid_floor": round(floor.kid.mean, 5) if floor else None,
        "precision": _round(pr.precision if pr else None, 3),
        "recall": _round(pr.recall if pr else None, 3),
        "adherence_tumor_auroc": _round(tumor.auroc if tumor else None, 3),
        "adherence_til_auroc": _round(til.auroc if til else None, 3),
        "peak_train_memory_gib": train.peak_memory.get("allocated_gib"),
        "peak_train_rss_gib": rss.get("peak_rss_gib"),
        "train_rss_rise_gib": rss.get("rise_gib"),
        "train_steps": train.steps,
        "train_img_s": round(train.img_s, 1) if train.img_s else None,
        "wall_time_s": round(seconds, 1),
    }


def _ceilings(result: ChainResult, mpp: float, seed: int) -> dict[str, float | None]:
    """Tumor and TIL adherence of the real held-out images under the same captions: what the descriptor can
    separate in this data, the ceiling beside the generated images' adherence."""
    real = run_adherence(result.real, captions_parquet=result.captions_file, mpp=mpp, seed=seed).by_attribute
    return {
        f"adherence_{a}_real_auroc": _round(real[a].auroc if a in real and real[a].measured else None, 3)
        for a in ("tumor", "til")
    }


def _notes(rows: list[dict[str, Any]], cfg: SweepConfig, protocol_line: str) -> list[str]:
    """The lines under the table saying how each column was measured."""
    gpu = any(r["peak_train_memory_gib"] for r in rows)
    return [
        f"FID protocol: {protocol_line}",
        "fid_floor / kid_floor: FID and KID between two sample sets of the same held-out captions from the same "
        "model, the row's seed and the next (the seed-to-seed noise floor); FID differences between rows smaller "
        "than the floor are noise."
        if cfg.noise_floor
        else "fid_floor / kid_floor: not measured (noise_floor: false).",
        f"text_context: {CONTEXT_RULE}."
        if cfg.text_context == "budget"
        else "text_context: recipe.encode_text.max_length for every row.",
        (
            "peak_train_memory_gib: torch.cuda.max_memory_allocated over the training run."
            if gpu
            else "peak_train_memory_gib: n/a, trained on CPU (no GPU memory to measure)."
        ),
        "peak_train_rss_gib: peak resident memory of the whole sweep process while the row trained (sampled every "
        "0.05 s, exact via getrusage when the row set a new high); train_rss_rise_gib: that peak minus the RSS when "
        "training started. RSS includes Python, torch and the data already loaded, and heap earlier rows freed may be "
        "reused, so rows are compared by the rise, in the order they ran.",
        "adherence_tumor_real_auroc / adherence_til_real_auroc: the same adherence test on the real held-out "
        "images under the same captions, the ceiling the descriptor allows in this data (drawn facts such as "
        "grade 3's large nuclei or a necrosis zone move the nuclear density too, so it sits below 1).",
        "seed: every stage's seed of the row (training, held-out subset, sampling, evaluation) but the "
        f"autoencoder's and the latents', shared by all rows (seed {cfg.recipe.seed}).",
    ]


def _table_lines(columns: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _markdown(
    rows: list[dict[str, Any]], notes: list[str], columns: list[str], seeds: tuple[list[str], list[list[str]]] | None
) -> str:
    """The table of every row, under it the across-seeds table when there are several seeds, then the notes."""
    lines = _table_lines(columns, [["n/a" if r[c] is None else str(r[c]) for c in columns] for r in rows])
    if seeds:
        lines += ["", "## Across seeds", "", *_table_lines(*seeds)]
    return "\n".join(["# Summary-length sweep", "", *lines, "", *[line for note in notes for line in (note, "")]])


def _plot(rows: list[dict[str, Any]], out: Path) -> Path:
    """FID per budget with its seed-to-seed floor, and train memory: GPU allocated, else the process RSS rise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    several = len({r["seed"] for r in rows}) > 1
    labels = [f"{r['budget']}\nseed {r['seed']}" if several else str(r["budget"]) for r in rows]
    gpu = all(r["peak_train_memory_gib"] is not None for r in rows)
    memory = [r["peak_train_memory_gib"] if gpu else r["train_rss_rise_gib"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    axes[0].bar(labels, [r["fid"] for r in rows], color="#8c6bb1", label="FID vs real held-out")
    if all(r["fid_floor"] is not None for r in rows):
        axes[0].bar(
            labels, [r["fid_floor"] for r in rows], width=0.4, color="#bdbdbd", hatch="//", label="seed-to-seed floor"
        )
    axes[0].set(
        xlabel="summary budget (CLIP tokens)",
        ylabel="FID (lower is better)",
        title="FID by summary length",
        ylim=(0, 1.3 * max(r["fid"] for r in rows)),
    )  # headroom for the legend
    axes[0].legend(fontsize=8, loc="upper center", ncols=2)
    axes[1].bar(labels, [m or 0 for m in memory], color="#41ae76")
    axes[1].set(
        xlabel="summary budget (CLIP tokens)",
        ylabel="peak GiB (allocated)" if gpu else "peak RSS rise during training (GiB)",
        title="train-time GPU memory" if gpu else "train-time process memory (CPU)",
    )
    for k, r in enumerate(rows):
        axes[1].annotate(f"ctx {r['text_context']}", (k, memory[k] or 0), ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _token_histograms(summaries: dict[int, Path], contexts: dict[int, int], out: Path) -> Path:
    """One histogram per budget of the summaries' CLIP token counts, the budget marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summaries), figsize=(3.2 * len(summaries), 2.8), squeeze=False)
    for ax, (budget, path) in zip(axes[0], summaries.items()):
        tokens = [r["tokens"] for r in read_jsonl(path) if r.get("status") != "failed"]
        ax.hist(tokens, bins=range(0, max([budget, *tokens]) + 2, max(1, budget // 20)), color="#6baed6")
        ax.axvline(budget, color="#d7301f", linestyle="--", label=f"budget {budget}")
        ax.set(
            xlabel="summary tokens (CLIP)",
            ylabel="summaries",
            title=f"budget {budget}, text context {contexts[budget]}",
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _write_html(
    out: Path,
    cfg: SweepConfig,
    rows: list[dict[str, Any]],
    results: dict[tuple[int, int], ChainResult],
    floors: dict[tuple[int, int], Metrics | None],
    notes: list[str],
    figures: list[tuple[str, Path]],
    columns: list[str],
    seeds: tuple[list[str], list[list[str]]] | None,
) -> Path:
    """report.html: per budget its metrics beside the floor, example captions with real and generated patches,
    the token-length histograms and the FID plot."""
    metrics, examples, captions = [], [], []
    for (budget, seed), result in results.items():
        m, floor = result.metrics, floors[budget, seed]
        row = f"budget {budget}" + (f" seed {seed}" if seeds else "")
        fid_floor = f" (floor {floor.fid.value:.2f})" if floor else ""
        metrics.append((f"{row}: FID", f"{m.fid.value:.2f}{fid_floor}", m.fid.protocol_line))
        if m.kid.measured:
            kid_floor = f" (floor {floor.kid.mean:.4f})" if floor else ""
            value = f"{m.kid.mean:.4f} ± {m.kid.std:.4f}{kid_floor}"
            metrics.append((f"{row}: KID", value, m.kid.protocol_line))
        examples += caption_rows(result.items, result.samples, result.real, max_rows=2, label=f"[{row}] ")
        if seed == cfg.row_seeds[0]:
            for caption in list(dict.fromkeys(item["caption"] for item in result.items))[:3]:
                captions.append([budget, count_tokens(caption), caption])
    intro = (
        f"The summary-length sweep: budgets {', '.join(map(str, cfg.budgets))} CLIP tokens, one model per budget "
        f"and seed ({', '.join(map(str, cfg.row_seeds))}) trained {cfg.recipe.train['max_steps']} steps on the same "
        "patches, split and latents; only the summaries (and the text context they need) differ between rows. "
        + html.escape(" ".join(notes))
    )
    return write_report(
        out / "report.html",
        title="histoldm summary-length sweep",
        intro=intro,
        caption_rows=examples,
        metrics=metrics,
        figures=figures,
        tables=[
            ("Results", columns, [[("n/a" if r[c] is None else r[c]) for c in columns] for r in rows]),
            *([("Across seeds", *seeds)] if seeds else []),
            ("Example held-out captions by budget", ["budget", "caption tokens (CLIP)", "caption"], captions),
        ],
        manifests=stage_manifests(out),
    )


def _write_table(
    out: Path,
    rows: list[dict[str, Any]],
    notes: list[str],
    columns: list[str],
    seeds: tuple[list[str], list[list[str]]] | None,
) -> None:
    """results.csv and results.md (the table with the notes on how each column was measured)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_text(out / "results.md", _markdown(rows, notes, columns, seeds))


def run_sweep(cfg: SweepConfig) -> SweepResult:
    """Every budget (and seed) trained, sampled and evaluated on shared data (module docstring); resumable."""
    started = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    # Shared data: the user's store/split/reports, or the demo dataset; one latent cache for every budget.
    if cfg.store is None:
        data = build_demo_data(out / "data", cfg.demo_data)
        reports, store, split = data["reports"], data["store"], data["split"]
    else:
        reports, store, split = cfg.reports, cfg.store, cfg.split

    # Every budget's summaries and text context first: a summariser or context error stops the sweep before training.
    summaries = {b: summarize(reports, out / f"budget-{b}" / "summaries.jsonl", b, cfg.summarize) for b in cfg.budgets}
    recipes = row_recipes(cfg, summaries)
    latents = prepare_latents(out, store, split, cfg.recipe).latents
    facts = cfg.demo_data.visible_facts if cfg.store is None else []  # per-fact columns for a dataset drawn with them
    columns = [*COLUMNS, *fact_columns(facts)]
    mpp = model_mpp(store, cfg.recipe.image_size)
    truth = drawn_truth(store, cfg.demo_data) if facts else {}

    # One row per budget and seed: captions -> text cache -> train -> sample (two seeds) -> evaluate.
    rows, results, floors = [], {}, {}
    for budget in cfg.budgets:
        for seed in cfg.row_seeds:
            t0, name = time.time(), row_name(budget, seed, cfg.recipe.seed)
            work, recipe = out / name, recipes[budget].model_copy(update={"seed": seed})
            result = train_sample_evaluate(
                work, store=store, split=split, summaries=summaries[budget], latents=latents, recipe=recipe, name=name
            )
            floor = floors[budget, seed] = noise_floor(work, result, recipe) if cfg.noise_floor else None
            # the features are kept for the floor only: at 200k samples a row's are 3.3 GB
            results[budget, seed] = dataclasses.replace(result, fake_features=None)
            rows.append(_row(budget, seed, summaries[budget], result, floor, time.time() - t0))
            rows[-1].update(_ceilings(result, mpp, seed))
            if facts:
                rows[-1].update(fact_row(facts, result, summaries[budget], mpp, seed, truth))

    # Table (CSV + Markdown), plots and the HTML report.
    last = results[cfg.budgets[-1], cfg.row_seeds[-1]]
    notes = _notes(rows, cfg, last.metrics.fid.protocol_line) + ([FACT_NOTE] if facts else [])
    seeds = across_seeds(rows, seed_metrics(facts)) if len(cfg.row_seeds) > 1 else None
    notes += [SEEDS_NOTE] if seeds else []
    _write_table(out, rows, notes, columns, seeds)
    plot = _plot(rows, out / "results.png")
    tokens = _token_histograms(summaries, {r["budget"]: r["text_context"] for r in rows}, out / "tokens.png")
    figures = [("FID with its seed-to-seed floor, and train memory", plot), ("Summary token lengths by budget", tokens)]
    report = _write_html(out, cfg, rows, results, floors, notes, figures, columns, seeds)
    produced = {"rows": len(rows), "table": "results.csv", "markdown": "results.md", "plot": plot.name}
    write_manifest(
        out / "manifest.json",
        stage="sweep",
        config=cfg,
        seed=cfg.recipe.seed,
        started=started,
        inputs={"reports": reports, "store": Path(store) / "patches.parquet", "split": split},
        produced={**produced, "tokens": tokens.name, "report": report.name},
    )
    return SweepResult(out / "results.md", plot, report)
