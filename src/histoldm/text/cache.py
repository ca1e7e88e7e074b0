"""The text-embedding cache: every unique caption encoded once, so training never runs the encoder.

    DIR/embeddings.safetensors  `embeddings` (N, L, D) and `uncond` (1, L, D) = the encoding of ""
    DIR/index.jsonl             {"caption", "row", "truncated"}, one line per cached caption
    DIR/meta.json               encoder, mode, max_length, length, dim, fingerprint, dtype, n_captions, n_truncated
    DIR/manifest.json

Re-running into the same folder with the same encoder, mode and length encodes only captions not
yet cached and appends them; with anything else it is an error, never a silent reuse. Write order
(embeddings, then index lines, then meta) keeps the folder readable after a crash at any point:
rows beyond the index are ignored and re-encoded.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Literal

import torch

from histoldm.config import StrictModel
from histoldm.devices import Precision, resolve_device, text_dtype
from histoldm.errors import UserError
from histoldm.data.store import read_parquet
from histoldm.fileio import append_jsonl, atomic_write_json, read_jsonl, read_text_input, require_file

EMBEDDINGS = "embeddings.safetensors"
INDEX = "index.jsonl"
META = "meta.json"


class EncodeTextConfig(StrictModel):
    captions: Path  # captions.parquet (column `caption`), .txt (one per line) or .jsonl (key `caption`)
    text_encoder: str = "openai/clip-vit-base-patch32"  # hub id, local folder, tiny-clip or minilm
    mode: Literal["pathldm", "truncate", "chunks", "interpolate"] = "pathldm"
    max_length: int | None = None  # None: the mode's natural length (154; 77 for truncate on CLIP)
    out: Path
    batch_size: int = 256
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bfloat16 on CUDA, float32 on CPU
    precision: Precision = "default"  # pathldm: float32, as PathLDM encoded its captions


def read_captions(path: Path) -> tuple[list[str], list[dict]]:
    """Captions in file order, and the rows skipped (null captions) with the reason."""
    path = require_file(Path(path), "captions file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        values = read_parquet(path, "captions file", ["caption"]).column("caption").to_pylist()
    elif suffix == ".jsonl":
        values = []
        for i, rec in enumerate(read_jsonl(path), 1):
            if "caption" not in rec:
                raise UserError(f"{path}:{i}: no `caption` key")
            values.append(rec["caption"])
    elif suffix == ".txt":
        values = read_text_input(path, "captions file").splitlines()
    else:
        raise UserError(f"{path}: expected a .parquet, .jsonl or .txt captions file")
    captions, skipped = [], []
    for i, v in enumerate(values):
        if isinstance(v, str):
            captions.append(v)
        else:
            skipped.append({"row": i, "reason": f"caption is {type(v).__name__}, not text"})
    return captions, skipped


def _save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """safetensors save through a temporary file in the same folder, then os.replace."""
    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class TextCache:
    """A finished (or partly extended) encode-text folder, opened read-only."""

    def __init__(self, folder: Path, meta: dict, index: list[dict]):
        self.folder, self.meta = folder, meta
        self.captions = [rec["caption"] for rec in index]
        self.truncated = [bool(rec.get("truncated", False)) for rec in index]
        self._rows = {c: int(rec["row"]) for c, rec in zip(self.captions, index)}
        self._tensors: dict[str, torch.Tensor] | None = None

    @classmethod
    def open(cls, folder: Path) -> TextCache:
        folder = Path(folder)
        meta_path = folder / META
        if not meta_path.is_file():
            raise UserError(f"{folder}: not a text-embedding cache ({META} missing; run `histoldm encode-text`)")
        require_file(folder / EMBEDDINGS, "text embeddings")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        index = list(read_jsonl(folder / INDEX)) if (folder / INDEX).exists() else []
        return cls(folder, meta, index)

    def _load(self) -> dict[str, torch.Tensor]:
        if self._tensors is None:
            from safetensors import safe_open

            with safe_open(str(self.folder / EMBEDDINGS), framework="pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            if tensors["embeddings"].shape[0] < len(self.captions):
                raise UserError(f"{self.folder}: {EMBEDDINGS} has {tensors['embeddings'].shape[0]} rows, index lists {len(self.captions)}")
            tensors["embeddings"] = tensors["embeddings"][: len(self.captions)]
            self._tensors = tensors
        return self._tensors

    @property
    def embeddings(self) -> torch.Tensor:
        """(N, L, D), row i = the caption with `row` i in index.jsonl."""
        return self._load()["embeddings"]

    @property
    def uncond(self) -> torch.Tensor:
        """(1, L, D): the empty caption, the unconditional context for classifier-free guidance."""
        return self._load()["uncond"]

    def __len__(self) -> int:
        return len(self.captions)

    def __contains__(self, caption: str) -> bool:
        return caption in self._rows

    def row(self, caption: str) -> int:
        try:
            return self._rows[caption]
        except KeyError:
            raise UserError(f"{self.folder}: caption not in the text cache: {caption[:80]!r} (re-run encode-text with it)") from None

    def rows(self, captions: list[str]) -> list[int]:
        return [self.row(c) for c in captions]

    def check_compatible(self, encoder_name: str, mode: str, max_length: int | None, fingerprint: str | None = None) -> None:
        """UserError naming the folder when the cache was made with another encoder, mode or length."""
        have = f"{self.meta['encoder']}/{self.meta['mode']}/{self.meta['max_length']}"
        want = f"{encoder_name}/{mode}/{max_length}"
        if have != want:
            raise UserError(f"{self.folder}: cache made with {have} (encoder/mode/max_length), asked for {want}")
        if fingerprint and fingerprint != self.meta.get("fingerprint"):
            raise UserError(
                f"{self.folder}: cache made with encoder fingerprint {str(self.meta.get('fingerprint'))[:16]}, "
                f"asked for {fingerprint[:16]} (same name, different weights)"
            )


def _existing_cache(out: Path, encoder) -> TextCache | None:
    """The cache already in `out` when it matches `encoder`; a fresh folder gives None."""
    if not (out / META).is_file():
        for name in (INDEX, EMBEDDINGS):  # leftovers of a run that died before its first meta.json
            (out / name).unlink(missing_ok=True)
        return None
    cache = TextCache.open(out)
    cache.check_compatible(encoder.name, encoder.mode, encoder.max_length, encoder.fingerprint)
    return cache


def run_encode_text(cfg: EncodeTextConfig) -> dict:
    """Encode the unique captions of cfg.captions not yet in cfg.out; returns the meta plus counts."""
    from tqdm import tqdm

    from histoldm.manifest import write_manifest
    from histoldm.text.encoders import load_text_encoder

    started = time.time()
    captions, skipped = read_captions(cfg.captions)
    unique = list(dict.fromkeys(captions))
    device = str(resolve_device(cfg.device))
    encoder = load_text_encoder(cfg.text_encoder, cfg.mode, cfg.max_length, device=device, dtype=text_dtype(cfg.precision, cfg.dtype))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    old = _existing_cache(out, encoder)

    old_captions = old.captions if old else []
    old_truncated = old.truncated if old else []
    known = set(old_captions)
    new = [c for c in unique if c not in known]
    new_truncated: list[bool] = []
    n_old = len(old_captions)
    table = torch.empty(n_old + len(new), encoder.length, encoder.dim, dtype=encoder.dtype)
    if old:
        table[:n_old] = old.embeddings.to(encoder.dtype)
    bs = cfg.batch_size
    for i in tqdm(range(0, len(new), bs), desc="encode-text", unit="batch", disable=not new):
        embeddings, flags = encoder.encode_flagged(new[i : i + bs], batch_size=bs)
        table[n_old + i : n_old + i + bs] = embeddings.cpu()
        new_truncated += flags
    uncond = encoder.encode([""]).cpu()

    meta = {
        "encoder": encoder.name,
        "mode": encoder.mode,
        "max_length": encoder.max_length,
        "length": encoder.length,
        "dim": encoder.dim,
        "fingerprint": encoder.fingerprint,
        "dtype": str(encoder.dtype).removeprefix("torch."),
        "n_captions": n_old + len(new),
        "n_truncated": sum(old_truncated) + sum(new_truncated),
    }
    _save_safetensors(out / EMBEDDINGS, {"embeddings": table, "uncond": uncond}, {k: str(v) for k, v in meta.items()})
    append_jsonl(out / INDEX, ({"caption": c, "row": n_old + i, "truncated": t} for i, (c, t) in enumerate(zip(new, new_truncated))))
    atomic_write_json(out / META, meta)

    truncated_now = [c for c, t in zip(new, new_truncated) if t]
    produced = {**meta, "n_new": len(new), "n_reused": len(unique) - len(new), "n_input_rows": len(captions), "shape": list(table.shape)}
    write_manifest(
        out / "manifest.json",
        stage="encode-text",
        config=cfg,
        inputs={"captions": cfg.captions, "text_encoder": cfg.text_encoder},
        produced=produced,
        started=started,
        skipped=skipped,
        extra={"truncated": {"count": len(truncated_now), "first": [c[:200] for c in truncated_now[:20]]}, "device": device},
    )
    return {**produced, "out": str(out)}
