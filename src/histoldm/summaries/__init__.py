"""Pathology reports -> short summaries at a chosen CLIP-token budget.

loading: read CSV / .txt folder / JSONL and normalise case ids; synthetic: made-up TCGA-BRCA-style
reports with their ground truth, for demos and tests; hard_reports: multi-part reports with
addenda, history and planted traps, and summary_oracle, which scores summaries against them;
findings: present / absent / possible read
from the whole clause; extractive: the offline deterministic summariser; consistency: does a
summary contradict its report (every backend); scoring: ground-truth facts a summary keeps;
prompts + llm: the LLM backends; summarize: the resumable, concurrent driver with regeneration.
"""
