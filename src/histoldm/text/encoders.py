"""Frozen text encoders behind one interface: captions in, a (B, L, D) context out.

Names: `tiny-clip` (a small randomly initialised CLIP, identical in every process, for tests and
smoke runs), `minilm` (the bundled MiniLM-L6, 384-d, offline), or any Hugging Face CLIP text model
by hub id or local folder (`openai/clip-vit-base-patch32`, `vinid/plip`). CLIP models always use
our offline CLIP tokenizer (PLIP shares OpenAI's vocabulary), so nothing is fetched for it.

The fingerprint identifies the function a cache was made with: architecture kind, the model's
weights, mode and length. It leaves out the name, so a model saved to a folder and loaded back
(or stored in a model bundle) keeps the fingerprint of the hub id it came from.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from histoldm.assets import asset_path
from histoldm.devices import resolve_dtype
from histoldm.errors import UserError
from histoldm.text import long_captions as lc
from histoldm.text.tokenizer import BOS_ID, EOS_ID, clip_tokenizer

TINY_CLIP = dict(
    vocab_size=49408,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=77,
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
    pad_token_id=EOS_ID,
)
CLIP_VOCAB = 49408


def weights_sha256(model: torch.nn.Module, header: str) -> str:
    """sha256 over `header` and every parameter (name, shape, float32 bytes), in name order."""
    h = hashlib.sha256(header.encode())
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        h.update(f"\n{name}{tuple(p.shape)}\n".encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


class TextEncoder:
    """A frozen text model with a fixed output length; `encode` runs without gradients, batched."""

    kind = ""

    def __init__(
        self,
        name: str,
        mode: str,
        max_length: int,
        length: int,
        model: torch.nn.Module,
        device: str,
        dtype: torch.dtype,
    ):
        self.name, self.mode, self.max_length, self.length = name, mode, max_length, length
        model.eval().requires_grad_(False)
        model.float()
        self.fingerprint = weights_sha256(model, f"{self.kind}\n{mode}\n{max_length}\n{length}")
        self.model = model.to(device=device, dtype=dtype)
        self.device, self.dtype = torch.device(device), dtype
        self.dim = int(model.config.hidden_size)
        self.n_truncated = 0  # captions cut by `encode` so far

    def truncated(self, texts: list[str]) -> list[bool]:
        """Which captions do not fit the encoder's token budget (BOS/EOS included)."""
        raise NotImplementedError

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """(B, length, dim) in the encoder's dtype, on its device."""
        return self.encode_flagged(texts, batch_size)[0]

    @torch.no_grad()
    def encode_flagged(self, texts: list[str], batch_size: int = 64) -> tuple[torch.Tensor, list[bool]]:
        """`encode` plus which captions were cut, without tokenising them twice for the flags."""
        texts = list(texts)
        flags = self.truncated(texts)
        self.n_truncated += sum(flags)
        outs = [self._encode_batch(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        if not outs:
            return torch.empty(0, self.length, self.dim, dtype=self.dtype, device=self.device), flags
        return torch.cat(outs), flags

    def contract(self) -> dict:
        """The fields a cache / model bundle records (histoldm.models.bundle.TextContract)."""
        return {
            "encoder": self.name,
            "mode": self.mode,
            "max_length": self.max_length,
            "dim": self.dim,
            "fingerprint": self.fingerprint,
        }


class ClipTextEncoder(TextEncoder):
    """A transformers CLIPTextModel with one of the long-caption modes of `long_captions`."""

    kind = "clip"

    def __init__(
        self, name: str, model: torch.nn.Module, mode: str, max_length: int | None, device: str, dtype: torch.dtype
    ):
        if int(model.config.vocab_size) != CLIP_VOCAB:
            raise UserError(f"{name}: vocabulary of {model.config.vocab_size} tokens, expected CLIP's {CLIP_VOCAB}")
        self.context = int(model.config.max_position_embeddings)
        if max_length is None:
            max_length = self.context if mode == "truncate" else 2 * self.context
        if max_length < 2:
            raise UserError(f"{name}: max_length {max_length} leaves no room for BOS and EOS")
        if mode == "truncate" and max_length > self.context:
            raise UserError(
                f"{name}: mode truncate encodes at most {self.context} tokens, asked for {max_length} (use "
                f"--max-length {self.context})"
            )
        if mode == "chunks" and max_length % self.context:
            raise UserError(f"{name}: mode chunks needs max_length a multiple of {self.context}, got {max_length}")
        super().__init__(name, mode, max_length, max_length, model, device, dtype)
        self.tokenizer = clip_tokenizer()

    def capacity(self) -> int:
        """BPE tokens that fit (BOS/EOS excluded)."""
        if self.mode == "chunks":
            return (self.max_length // self.context) * (self.context - 2)
        return self.max_length - 2

    def truncated(self, texts: list[str]) -> list[bool]:
        if not texts:
            return []
        bpe = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        return [len(t) > self.capacity() for t in bpe]

    def _tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """One tokenisation at max_length, padded with EOS, truncated (PathLDM's call)."""
        enc = self.tokenizer(
            texts, max_length=self.max_length, padding="max_length", truncation=True, return_tensors="pt"
        )
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        if self.mode == "chunks":
            bpe = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
            ids = lc.chunk_ids(bpe, self.max_length // self.context, self.context).to(self.device)
            return lc.encode_chunks(self.model, ids, self.context)
        ids, mask = self._tokenize(texts)
        if self.mode == "truncate":
            return lc.encode_standard(self.model, ids)
        if self.mode == "interpolate":
            return lc.encode_interpolate(self.model, ids, mask)
        return lc.encode_pathldm(self.model, ids, mask, self.context)


class BertTextEncoder(TextEncoder):
    """A BERT-family sentence encoder (the bundled MiniLM): bidirectional, so only `truncate`."""

    kind = "bert"

    def __init__(self, name: str, folder: Path, mode: str, max_length: int | None, device: str, dtype: torch.dtype):
        from transformers import AutoModel, AutoTokenizer

        if mode != "truncate":
            raise UserError(
                f"{name}: a BERT-style encoder supports only mode truncate, not {mode} (it reads all tokens at once)"
            )
        model = AutoModel.from_pretrained(str(folder))
        limit = int(model.config.max_position_embeddings)
        max_length = 154 if max_length is None else max_length
        if not 2 <= max_length <= limit:
            raise UserError(f"{name}: max_length must be between 2 and {limit}, got {max_length}")
        super().__init__(name, mode, max_length, max_length, model, device, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))

    def truncated(self, texts: list[str]) -> list[bool]:
        ids = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"] if texts else []
        return [len(t) + 2 > self.max_length for t in ids]

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(
            texts, max_length=self.max_length, padding="max_length", truncation=True, return_tensors="pt"
        )
        return self.model(**{k: v.to(self.device) for k, v in enc.items()}).last_hidden_state


def tiny_clip_model() -> torch.nn.Module:
    """A small CLIPTextModel with the same weights in every process and on every machine."""
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return CLIPTextModel(CLIPTextConfig(**TINY_CLIP))


def _folder_model_type(folder: Path) -> str:
    config = folder / "config.json"
    if not config.is_file():
        raise UserError(f"{folder}: no config.json, not a saved transformers model")
    try:
        return str(json.loads(config.read_text(encoding="utf-8")).get("model_type", ""))
    except json.JSONDecodeError as e:
        raise UserError(f"{config}: not valid JSON ({e.msg})") from None


# The long-caption mode of each encoder kind when none is given.
DEFAULT_MODES = {"clip": "pathldm", "bert": "truncate"}
OFFLINE_ENCODERS = (
    "--text-encoder minilm (bundled) or tiny-clip (random weights, for tests), or a folder saved with save_pretrained"
)
HUB_PROBE_TIMEOUT_S = 3.0


def hub_unreachable() -> bool:
    """True when the Hugging Face hub must not or cannot be asked: HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE
    is set, or its endpoint gives no answer within a few seconds. Without this check an offline
    machine spends half a minute in the hub client's retries before failing."""
    if any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    ):
        return True
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    endpoint = os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")
    try:
        get_session().head(endpoint, timeout=HUB_PROBE_TIMEOUT_S)  # any HTTP answer means reachable
    except Exception:  # noqa: BLE001 - DNS, refused, timeout, proxy: all mean "not now"
        return True
    return False


def _load_clip(name: str) -> torch.nn.Module:
    """A CLIP text model from a folder, or a hub id (from the local cache alone when the hub is unreachable)."""
    from transformers import CLIPTextModel

    offline = not Path(name).is_dir() and hub_unreachable()
    try:
        return CLIPTextModel.from_pretrained(name, local_files_only=offline)
    except OSError as e:
        if offline:
            raise UserError(
                f"{name}: not in the local Hugging Face cache and the hub is offline or unreachable; "
                f"offline, use {OFFLINE_ENCODERS}"
            ) from None
        raise UserError(
            f"{name}: not tiny-clip, minilm, a local model folder or a reachable hub id ({str(e).splitlines()[0]})"
        ) from None


def load_text_encoder(
    name: str,
    mode: str | None = None,
    max_length: int | None = 154,
    device: str = "cpu",
    dtype: torch.dtype | str | None = None,
) -> TextEncoder:
    """The encoder called `name` in long-caption `mode`; max_length None = the mode's natural length.

    mode None: the encoder's own (`DEFAULT_MODES`): PathLDM's for CLIP models, `truncate` for BERT-style ones,
    which read all tokens at once and have no other.

    dtype: a torch dtype, or a name resolved by `histoldm.devices.resolve_dtype` (None = auto: bfloat16 on a
    CUDA device that supports it, float32 elsewhere).
    """
    if mode is not None and mode not in lc.MODES:
        raise UserError(f"text encoder mode {mode!r}: expected one of {', '.join(lc.MODES)}")
    torch_dtype = (
        dtype
        if isinstance(dtype, torch.dtype)
        else resolve_dtype(dtype or "auto", torch.device(device), stage="text encoder dtype")
    )
    clip_mode, bert_mode = mode or DEFAULT_MODES["clip"], mode or DEFAULT_MODES["bert"]
    if name == "tiny-clip":
        return ClipTextEncoder(name, tiny_clip_model(), clip_mode, max_length, device, torch_dtype)
    if name == "minilm":
        return BertTextEncoder(name, asset_path("minilm"), bert_mode, max_length, device, torch_dtype)
    folder = Path(name)
    if folder.is_dir():
        if _folder_model_type(folder) in ("clip", "clip_text_model"):
            return ClipTextEncoder(name, _load_clip(str(folder)), clip_mode, max_length, device, torch_dtype)
        return BertTextEncoder(name, folder, bert_mode, max_length, device, torch_dtype)
    return ClipTextEncoder(name, _load_clip(name), clip_mode, max_length, device, torch_dtype)
