"""The data stages' configs (tile, scores, split, captions, export-patches): typed, described, torch-free.

The CLI builds each stage's options from these models, so importing them must stay cheap.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from histoldm.config import StrictModel

SLIDE_EXTENSIONS = [".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm"]

DEFAULT_TEMPLATE = "{tumor} tumor; {til} til; {summary}"

DESCRIPTOR_PLACEHOLDERS = {
    "fat": "fat_fraction",
    "nuclei": "nuclear_density",
    "stroma": "stroma_share",
    "large_nuclei": "large_nuclei",
    "lymphocytes": "lymphocytes",
}

KNOWN_PLACEHOLDERS = {"tumor", "til", "summary", *DESCRIPTOR_PLACEHOLDERS}


def placeholders(template: str) -> set[str]:
    """The {names} a caption template fills."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


class TileConfig(StrictModel):
    """`histoldm tile`: slides -> a patch store of fixed-magnification tissue patches."""

    slides: Path = Field(description="slide file or folder (searched recursively)")
    out: Path = Field(description="patch store folder")
    magnification: float = Field(10.0, gt=0, description="target magnification (10x = 1.0 um/px)")
    size: int = Field(256, ge=16, description="patch side in pixels")
    overlap: int = Field(0, ge=0, description="pixels shared by neighbouring patches, at the target magnification")
    mpp: float | None = Field(None, gt=0, description="level-0 microns per pixel, overriding slide metadata")
    min_tissue: float = Field(0.5, ge=0, le=1, description="minimum tissue fraction of a patch")
    min_saturation: int = Field(20, ge=0, le=255, description="floor of the Otsu saturation cut")
    thumbnail_size: int = Field(
        2048, ge=64, description="longest side in pixels of the thumbnail the tissue mask is computed on"
    )
    workers: int = Field(1, ge=1, description="processes, one slide each")
    extensions: list[str] = Field(
        default_factory=lambda: list(SLIDE_EXTENSIONS), description="slide file endings searched for"
    )
    shard: tuple[int, int] | None = Field(
        None,
        description="K/N: tile only slides K, K+N, ... of the sorted list (0 <= K < N), e.g. "
        "$SLURM_ARRAY_TASK_ID/10; jobs share --out and the last one to finish leaves the complete "
        "patches.parquet",
    )

    @model_validator(mode="after")
    def _check_shard(self) -> TileConfig:
        if self.shard is not None and not 0 <= self.shard[0] < self.shard[1]:
            raise ValueError(f"shard {self.shard[0]}/{self.shard[1]}: needs 0 <= K < N")
        return self


class ScoresConfig(StrictModel):
    """`histoldm scores`: tumor / TIL probabilities per patch, from exactly one source."""

    store: Path = Field(description="patch store folder")
    out: Path | None = Field(None, description="output Parquet (default STORE/scores.parquet)")
    csv: Path | None = Field(None, description="CSV with patch_id (or slide_id, x, y) and prob_tumor / prob_til")
    heatmaps: Path | None = Field(None, description="folder of <slide_id>.npz grids (prob_tumor, prob_til[, stride])")
    stride: float | None = Field(None, gt=0, description="level-0 pixels per heat-map cell (or `stride` in each npz)")
    proxy: bool = Field(False, description="HEURISTIC scores from the images (demo only)")
    percent: bool = Field(False, description="the CSV's scores are percentages (0-100): divide them by 100")

    @model_validator(mode="after")
    def _one_source(self) -> ScoresConfig:
        given = [n for n, v in (("csv", self.csv), ("heatmaps", self.heatmaps), ("proxy", self.proxy or None)) if v]
        if len(given) != 1:
            raise ValueError(f"give exactly one score source (csv, heatmaps or proxy), got {given or 'none'}")
        if self.percent and not self.csv:
            raise ValueError("percent reads a CSV's scores; it goes with csv only")
        return self


