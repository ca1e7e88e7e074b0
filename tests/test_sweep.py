"""The sweep's per-budget text context and the CPU memory measure (the end-to-end sweep is in test_e2e.py)."""

import time

import numpy as np
import pytest

from histoldm.errors import UserError
from histoldm.experiments.config import SweepConfig
from histoldm.experiments.sweep import caption_prefix_tokens, context_length, row_recipes
from histoldm.memory import PeakRSS
from histoldm.text.encoders import load_text_encoder
from histoldm.text.tokenizer import count_tokens

SHORT = "Invasive ductal carcinoma, grade 2."
LONG = (
    "Invasive ductal carcinoma, grade 2; tumor size 2.1 cm; margins negative; estrogen receptor positive; "
    "HER2 negative."
)


def test_context_follows_the_budget_with_prefix_and_bos_eos():
    clip = load_text_encoder("tiny-clip", "pathldm", None, device="cpu")
    prefix = caption_prefix_tokens(clip)
    assert prefix == count_tokens("high tumor; high til;")  # the caption minus its summary, "; " included
    short, long = context_length(20, [SHORT], clip), context_length(154, [SHORT, LONG], clip)
    assert short == 20 + prefix + 2 < long == 154 + prefix + 2  # the paper's 154 = 150-token summary + 4 prefix tokens
    chunks = load_text_encoder("tiny-clip", "chunks", None, device="cpu")
    assert context_length(20, [SHORT], chunks) == 77 and context_length(154, [SHORT], chunks) == 3 * 77  # whole windows


def test_context_grows_to_the_longest_summary_when_the_encoder_tokenizes_finer():
    """MiniLM's WordPiece splits a CLIP-counted summary into more tokens: the context must still hold it."""
    minilm = load_text_encoder("minilm", "truncate", None, device="cpu")
    wordpieces = len(minilm.tokenizer(LONG, add_special_tokens=False)["input_ids"])
    budget = count_tokens(LONG)
    assert wordpieces > budget  # the case the rule exists for
    length = context_length(budget, [LONG], minilm)
    assert length == 2 + caption_prefix_tokens(minilm) + wordpieces
    assert not load_text_encoder("minilm", "truncate", length, device="cpu").truncated(
        [f"high tumor; high til; {LONG}"]
    )[0]


def test_row_recipes_refuse_a_context_the_encoder_cannot_take(tmp_path):
    summaries = tmp_path / "s.jsonl"
    summaries.write_text('{"case_id": "a", "summary": "x", "tokens": 1, "status": "ok"}\n')
    encoder = {"text_encoder": "tiny-clip", "mode": "truncate"}
    cfg = SweepConfig(budgets=[20, 154], recipe={"encode_text": encoder})
    with pytest.raises(UserError, match="budget 154 needs a 162-token text context"):
        row_recipes(cfg, {20: summaries, 154: summaries})
    assert row_recipes(cfg, {20: summaries})[20].encode_text == {**encoder, "max_length": 28}
    fixed = SweepConfig(budgets=[154], text_context="recipe", recipe={"encode_text": {**encoder, "max_length": 77}})
    assert row_recipes(fixed, {154: summaries})[154].encode_text["max_length"] == 77


def test_peak_rss_sees_memory_allocated_inside_the_stage():
    with PeakRSS() as rss:
        block = np.ones(160 * 2**20, dtype=np.uint8)  # 160 MiB, touched, held past a few sampling intervals
        time.sleep(0.3)
        del block
    result = rss.result()
    assert result["rise_gib"] >= 0.14 and result["peak_rss_gib"] >= result["start_rss_gib"] + 0.14


def test_across_seeds_marks_only_differences_beyond_the_seed_spread_and_floor():
    """A budget's mean counts as different from the largest budget's only beyond the metric's noise."""
    from histoldm.experiments.sweep_seeds import across_seeds

    def row(budget, seed, fid, floor, auroc):
        return {"budget": budget, "seed": seed, "fid": fid, "fid_floor": floor, "adherence_necrosis_auroc": auroc}

    rows = [
        row(10, 0, 300.0, 90.0, 0.50),
        row(10, 1, 310.0, 100.0, 0.54),
        row(35, 0, 250.0, 95.0, 0.80),
        row(35, 1, 260.0, 95.0, 0.84),
        row(154, 0, 290.0, 95.0, 0.78),
        row(154, 1, 296.0, 95.0, 0.82),
    ]
    columns, table = across_seeds(rows, ["fid", "adherence_necrosis_auroc"])
    assert columns == ["budget", "fid", "adherence_necrosis_auroc"]
    by_budget = {r[0]: r[1:] for r in table}
    assert by_budget["noise"] == ["100.00", "0.040"]  # FID: the largest floor; AUROC: the largest seed spread
    assert by_budget["10"] == ["305.00 (300.00 / 310.00)", "0.520 (0.500 / 0.540) *"]  # necrosis lost beyond noise
    assert by_budget["35"] == ["255.00 (250.00 / 260.00)", "0.820 (0.800 / 0.840)"]  # both inside the noise
    assert by_budget["154"] == ["293.00 (290.00 / 296.00)", "0.800 (0.780 / 0.820)"]  # the reference, never marked


def test_sweep_seeds_each_once():
    with pytest.raises(ValueError, match="each seed once"):
        SweepConfig.model_validate({"seeds": [0, 0]})
    assert SweepConfig.model_validate({"seeds": [3, 4]}).row_seeds == [3, 4]
    assert SweepConfig.model_validate({}).row_seeds == [SweepConfig.model_validate({}).recipe.seed]
