"""The visible facts of a synthetic case: one ground truth that the tile generator draws and the
synthetic report states, so a summary that keeps a fact hands the model something it can see.

- necrosis: present (each tile has a pale, homogeneous eosinophilic zone without intact nuclei,
  scattered with nuclear debris) or absent;
- grade: 1 (small, uniform, round tumour nuclei) or 3 (large, pleomorphic, ragged nuclei);
- growth: lobular (tumour cells in single files) or ductal (cohesive nests, some around a lumen).

Each fact is a balanced coin per case, drawn from (seed, case index) alone, so tiles and reports
agree however many cases or tiles there are. A fact not switched on stays None and is drawn as
before (no necrosis zone, the usual tumour nuclei, uniform placement).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

import numpy as np

from histoldm.data.config import VisibleFact

VISIBLE_FACTS: tuple[VisibleFact, ...] = get_args(VisibleFact)  # in the order drawn (one coin each)


@dataclass(frozen=True)
class CaseFacts:
    """A case's visible facts; None where the fact is not drawn."""

    necrosis: bool | None = None
    grade: int | None = None  # 1 or 3
    lobular: bool | None = None

    def positive(self, fact: VisibleFact) -> bool | None:
        """Whether the case has the fact's positive side (necrosis present, grade 3, lobular growth)."""
        value = {"necrosis": self.necrosis, "grade": self.grade, "growth": self.lobular}[fact]
        return None if value is None else value is True or value == 3


def draw_case_facts(seed: int, case: int, facts: Sequence[VisibleFact]) -> CaseFacts | None:
    """The case's facts from its own generator (seed, case, 3), apart from the tiles' draws; None when no
    fact is switched on, so the default dataset is drawn exactly as without facts."""
    unknown = sorted(set(facts) - set(VISIBLE_FACTS))
    if unknown:
        raise ValueError(f"unknown visible facts {unknown} (choose from {', '.join(VISIBLE_FACTS)})")
    if not facts:
        return None
    coins = np.random.default_rng((seed, case, 3)).random(len(VISIBLE_FACTS)) < 0.5
    drawn = dict(zip(VISIBLE_FACTS, coins.tolist()))
    return CaseFacts(
        necrosis=drawn["necrosis"] if "necrosis" in facts else None,
        grade=(3 if drawn["grade"] else 1) if "grade" in facts else None,
        lobular=drawn["growth"] if "growth" in facts else None,
    )
