"""Text side: the CLIP tokenizer, text encoders (incl. PathLDM's long-caption mode), embedding cache."""
