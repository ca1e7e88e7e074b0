"""The four ways a CLIP text model turns token ids into a (B, L, D) context.

CLIP was trained on 77 positions; PathLDM feeds it 154. How the extra positions are handled is
the subject of the paper's length experiment, so each way is a small function over the
transformers CLIPTextModel parts (embeddings, encoder, final_layer_norm) - no private helpers, so
it runs on transformers 4.44 and 5.x alike:

- `pathldm`: one tokenisation at L, chunks of 77 embedded with positions 0..76 each, ONE encoder
  pass over all L tokens with a causal + padding mask, final layer norm (PathLDM, exactly).
- `truncate`: the standard 77-token forward, as Stable Diffusion / LDM call it (causal mask only).
- `chunks`: the caption's BPE tokens split into pieces of 75, each wrapped in BOS/EOS, padded to
  77 and encoded on its own with the standard forward; outputs concatenated.
- `interpolate`: the 77 position embeddings linearly stretched to L, one pass without splitting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from histoldm.text.tokenizer import BOS_ID, EOS_ID

MODES = ("pathldm", "truncate", "chunks", "interpolate")


def text_transformer(model: torch.nn.Module) -> torch.nn.Module:
    """The module holding embeddings/encoder/final_layer_norm (`.text_model` in transformers 4.x)."""
    return getattr(model, "text_model", model)


def causal_padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """4-D additive mask (B, 1, L, L): query i may see key j when j <= i and j is a real token.

    The tokenizer's attention mask marks real tokens, the first EOS included; pads (also EOS ids)
    are hidden as keys. Every row keeps position 0 (BOS), so no row is fully masked.
    """
    b, n = attention_mask.shape
    causal = torch.ones(n, n, dtype=torch.bool, device=attention_mask.device).tril()
    allowed = causal[None] & attention_mask.bool()[:, None, :]
    mask = torch.zeros(b, 1, n, n, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


def _encoder_pass(model: torch.nn.Module, embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Encoder layers with our 4-D mask, then the final layer norm."""
    tm = text_transformer(model)
    hidden = tm.encoder(inputs_embeds=embeds, attention_mask=causal_padding_mask(attention_mask, embeds.dtype))[0]
    return tm.final_layer_norm(hidden)


def encode_pathldm(
    model: torch.nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor, context: int
) -> torch.Tensor:
    """PathLDM: chunks of `context` share position ids 0..context-1; one masked pass over all L."""
    tm = text_transformer(model)
    embeds = torch.cat([tm.embeddings(input_ids=chunk) for chunk in ids.split(context, dim=1)], dim=1)
    return _encoder_pass(model, embeds, attention_mask)


def encode_interpolate(model: torch.nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Position embeddings linearly interpolated from the trained count to L; one pass, no split."""
    tm = text_transformer(model)
    table = tm.embeddings.position_embedding.weight  # (P, D)
    positions = F.interpolate(table.T[None].float(), size=ids.shape[1], mode="linear", align_corners=True)[0].T
    embeds = tm.embeddings.token_embedding(ids) + positions.to(table.dtype)[None]
    return _encoder_pass(model, embeds, attention_mask)


def encode_standard(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The standard CLIP forward (causal mask only, as LDM/Stable Diffusion use it)."""
    return model(input_ids=ids).last_hidden_state


def chunk_ids(bpe: list[list[int]], n_chunks: int, context: int) -> torch.Tensor:
    """(B, n_chunks * context) ids: each chunk BOS + up to context-2 BPE tokens + EOS, EOS-padded."""
    body = context - 2
    rows = []
    for tokens in bpe:
        row: list[int] = []
        for k in range(n_chunks):
            piece = tokens[k * body : (k + 1) * body]
            chunk = [BOS_ID, *piece, EOS_ID]
            row += chunk + [EOS_ID] * (context - len(chunk))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long)


def encode_chunks(model: torch.nn.Module, ids: torch.Tensor, context: int) -> torch.Tensor:
    """Each chunk of `chunk_ids` encoded on its own; outputs concatenated along the sequence."""
    b = ids.shape[0]
    chunks = ids.reshape(b * (ids.shape[1] // context), context)
    out = encode_standard(model, chunks)
    return out.reshape(b, ids.shape[1], out.shape[-1])
