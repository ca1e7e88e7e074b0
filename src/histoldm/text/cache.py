"""The text-embedding cache: every unique caption encoded once, so training never runs the encoder.

    DIR/embeddings.safetensors  `embeddings` (N, L, D) and `uncond` (1, L, D) = the encoding of ""
    DIR/index.jsonl             {"caption", "row", "truncated"}, one line per cached caption
    DIR/meta.json               encoder, mode, max_length, length, dim, fingerprint, dtype, n_captions, n_truncated
    DIR/manifest.json

Re-running into the same folder with the same encoder, mode and length encodes only captions not
yet cached and appends them; with anything else it is an error, never a silent reuse. Write order
(embeddings, then index lines, then meta) keeps the folder readable after a crash at any point:
rows beyond the index are ignored and re-encoded.

Across processes (`accelerate launch -m histoldm.cli encode-text ...`): batch b of the new captions
goes to process b mod N, which saves its rows to DIR/parts/ (kept until merged, so a re-run reuses
them); the main process merges them in caption order. The batches are the ones a single process
encodes, so the cache is the same.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from histoldm.devices import launched_processes, resolve_dtype, text_dtype
from histoldm.errors import UserError
from histoldm.fileio import (
    append_jsonl,
    atomic_output,
    atomic_write_json,
    follow_umask,
    read_jsonl,
    read_text_input,
    require_file,
)
from histoldm.manifest import write_manifest
from histoldm.tables import read_parquet
from histoldm.text.config import EncodeTextConfig
from histoldm.text.encoders import load_text_encoder

EMBEDDINGS = "embeddings.safetensors"
PARTS = "parts"  # per-process rows of an unfinished run across processes
INDEX = "index.jsonl"
META = "meta.json"


def read_captions(path: Path) -> tuple[list[str], list[dict]]:
    """Captions in file order, and the rows skipped (null or empty captions) with the reason. An empty
    caption is not encoded: the unconditional row already stands for it, and training would treat it
    as a real caption."""
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
        if isinstance(v, str) and v.strip():
            captions.append(v)
        elif isinstance(v, str):
            skipped.append({"row": i, "reason": "empty caption"})
        else:
            skipped.append({"row": i, "reason": f"caption is {type(v).__name__}, not text"})
    return captions, skipped


def _save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """safetensors save through a temporary file in the same folder (atomic_output)."""
    with atomic_output(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        follow_umask(tmp)


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
            with safe_open(str(self.folder / EMBEDDINGS), framework="pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            if tensors["embeddings"].shape[0] < len(self.captions):
                raise UserError(
                    f"{self.folder}: {EMBEDDINGS} has {tensors['embeddings'].shape[0]} rows, "
                    f"index lists {len(self.captions)}"
                )
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
            raise UserError(
                f"{self.folder}: caption not in the text cache: {caption[:80]!r} (re-run encode-text with it)"
            ) from None

    def rows(self, captions: list[str]) -> list[int]:
        return [self.row(c) for c in captions]

    def check_compatible(
        self, encoder_name: str, mode: str, max_length: int | None, fingerprint: str | None = None
    ) -> None:
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
    dtype = str(encoder.dtype).removeprefix("torch.")
    if cache.meta.get("dtype", dtype) != dtype:  # appending would recast the old rows and relabel the cache
        raise UserError(f"{out}: cache encoded in {cache.meta['dtype']}, this run encodes in {dtype}; use a new --out")
    return cache


def _encode_batches(
    encoder, captions: list[str], bs: int, batches: list[int], table: torch.Tensor, offset: int, show: bool
) -> list[bool]:
    """Encode the given batches (of `bs` captions each) into table rows offset + position; their truncation flags."""
    flags: list[bool] = []
    for b in tqdm(batches, desc="encode-text", unit="batch", disable=not (show and batches)):
        embeddings, batch_flags = encoder.encode_flagged(captions[b * bs : (b + 1) * bs], batch_size=bs)
        table[offset + b * bs : offset + b * bs + len(batch_flags)] = embeddings.cpu()
        flags += batch_flags
    return flags


def _part_digest(encoder, captions: list[str]) -> str:
    h = hashlib.sha256(f"{encoder.fingerprint}\n{encoder.mode}\n{encoder.max_length}\n{encoder.dtype}\n".encode())
    for c in captions:
        h.update(c.encode() + b"\0")
    return h.hexdigest()


def _encode_share(encoder, new: list[str], bs: int, procs, out: Path) -> Path:
    """This process's batches (b mod N == rank) saved as parts/rank<i>-of-<N>.safetensors; a part of
    the same captions and encoder left by an earlier run is reused."""
    batches = list(range(procs.rank, -(-len(new) // bs), procs.world))
    mine = [c for b in batches for c in new[b * bs : (b + 1) * bs]]
    digest = _part_digest(encoder, mine)
    part = out / PARTS / f"rank{procs.rank}-of-{procs.world}.safetensors"
    if part.is_file():
        with safe_open(str(part), framework="pt") as f:
            if (f.metadata() or {}).get("digest") == digest:
                return part
    table = torch.empty(len(new), encoder.length, encoder.dim, dtype=encoder.dtype)
    flags = _encode_batches(encoder, new, bs, batches, table, 0, procs.is_main)
    rows = torch.cat([table[b * bs : (b + 1) * bs] for b in batches]) if batches else table[:0]
    part.parent.mkdir(exist_ok=True)
    _save_safetensors(
        part, {"embeddings": rows, "truncated": torch.tensor(flags, dtype=torch.bool)}, {"digest": digest}
    )
    return part


def _merge_shares(new: list[str], bs: int, world: int, out: Path, table: torch.Tensor, offset: int) -> list[bool]:
    """Rows of every process's part into the table in caption order; the truncation flags in that order."""
    flags = [False] * len(new)
    n_batches = -(-len(new) // bs)
    for rank in range(world):
        part = out / PARTS / f"rank{rank}-of-{world}.safetensors"
        if not part.is_file():
            raise UserError(f"{part}: missing (process {rank} of {world} did not finish); re-run to finish the cache")
        tensors, pos = load_file(str(part)), 0
        for b in range(rank, n_batches, world):
            n = len(new[b * bs : (b + 1) * bs])
            table[offset + b * bs : offset + b * bs + n] = tensors["embeddings"][pos : pos + n]
            flags[b * bs : b * bs + n] = tensors["truncated"][pos : pos + n].tolist()
            pos += n
    return flags


@dataclass(frozen=True)
class EncodeTextResult:
    """`histoldm encode-text`, on the main process: the cache's meta.json and this run's counts."""

    out: Path
    meta: dict[
        str, Any
    ]  # meta.json: encoder, mode, max_length, length, dim, fingerprint, dtype, n_captions, n_truncated
    n_new: int  # captions encoded by this run
    n_reused: int  # unique captions already in the cache
    n_input_rows: int
    n_skipped: int  # input rows skipped (empty or non-text captions, listed in the manifest)
    shape: tuple[int, int, int]  # the embeddings table: captions x length x dim

    @property
    def n_captions(self) -> int:
        return self.meta["n_captions"]

    @property
    def n_truncated(self) -> int:
        return self.meta["n_truncated"]


def _cache_meta(encoder, n_captions: int, n_truncated: int) -> dict[str, Any]:
    """meta.json: the encoder's contract (what a trainer and a sampler check) and the counts."""
    return {
        "encoder": encoder.name,
        "mode": encoder.mode,
        "max_length": encoder.max_length,
        "length": encoder.length,
        "dim": encoder.dim,
        "fingerprint": encoder.fingerprint,
        "dtype": str(encoder.dtype).removeprefix("torch."),
        "n_captions": n_captions,
        "n_truncated": n_truncated,
    }


def run_encode_text(cfg: EncodeTextConfig, procs=None) -> EncodeTextResult | None:
    """Encode the unique captions of cfg.captions not yet in cfg.out (under accelerate launch, this
    process's share); the main process returns the meta plus counts, the others None. `procs`:
    histoldm.devices.Processes, default the processes this one was launched among."""
    started = time.time()
    captions, skipped = read_captions(cfg.captions)
    unique = list(dict.fromkeys(captions))
    procs = procs or launched_processes(cfg.device, "encode-text")
    device = str(procs.device)
    dtype = resolve_dtype(text_dtype(cfg.numerics, cfg.dtype), procs.device, stage="encode-text dtype")
    encoder = load_text_encoder(cfg.text_encoder, cfg.mode, cfg.max_length, device=device, dtype=dtype)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    old = _existing_cache(out, encoder) if procs.is_main or (out / META).is_file() else None

    old_captions = old.captions if old else []
    old_truncated = old.truncated if old else []
    known = set(old_captions)
    new = [c for c in unique if c not in known]
    n_old = len(old_captions)
    bs = cfg.batch_size
    if procs.world > 1:
        _encode_share(encoder, new, bs, procs, out)
        procs.barrier()
        if not procs.is_main:
            return None
    table = torch.empty(n_old + len(new), encoder.length, encoder.dim, dtype=encoder.dtype)
    if old:
        table[:n_old] = old.embeddings.to(encoder.dtype)
    if procs.world > 1:
        new_truncated = _merge_shares(new, bs, procs.world, out, table, n_old)
    else:
        new_truncated = _encode_batches(encoder, new, bs, list(range(-(-len(new) // bs))), table, n_old, True)
    uncond = encoder.encode([""]).cpu()

    meta = _cache_meta(encoder, n_old + len(new), sum(old_truncated) + sum(new_truncated))
    _save_safetensors(out / EMBEDDINGS, {"embeddings": table, "uncond": uncond}, {k: str(v) for k, v in meta.items()})
    append_jsonl(
        out / INDEX,
        ({"caption": c, "row": n_old + i, "truncated": t} for i, (c, t) in enumerate(zip(new, new_truncated))),
    )
    atomic_write_json(out / META, meta)
    shutil.rmtree(out / PARTS, ignore_errors=True)  # merged

    truncated_now = [c for c, t in zip(new, new_truncated) if t]
    produced = {
        **meta,
        "n_new": len(new),
        "n_reused": len(unique) - len(new),
        "n_input_rows": len(captions),
        "shape": list(table.shape),
    }
    write_manifest(
        out / "manifest.json",
        stage="encode-text",
        config=cfg,
        inputs={"captions": cfg.captions, "text_encoder": cfg.text_encoder},
        produced=produced,
        started=started,
        skipped=skipped,
        extra={
            "truncated": {"count": len(truncated_now), "first": [c[:200] for c in truncated_now[:20]]},
            "device": device,
        },
    )
    return EncodeTextResult(
        out, meta, len(new), len(unique) - len(new), len(captions), len(skipped), tuple(table.shape)
    )
