"""Where the text contexts come from at sampling time: the text encoder or a text-embedding cache.

Either way the source must be the one the checkpoint was trained with (same fingerprint): another
encoder gives contexts the UNet has never seen, and silently garbage images.
"""

from __future__ import annotations

from pathlib import Path

import torch

from histoldm.errors import UserError
from histoldm.models.bundle import BundleMeta
from histoldm.text.cache import TextCache
from histoldm.text.encoders import load_text_encoder


class TextSource:
    """Contexts (B, L, D) for captions, which of them were truncated, and the empty caption's context."""

    def __init__(self, description: str, uncond: torch.Tensor):
        self.description = description
        self.uncond = uncond

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, list[bool]]:
        raise NotImplementedError


class EncoderText(TextSource):
    def __init__(self, encoder):
        self.encoder = encoder
        super().__init__(f"text encoder {encoder.name}", encoder.encode([""]))

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, list[bool]]:
        return self.encoder.encode_flagged(captions, batch_size=max(len(captions), 1))


class CacheText(TextSource):
    def __init__(self, cache):
        self.cache = cache
        self._truncated = dict(zip(cache.captions, cache.truncated))
        super().__init__(f"text cache {cache.folder}", cache.uncond)

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, list[bool]]:
        rows = torch.tensor(self.cache.rows(captions), dtype=torch.long)
        return self.cache.embeddings[rows], [self._truncated[c] for c in captions]


def _check_contract(bundle: Path, meta: BundleMeta, name: str, dim: int, fingerprint: str) -> None:
    want = meta.text
    if want.fingerprint and fingerprint and want.fingerprint != fingerprint:
        raise UserError(
            f"{bundle}: checkpoint trained with text encoder {want.encoder} (fingerprint {want.fingerprint[:12]}), "
            f"got {name} (fingerprint {fingerprint[:12]})"
        )
    if dim != want.dim:
        raise UserError(
            f"{bundle}: checkpoint expects {want.dim}-d text contexts from {want.encoder}, {name} gives {dim}-d"
        )


def open_text_source(
    bundle: Path,
    meta: BundleMeta,
    *,
    text_encoder: str | None,
    text_cache: Path | None,
    device: torch.device,
    dtype: str,
    captions: list[str],
) -> TextSource:
    """A text cache when given (holding every caption), else the encoder named (default: the bundle's
    own, then the one it was trained with)."""
    if text_cache is not None:
        cache = TextCache.open(Path(text_cache))
        _check_contract(
            bundle,
            meta,
            f"{cache.meta['encoder']} (cache {text_cache})",
            int(cache.meta["dim"]),
            str(cache.meta.get("fingerprint", "")),
        )
        missing = [c for c in captions if c not in cache]
        if missing:
            raise UserError(
                f"{text_cache}: {len(missing)} captions not in the text cache, e.g. {missing[0][:80]!r} (re-run "
                "encode-text with them)"
            )
        return CacheText(cache)

    if text_encoder is None:
        stored = bundle / "text_encoder"
        text_encoder = str(stored) if (stored / "config.json").is_file() else meta.text.encoder
    encoder = load_text_encoder(text_encoder, meta.text.mode, meta.text.max_length, device=str(device), dtype=dtype)
    _check_contract(bundle, meta, text_encoder, encoder.dim, encoder.fingerprint)
    return EncoderText(encoder)
