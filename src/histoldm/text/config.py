"""The encode-text stage's config: typed, described, torch-free (the CLI builds its options from it)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from histoldm.config import DtypeName, Numerics, StrictModel


class EncodeTextConfig(StrictModel):
    """`histoldm encode-text`: each unique caption encoded once into a cache training and sampling read."""

    renamed_keys = {"precision": "numerics"}  # `precision` names autocast dtypes only (train, train-vae)

    captions: Path = Field(description="captions.parquet (column caption), .jsonl (key caption) or .txt (one per line)")
    text_encoder: str = Field(
        "openai/clip-vit-base-patch32", description="hub id or local folder of a CLIP text model, minilm, or tiny-clip"
    )
    mode: Literal["pathldm", "truncate", "chunks", "interpolate"] | None = Field(
        None,
        description="long-caption encoding (default: the encoder's own: pathldm for CLIP models, truncate for "
        "BERT-style ones such as minilm)",
    )
    max_length: int | None = Field(
        None, description="tokens per caption incl. BOS/EOS (default: 154, or 77 for truncate on CLIP)"
    )
    out: Path = Field(description="output folder")
    batch_size: int = Field(256, description="captions per encoder call")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the encoder runs")
    dtype: DtypeName = Field(
        "auto",
        description="auto: bfloat16 on a CUDA device that supports it, else float32 (histoldm.devices.resolve_dtype)",
    )
    numerics: Numerics = Field("default", description="default: encode in --dtype; pathldm: in float32, as PathLDM did")
