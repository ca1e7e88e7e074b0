"""The FID protocol: everything a FID, KID or precision/recall number was measured under.

Built once per run from the extractor and resize mode, then extended with `dataclasses.replace` as the
sets are read (never mutated), and written beside every number as the JSON of `as_dict()`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from histoldm.evaluate import metrics as M


@dataclass(frozen=True)
class FidProtocol:
    """A field left None is not part of this protocol (not measured, or not this kind of number)."""

    # how images become features
    protocol: str  # clean | pytorch-fid
    resize: str
    resize_detail: str
    resize_where: str
    extractor: str
    extractor_sha256: str
    # the two sets
    image_size_real: str | None = None
    image_size_fake: str | None = None
    n_fake: int | None = None
    image_format_fake: str | None = None
    feature_dim: int | None = None
    n_real: int | str | None = None  # "unknown (external statistics)" for another tool's statistics
    image_format_real: str | None = None
    real_statistics: str | None = None  # set only for statistics made by another tool
    seeds: tuple[int | None, int | None] | None = None  # the noise floor's two sample seeds
    # one set's reference statistics (fid-ref, real_stats.npz)
    n: int | None = None
    image_format: str | None = None
    image_size: str | None = None
    # one metric's own settings
    fid_method: str | None = None
    kid_subsets: int | None = None
    kid_subset_size: int | None = None
    seed: int | None = None
    k: int | None = None
    n_train: int | None = None

    def extend(self, **values: Any) -> FidProtocol:
        """This protocol with more fields set (a new object)."""
        return dataclasses.replace(self, **values)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form written to metrics.json and .npz statistics: the fields that are set."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
        if self.seeds is not None:
            out["seeds"] = list(self.seeds)
        return out

    def line(self) -> str:
        """One line for printing beside a number (histoldm.evaluate.metrics.protocol_line)."""
        return M.protocol_line(self.as_dict())

    def entry(self, **values: Any) -> dict[str, Any]:
        """One metric's record in metrics.json: its values, this protocol and its line."""
        return {**values, "protocol": self.as_dict(), "protocol_line": self.line()}
