"""Pathology reports -> short summaries at a chosen CLIP-token budget (issue 3).

loading: read CSV / .txt folder / JSONL and normalise case ids; synthetic: made-up TCGA-BRCA-style
reports for demos and tests; extractive: the offline deterministic summariser; prompts + llm: the
LLM backends; summarize: the resumable, concurrent driver with regeneration.
"""
