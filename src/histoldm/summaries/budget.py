"""Cutting text to a CLIP-token budget at the most natural place that fits.

The last resort of every backend: a summary over budget is cut at the last clause boundary
(; , . :) that fits, else at a word boundary, else at a token boundary, so a caption never
exceeds the length the text encoder was trained with. An LLM's reply is cut at whole clauses only
(`whole_clause_prefixes`): its commas and colons also run inside a finding ("ER, PR positive").
"""

from __future__ import annotations

import re

from histoldm.text.tokenizer import clip_tokenizer, count_tokens, token_ids

_CLAUSE_END = re.compile(r"[;,.:](?=\s|$)")
_WHOLE_CLAUSE_END = re.compile(r"[;.!?](?=\s|$)")
_TRAILING = " ;,:-/("


def _longest_fitting_prefix(text: str, cuts: list[int], budget: int) -> str | None:
    """Binary search over cut positions (token count grows with the prefix)."""
    lo, hi, best = 0, len(cuts) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        prefix = text[: cuts[mid]].rstrip(_TRAILING)
        if prefix and count_tokens(prefix) <= budget:
            best, lo = prefix, mid + 1
        else:
            hi = mid - 1
    return best


def _with_full_stop(text: str, budget: int) -> str:
    if text.endswith((".", "!", "?")):
        return text
    dotted = text + "."
    return dotted if count_tokens(dotted) <= budget else text


def truncate_to_budget(text: str, budget: int) -> str:
    """`text` unchanged when it fits, else its longest clause- (or word-, or token-) prefix that fits."""
    text = " ".join(text.split())
    if count_tokens(text) <= budget:
        return text
    clause_cuts = [m.start() for m in _CLAUSE_END.finditer(text)]
    if fitted := _longest_fitting_prefix(text, clause_cuts, budget):
        return _with_full_stop(fitted, budget)
    word_cuts = [m.start() for m in re.finditer(r"\s", text)] + [len(text)]
    if fitted := _longest_fitting_prefix(text, word_cuts, budget):
        return _with_full_stop(fitted, budget)
    ids = token_ids(text)[: max(budget, 0)]
    decoded = clip_tokenizer().decode(ids).strip()
    while decoded and count_tokens(decoded) > budget:
        decoded = decoded[:-1].rstrip()
    return decoded


def whole_clause_prefixes(text: str, budget: int) -> list[str]:
    """The prefixes of `text` that end where a clause ends (; . ! ?) and fit the budget, longest first, each
    ending in a full stop: "...; LVI present; ER, PR positive" is cut to "...; LVI present.", never "...; ER."."""
    text = " ".join(text.split())
    cuts = sorted({m.start() for m in _WHOLE_CLAUSE_END.finditer(text)} | {len(text)}, reverse=True)
    prefixes = (text[:cut].rstrip(_TRAILING) for cut in cuts)
    return [_with_full_stop(p, budget) for p in prefixes if p and count_tokens(p) <= budget]
