"""`histoldm sweep`: the seed paper's Table 2 from one config.

For each summary budget (20 / 35 / 50 / 154 CLIP tokens by default): summarise the reports, caption
the patches, encode the captions, train, sample the held-out captions and evaluate. The patch
store, split and latent cache are shared by every budget, so the rows differ only in their
summaries. Writes results.csv, results.md and results.png; a re-run resumes finished stages.
"""

from __future__ import annotations

import csv
import io
import statistics
import time
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from histoldm.config import StrictModel
from histoldm.fileio import atomic_write_text, read_jsonl
from histoldm.pipeline import DemoDataConfig, ModelRecipe, build_demo_data, prepare_latents, summarize, train_sample_evaluate

COLUMNS = ["budget", "mean_summary_tokens", "unique_captions", "fid", "kid_mean", "kid_std", "precision", "recall",
           "adherence_tumor_auroc", "peak_train_memory_gib", "train_steps", "train_img_s", "wall_time_s"]


class SweepConfig(StrictModel):
    out: Path = Path("sweep-out")
    budgets: list[int] = Field(default_factory=lambda: [20, 35, 50, 154], min_length=1)
    summarize: dict[str, Any] = Field(default_factory=dict)  # SummarizeConfig keys: backend, prompt, model, base_url, ...
    reports: Path | None = None  # reports (CSV, .txt folder or JSONL); None: the demo's synthetic reports
    store: Path | None = None  # patch store with scores.parquet; None: the demo dataset
    split: Path | None = None  # split.json of the store's cases
    demo_data: DemoDataConfig = DemoDataConfig()
    recipe: ModelRecipe = ModelRecipe()

    @model_validator(mode="after")
    def _own_data_complete(self) -> "SweepConfig":
        given = [name for name in ("reports", "store", "split") if getattr(self, name) is not None]
        if given and len(given) != 3:
            raise ValueError("give reports, store and split together (or none of them for the demo dataset)")
        if {"input", "out", "budget"} & set(self.summarize):
            raise ValueError("summarize: input, out and budget are set by the sweep")
        from histoldm.reports.summarize import SummarizeConfig  # typos fail now, not after minutes of training

        SummarizeConfig.model_validate({**self.summarize, "input": ".", "out": ".", "budget": 1})
        return self


def _row(budget: int, summaries: Path, result: dict[str, Any], seconds: float) -> dict[str, Any]:
    tokens = [r["tokens"] for r in read_jsonl(summaries) if r.get("status") != "failed"]
    m = result["metrics"]
    kid, pr = m.get("kid", {}), m.get("precision_recall", {})
    tumor = m.get("adherence", {}).get("by_attribute", {}).get("tumor", {})
    peak = result["train"]["peak_memory"].get("allocated_gib")
    return {
        "budget": budget,
        "mean_summary_tokens": round(statistics.mean(tokens), 1) if tokens else None,
        "unique_captions": result["captions"].get("unique_captions"),
        "fid": round(m["fid"]["value"], 3),
        "kid_mean": round(kid["mean"], 5) if "mean" in kid else None,
        "kid_std": round(kid["std"], 5) if "std" in kid else None,
        "precision": round(pr["precision"], 3) if "precision" in pr else None,
        "recall": round(pr["recall"], 3) if "recall" in pr else None,
        "adherence_tumor_auroc": round(tumor["auroc"], 3) if "auroc" in tumor else None,
        "peak_train_memory_gib": peak,
        "train_steps": result["train"]["steps"],
        "train_img_s": round(result["train"]["img_s"], 1) if result["train"].get("img_s") else None,
        "wall_time_s": round(seconds, 1),
    }


def _markdown(rows: list[dict[str, Any]], protocol_line: str, memory_note: str) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join("n/a" if r[c] is None else str(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(["# Summary-length sweep", "", *lines, "", f"FID protocol: {protocol_line}", "", memory_note, ""])


def _plot(rows: list[dict[str, Any]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [str(r["budget"]) for r in rows]
    memory = [r["peak_train_memory_gib"] for r in rows]
    panels = 2 if any(m is not None for m in memory) else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.2), squeeze=False)
    axes[0][0].bar(labels, [r["fid"] for r in rows], color="#8c6bb1")
    axes[0][0].set(xlabel="summary budget (CLIP tokens)", ylabel="FID (lower is better)", title="FID by summary length")
    if panels == 2:
        axes[0][1].bar(labels, [m or 0 for m in memory], color="#41ae76")
        axes[0][1].set(xlabel="summary budget (CLIP tokens)", ylabel="peak GiB (allocated)", title="train-time GPU memory")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def run_sweep(cfg: SweepConfig) -> dict[str, Any]:
    from histoldm.manifest import write_manifest

    started = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    # Shared data: the user's store/split/reports, or the demo dataset; one latent cache for every budget.
    if cfg.store is None:
        data = build_demo_data(out / "data", cfg.demo_data)
        reports, store, split = data["reports"], data["store"], data["split"]
    else:
        reports, store, split = cfg.reports, cfg.store, cfg.split
    latents = prepare_latents(out, store, split, cfg.recipe)

    # One row per budget: summaries -> captions -> text cache -> train -> sample -> evaluate.
    rows, protocol_line = [], ""
    for budget in cfg.budgets:
        t0 = time.time()
        work = out / f"budget-{budget}"
        summaries = summarize(reports, work / "summaries.jsonl", budget, cfg.summarize)
        result = train_sample_evaluate(work, store=store, split=split, summaries=summaries, latents=latents["latents"],
                                       recipe=cfg.recipe, name=f"budget-{budget}")
        rows.append(_row(budget, summaries, result, time.time() - t0))
        protocol_line = result["metrics"]["fid"]["protocol_line"]

    # Table (CSV + Markdown) and bar plot.
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", buf.getvalue())
    memory_note = ("Peak train memory: torch.cuda.max_memory_allocated over the training run." if any(r["peak_train_memory_gib"] for r in rows)
                   else "Peak train memory: n/a, trained on CPU (no GPU memory to measure).")
    atomic_write_text(out / "results.md", _markdown(rows, protocol_line, memory_note))
    plot = _plot(rows, out / "results.png")
    write_manifest(out / "manifest.json", stage="sweep", config=cfg, seed=cfg.recipe.seed, started=started,
                   inputs={"reports": reports, "store": Path(store) / "patches.parquet", "split": split},
                   produced={"rows": len(rows), "table": "results.csv", "markdown": "results.md", "plot": plot.name})
    return {"table": str(out / "results.md"), "plot": str(plot)}
