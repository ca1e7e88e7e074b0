"""The summarize stage's config: typed, described, torch-free (the CLI builds its options from it)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from histoldm.config import StrictModel


class SummarizeConfig(StrictModel):
    """`histoldm summarize`: each report -> one summary within a CLIP-token budget."""

    input: Path = Field(description="TCGA-Reports CSV (patient_filename,text), folder of .txt, or JSONL {case_id,text}")
    out: Path = Field(description="output JSONL (re-running resumes it)")
    budget: int = Field(35, ge=1, le=1000, description="CLIP tokens per summary, BOS/EOS excluded")
    backend: Literal["extractive", "openai", "local"] = Field(
        "extractive",
        description="extractive (offline, deterministic), openai (any OpenAI-compatible server) or local "
        "(transformers / llama.cpp)",
    )
    prompt: str = Field("targeted", description="preset (pathldm, targeted) or a template file (.txt, .yaml, .json)")
    model: str | None = Field(
        None, description="openai: model name (required); local: a transformers folder or .gguf file (default SmolLM2)"
    )
    base_url: str | None = Field(None, description="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="NAME of the environment variable holding the API key")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="LLM sampling temperature")
    seed: int | None = Field(0, description="LLM sampling seed")
    max_tokens: int | None = Field(
        None, ge=1, description="reply length cap sent to the LLM (default: 4 x budget + 32)"
    )
    timeout_s: float = Field(60.0, gt=0, description="seconds per request")
    max_attempts: int = Field(4, ge=1, description="requests per case, feedback rounds included")
    backoff_base_s: float = Field(1.0, ge=0, description="first retry delay in seconds; doubles per attempt")
    backoff_max_s: float = Field(60.0, ge=0, description="longest retry delay in seconds")
    concurrency: int = Field(8, ge=1, le=1024, description="requests in flight")
    max_report_chars: int = Field(50_000, ge=1, description="longer reports fail with a message")
    limit: int | None = Field(None, ge=1, description="only the first N cases")
    retry_failed: bool = Field(False, description="re-attempt cases that ended 'failed' in an earlier run")
    dry_run: bool = Field(False, description="print the rendered messages for one case and stop")

    @field_validator("api_key_env")
    @classmethod
    def _a_variable_name(cls, v: str) -> str:
        # A key pasted here would land in the manifest and in error lines: refuse it without echoing it.
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError("must be the name of an environment variable (like OPENAI_API_KEY), not the key itself")
        return v
