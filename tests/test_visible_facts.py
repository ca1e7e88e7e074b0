"""Visible facts: each one changes its descriptor on the real generator's tiles, tiles and reports share
one ground truth per case, and adherence per fact separates images whose caption states the fact."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from histoldm.data.fact_descriptors import FACT_DESCRIPTORS
from histoldm.data.synthetic import make_synthetic_dataset, render_tile, synthetic_case_facts
from histoldm.data.synthetic_facts import VISIBLE_FACTS, CaseFacts, draw_case_facts
from histoldm.evaluate.fact_adherence import adherence_by_fact, carried_share, stated_facts
from histoldm.experiments.demo_data import demo_reports
from histoldm.summaries.case_facts import case_facts

# fact -> (its absent side, its present side), every other fact not drawn
SIDES = {
    "necrosis": (CaseFacts(necrosis=False), CaseFacts(necrosis=True)),
    "grade": (CaseFacts(grade=1), CaseFacts(grade=3)),
    "growth": (CaseFacts(lobular=False), CaseFacts(lobular=True)),
}
# the smallest gap, present minus absent, each descriptor must show on every seed
MARGINS = {"necrosis": 0.03, "grade": 60.0, "growth": 0.3}


@pytest.mark.parametrize("fact", VISIBLE_FACTS)
@pytest.mark.parametrize("size", [256, 64])  # as drawn (1 um/px) and at the demo's model scale (4 um/px)
def test_each_visible_fact_changes_its_descriptor(fact, size):
    describe = FACT_DESCRIPTORS[fact]
    for seed in range(2):
        tiles = [render_tile(0.9, 0.3, 0.1, (seed, 1, 0, 2), facts=f) for f in SIDES[fact]]
        absent, present = (describe(_at(tile, size), 256 / size) for tile in tiles)
        assert present - absent > MARGINS[fact], (fact, size, seed, absent, present)


def _at(rgb: np.ndarray, size: int) -> np.ndarray:
    """The tile resized as export-patches resizes real images for a model of that size."""
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.LANCZOS))


def test_without_facts_tiles_are_drawn_as_before():
    """No fact switched on: no draw made for facts and the same pixels as a tile drawn without them."""
    assert draw_case_facts(0, 3, []) is None
    assert synthetic_case_facts(0, 4, []) == {}
    assert np.array_equal(render_tile(0.8, 0.2, 0.1, 5, 96), render_tile(0.8, 0.2, 0.1, 5, 96, CaseFacts()))


def test_tiles_and_reports_agree_on_each_cases_facts(tmp_path):
    store = tmp_path / "store"
    make_synthetic_dataset(store, 6, 1, seed=3, size=64, visible_facts=VISIBLE_FACTS)
    truth = {r["case_id"]: r for r in pq.read_table(store / "attributes.parquet").to_pylist()}
    reports = demo_reports(store, 3, synthetic_case_facts(3, 6, VISIBLE_FACTS))
    assert sorted(r["case_id"] for r in reports) == sorted(truth)
    assert {t["necrosis"] for t in truth.values()} == {"present", "absent"}  # both sides drawn in six cases
    for report in reports:
        read = {f.kind: f for f in case_facts(report["text"])}
        drawn = truth[report["case_id"]]
        assert read["necrosis"].status == drawn["necrosis"], report["case_id"]
        assert read["grade"].value == str(drawn["grade"]), report["case_id"]
        assert read["histologic_type"].value == f"invasive {drawn['growth']} carcinoma", report["case_id"]
        assert {"er", "pr", "her2", "nodes", "margins"} <= set(read)  # the non-visual facts real reports carry


def test_without_facts_the_truth_table_has_no_fact_columns(tmp_path):
    make_synthetic_dataset(tmp_path / "store", 2, 1, seed=0, size=32)
    columns = set(pq.read_table(tmp_path / "store" / "attributes.parquet").column_names)
    assert not columns & {"necrosis", "grade", "growth"}


def _caption(facts: CaseFacts) -> str:
    kind = "ILC" if facts.lobular else "IDC"
    necrosis = "necrosis present" if facts.necrosis else "no necrosis"
    return f"high tumor; low til; {kind}, grade {facts.grade}; {necrosis}"


def test_adherence_per_fact_separates_captions_that_state_the_fact():
    cases = [CaseFacts(necrosis=k % 2 == 0, grade=3 if k // 2 % 2 else 1, lobular=k // 4 % 2 == 1) for k in range(8)]
    descriptors = [
        {
            fact: describe(render_tile(0.9, 0.3, 0.1, (7, k, 0, 2), facts=f))
            for fact, describe in FACT_DESCRIPTORS.items()
        }
        for k, f in enumerate(cases)
    ]
    captions = [_caption(f) for f in cases]
    result = adherence_by_fact(descriptors, captions, n_permutations=200)
    for fact in VISIBLE_FACTS:
        assert result[fact]["auroc"] > 0.95 and result[fact]["p_value"] < 0.05, (fact, result[fact])
    rng = np.random.default_rng(0)
    shuffled = [adherence_by_fact(descriptors, list(rng.permutation(captions)), n_permutations=1) for _ in range(30)]
    for fact in VISIBLE_FACTS:
        assert abs(np.mean([r[fact]["auroc"] for r in shuffled if "auroc" in r[fact]]) - 0.5) < 0.12, fact


def test_a_caption_that_drops_a_fact_does_not_state_it():
    assert stated_facts("high tumor; low til; ILC, grade 3; no necrosis") == {
        "necrosis": False,
        "grade": True,
        "growth": True,
    }
    assert stated_facts("high tumor; low til; IDC") == {"necrosis": None, "grade": None, "growth": False}
    assert carried_share(["IDC, grade 1; no necrosis", "IDC"]) == {"necrosis": 0.5, "grade": 0.5, "growth": 1.0}
    one_group = adherence_by_fact([{"necrosis": 0.1, "grade": 1.0, "growth": 0.0}] * 2, ["IDC"] * 2, facts=["necrosis"])
    assert one_group["necrosis"]["status"].startswith("not measured")


def test_fact_adherence_reads_a_sampler_folder_and_keeps_the_cases_drawn_with_facts(tmp_path):
    from histoldm.evaluate.fact_adherence import run_fact_adherence
    from histoldm.fileio import atomic_write_jsonl

    rows = []
    for k, case in enumerate(["SYN-0000", "SYN-0001", "SYN-0002", "SYN-0003", "block-1", "block-2"]):
        facts = CaseFacts(necrosis=k % 2 == 0, grade=1, lobular=False)
        Image.fromarray(render_tile(0.9, 0.3, 0.1, (k, 0, 0, 2), 128, facts)).save(tmp_path / f"{k}.png")
        rows.append({"id": f"{case}-S1_0_0", "caption": _caption(facts), "file": f"{k}.png"})
    atomic_write_jsonl(tmp_path / "index.jsonl", rows)
    result = run_fact_adherence(tmp_path, facts=["necrosis", "grade"], n_permutations=50, id_pattern="^SYN-")
    assert result["necrosis"]["generated"]["n_high"] + result["necrosis"]["generated"]["n_low"] == 4
    assert result["necrosis"]["generated"]["auroc"] == 1.0
    assert "not measured" in result["grade"]["generated"]["status"]  # every caption says grade 1
    assert "real" not in result["necrosis"]  # no real folder given


def test_truth_side_adherence_measures_what_a_caption_that_drops_the_fact_loses(tmp_path):
    """Captions that say nothing of necrosis leave the caption-side test without a positive group; split by
    each case's drawn necrosis, the same images are measured (here they show it: AUROC 1)."""
    from histoldm.evaluate.fact_adherence import run_fact_adherence
    from histoldm.fileio import atomic_write_jsonl

    rows, truth = [], {}
    for k in range(4):
        facts = CaseFacts(necrosis=k % 2 == 0, grade=1, lobular=False)
        Image.fromarray(render_tile(0.9, 0.3, 0.1, (k, 0, 0, 2), 128, facts)).save(tmp_path / f"{k}.png")
        image_id = f"SYN-000{k}-S1_0_0"
        rows.append({"id": image_id, "caption": "high tumor; low til; IDC", "file": f"{k}.png"})
        truth[image_id] = {"necrosis": facts.necrosis}
    atomic_write_jsonl(tmp_path / "index.jsonl", rows)
    result = run_fact_adherence(tmp_path, facts=["necrosis"], n_permutations=50, truth=truth)["necrosis"]
    assert "not measured" in result["generated"]["status"]
    assert result["generated_truth"]["auroc"] == 1.0 and result["generated_truth"]["n_high"] == 2
    with pytest.raises(ValueError, match="no drawn facts for image SYN-0000-S1_0_0"):
        run_fact_adherence(tmp_path, facts=["necrosis"], n_permutations=5, truth={})
