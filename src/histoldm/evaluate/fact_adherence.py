"""Adherence per visible fact: do images whose caption states a fact show it?

For each visible fact (histoldm.data.synthetic_facts: necrosis, grade, growth) a caption either states
its positive side ("necrosis present", "grade 3", lobular carcinoma) or does not (states the other side,
or drops the fact, as short summaries do). The fact's descriptor (histoldm.data.fact_descriptors) is
measured on every image, and the AUROC of that descriptor separating the two groups is reported with a
one-sided permutation p-value (histoldm.evaluate.adherence.adherence_test). Measured on the generated
images and, beside it, on the real held-out images under the same captions: the real images' AUROC is
the ceiling a model can reach with this descriptor and these captions. Where the images' cases have a
known truth (the synthetic cases' drawn facts), the same test split by the truth instead of the caption
says what a caption that drops the fact loses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from histoldm.data.fact_descriptors import FACT_DESCRIPTORS, describe_facts
from histoldm.data.synthetic_facts import VISIBLE_FACTS
from histoldm.evaluate.adherence import adherence_test, read_sample_index
from histoldm.summaries.case_facts import summary_facts

DESCRIPTOR_OF = {fact: describe.__name__ for fact, describe in FACT_DESCRIPTORS.items()}


def stated_facts(text: str) -> dict[str, bool | None]:
    """fact -> True where the text states its positive side, False where it states the other side, None
    where it says nothing of the fact (read by the summaries' own fact reader)."""
    read = {f.kind: f for f in summary_facts(text) if f.status in ("present", "absent")}
    necrosis, grade, kind = read.get("necrosis"), read.get("grade"), read.get("histologic_type")
    return {
        "necrosis": None if necrosis is None else necrosis.status == "present",
        "grade": None if grade is None else grade.value == "3",
        "growth": None if kind is None else "lobular" in kind.value and "ductal" not in kind.value,
    }


def _adherence_by_group(
    descriptors: Sequence[dict[str, float]],
    positive: dict[str, np.ndarray],
    what: str,
    n_permutations: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """fact -> the adherence test of its descriptor between the images marked positive and the rest (or a
    `status` saying why it was not measured: one group empty). `what` names the marking in that status."""
    out: dict[str, dict[str, Any]] = {}
    for fact, has in positive.items():
        if has.all() or not has.any():
            out[fact] = {"status": f"not measured: {int(has.sum())} of {has.size} {what} {fact}"}
            continue
        scores = np.array([d[fact] for d in descriptors])
        out[fact] = {
            "descriptor": DESCRIPTOR_OF[fact],
            **adherence_test(scores, has, n_permutations=n_permutations, seed=seed),
        }
    return out


def adherence_by_fact(
    descriptors: Sequence[dict[str, float]],
    captions: Sequence[str],
    *,
    facts: Sequence[str] = VISIBLE_FACTS,
    n_permutations: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """fact -> the adherence test of its descriptor between images whose caption states the fact and the
    rest (or a `status` saying why it was not measured: one group empty)."""
    stated = [stated_facts(c) for c in captions]
    positive = {fact: np.array([s[fact] is True for s in stated]) for fact in facts}
    return _adherence_by_group(descriptors, positive, "captions state", n_permutations, seed)


def adherence_by_truth(
    descriptors: Sequence[dict[str, float]],
    truths: Sequence[Mapping[str, bool]],
    *,
    facts: Sequence[str] = VISIBLE_FACTS,
    n_permutations: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """fact -> the adherence test of its descriptor between images of cases drawn with the fact and the
    rest, whatever their captions say: what a caption that drops a fact loses, the caption-side test cannot
    measure (it has no positive group)."""
    positive = {fact: np.array([bool(t[fact]) for t in truths]) for fact in facts}
    return _adherence_by_group(descriptors, positive, "images' cases have", n_permutations, seed)


def folder_fact_descriptors(
    folder: Path, mpp: float = 1.0, id_pattern: str | None = None
) -> tuple[list[str], list[str], list[dict[str, float]]]:
    """Ids, captions and fact descriptors of the images of a sampler-layout folder (index.jsonl: id,
    caption, file), those whose id matches `id_pattern` (a regex) when given."""
    ids, captions, descriptors = [], [], []
    for row in read_sample_index(folder):
        if id_pattern and not re.search(id_pattern, str(row.get("id", ""))):
            continue
        with Image.open(Path(folder) / row["file"]) as im:
            descriptors.append(describe_facts(np.asarray(im.convert("RGB")), mpp))
        ids.append(str(row.get("id", "")))
        captions.append(row.get("caption", ""))
    return ids, captions, descriptors


def run_fact_adherence(
    fake_dir: Path,
    real_dir: Path | None = None,
    *,
    facts: Sequence[str] = VISIBLE_FACTS,
    mpp: float = 1.0,
    n_permutations: int = 1000,
    seed: int = 0,
    id_pattern: str | None = None,
    truth: Mapping[str, Mapping[str, bool]] | None = None,
) -> dict[str, dict[str, Any]]:
    """fact -> {"generated": adherence on the samples by their captions, "real": the same on the real
    held-out images (the ceiling), and with `truth` (image id -> fact -> whether its case was drawn with it)
    "generated_truth": adherence on the samples by their cases' drawn facts}, over the images whose id
    matches `id_pattern` when given (the cases drawn with the facts)."""
    folders = {"generated": fake_dir, **({"real": real_dir} if real_dir is not None else {})}
    by_folder = {}
    for name, folder in folders.items():
        ids, captions, descriptors = folder_fact_descriptors(folder, mpp, id_pattern)
        by_folder[name] = adherence_by_fact(
            descriptors, captions, facts=facts, n_permutations=n_permutations, seed=seed
        )
        if truth is not None and name == "generated":
            missing = [i for i in ids if i not in truth]
            if missing:
                raise ValueError(f"{folder}: no drawn facts for image {missing[0]} ({len(missing)} images)")
            truths = [truth[i] for i in ids]
            by_folder["generated_truth"] = adherence_by_truth(
                descriptors, truths, facts=facts, n_permutations=n_permutations, seed=seed
            )
    return {fact: {name: results[fact] for name, results in by_folder.items()} for fact in facts}


def carried_share(summaries: Sequence[str], facts: Sequence[str] = VISIBLE_FACTS) -> dict[str, float]:
    """fact -> share of the summaries that state it at all (either side): what a budget keeps."""
    stated = [stated_facts(s) for s in summaries]
    return {fact: sum(s[fact] is not None for s in stated) / max(len(stated), 1) for fact in facts}
