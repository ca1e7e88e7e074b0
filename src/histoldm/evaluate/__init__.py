"""Evaluation: FID/KID/precision-recall under a pinned, recorded protocol; memorisation; condition adherence."""