class SplitConfig(StrictModel):
    """`histoldm split`: cases -> train/val/test, seeded, no case in two splits."""

    out: Path = Field(description="split.json to write")
    store: Path | None = Field(None, description="patch store whose case_id column lists the cases")
    cases: Path | None = Field(None, description="CSV with case_id (and the label column) instead of a store")
    stratify_by: str | None = Field(None, description="label column to stratify by")
    labels: Path | None = Field(None, description="CSV case_id,<label> for stratifying a store's cases")
    fractions: dict[str, float] = Field(
        default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1}, description="share of the cases per split"
    )
    seed: int = Field(0, description="random seed")
    given: Path | None = Field(
        None, description="import this split (split.json, {split: [cases]} JSON, or CSV case_id,split)"
    )

    @model_validator(mode="after")
    def _labels_for_stratifying(self) -> SplitConfig:
        if self.stratify_by and self.store is not None and self.labels is None:
            raise ValueError(
                f"stratify_by {self.stratify_by!r} needs --labels (a CSV case_id,{self.stratify_by}) for a store's "
                "cases"
            )
        if self.labels is not None and not self.stratify_by:
            raise ValueError("labels are only read for stratifying: give stratify_by too")
        return self

    @field_validator("fractions")
    @classmethod
    def _sum_to_one(cls, v: dict[str, float]) -> dict[str, float]:
        if not v or any(f < 0 for f in v.values()) or abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError("fractions must be non-negative and sum to 1")
        return v


class CaptionsConfig(StrictModel):
    """`histoldm captions`: one caption per patch (per summary) from a template."""

    store: Path = Field(description="patch store folder")
    scores: Path | None = Field(None, description="scores.parquet (default STORE/scores.parquet if present)")
    summaries: Path | None = Field(None, description="summaries.jsonl (case_id, summary)")
    out: Path | None = Field(None, description="output Parquet (default STORE/captions.parquet)")
    template: str = Field(
        DEFAULT_TEMPLATE, description="caption template; parts separated by '; ' are dropped when a value is missing"
    )
    levels: list[str] = Field(default_factory=lambda: ["low", "high"], description="score level names, 2 to 4")
    descriptor_levels: list[str] = Field(
        default_factory=lambda: ["low", "high"], description="level names of the colour descriptors, 2 to 4"
    )
    all_summaries: bool = Field(
        False, description="one caption per summary of a case (variants, repeated lines); training draws one per read"
    )

    @field_validator("levels", "descriptor_levels")
    @classmethod
    def _two_to_four(cls, v: list[str]) -> list[str]:
        if not 2 <= len(v) <= 4:
            raise ValueError("give 2, 3 or 4 level names")
        return v

    @field_validator("template")
    @classmethod
    def _known_fields(cls, v: str) -> str:
        unknown = placeholders(v) - KNOWN_PLACEHOLDERS
        if unknown:
            raise ValueError(f"unknown placeholders {sorted(unknown)}; known: {sorted(KNOWN_PLACEHOLDERS)}")
        return v


class ExportPatchesConfig(StrictModel):
    """`histoldm export-patches`: the real patches of one split as an image folder with an index."""

    store: Path = Field(description="patch store folder (with patches.parquet)")
    captions: Path = Field(description="captions.parquet of the store")
    split: Path = Field(description="split.json")
    out: Path = Field(description="output folder")
    split_name: str = Field("test", description="which split to export")
    size: int | None = Field(
        None,
        ge=8,
        description="resize to this many pixels, the size the model generates (default: as stored; `evaluate` "
        "refuses real and generated images of different sizes)",
    )
    n: int | None = Field(None, ge=1, description="a seeded choice of this many patches (default: all of the split)")
    seed: int = Field(0, description="seed of that choice")


# Report facts the synthetic generator can draw into a case's tiles (data/synthetic_facts.py).
VisibleFact = Literal["necrosis", "grade", "growth"]
