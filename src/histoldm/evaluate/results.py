"""The metric entries of metrics.json as small typed records.

Each record is what one metric wrote: its values with the protocol they were measured under, or the
reason it was not measured (`status`). `to_json` gives exactly the dict metrics.json holds (a field left
None is absent, fields in the file's key order) and `from_json` reads it back, so a caller asks
`kid.measured` instead of testing which keys a dict happens to have.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

R = TypeVar("R", bound="_Record")


class _Record:
    """A flat metric record (a frozen dataclass): written as its set fields, read back as them."""

    def to_json(self) -> dict[str, Any]:
        """The fields that are set, in declaration order (the order metrics.json has always had)."""
        return {f.name: value for f in dataclasses.fields(self) if (value := getattr(self, f.name)) is not None}

    @classmethod
    def from_json(cls: type[R], data: dict[str, Any]) -> R:
        return cls(**data)


@dataclass(frozen=True)
class Fid(_Record):
    value: float
    protocol: dict[str, Any]
    protocol_line: str
    note: str | None = None  # why this N biases the value (fewer images than feature dimensions)


@dataclass(frozen=True)
class Kid(_Record):
    """Measured (mean, std over subsets) or not (status only)."""

    status: str | None = None
    mean: float | None = None
    std: float | None = None
    protocol: dict[str, Any] | None = None
    protocol_line: str | None = None

    @property
    def measured(self) -> bool:
        return self.mean is not None


@dataclass(frozen=True)
class PrecisionRecall(_Record):
    """Measured, or not (status, with the protocol when the sets were read but too small for k)."""

    status: str | None = None
    precision: float | None = None
    recall: float | None = None
    protocol: dict[str, Any] | None = None
    protocol_line: str | None = None

    @property
    def measured(self) -> bool:
        return self.precision is not None


@dataclass(frozen=True)
class AttributeAdherence(_Record):
    """One attribute's test: AUROC of a descriptor between high- and low-level captions, or why not measured."""

    status: str | None = None
    descriptor: str | None = None
    auroc: float | None = None
    chance: float | None = None
    p_value: float | None = None
    n_high: int | None = None
    n_low: int | None = None
    n_permutations: int | None = None

    @property
    def measured(self) -> bool:
        return self.auroc is not None


@dataclass(frozen=True)
class Adherence:
    levels_compared: list[str]
    by_attribute: dict[str, AttributeAdherence]

    def to_json(self) -> dict[str, Any]:
        return {
            "levels_compared": self.levels_compared,
            "by_attribute": {attr: r.to_json() for attr, r in self.by_attribute.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Adherence:
        by_attribute = {attr: AttributeAdherence.from_json(r) for attr, r in data["by_attribute"].items()}
        return cls(data["levels_compared"], by_attribute)


@dataclass(frozen=True)
class Metrics:
    """OUT/metrics.json of `histoldm evaluate` (the noise floor writes fid and kid only)."""

    fid: Fid
    kid: Kid
    precision_recall: PrecisionRecall | None = None
    memorization: dict[str, Any] | None = None  # histoldm.evaluate.memorization's report with its protocol
    adherence: Adherence | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            f.name: value if isinstance(value, dict) else value.to_json()
            for f in dataclasses.fields(self)
            if (value := getattr(self, f.name)) is not None
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Metrics:
        """metrics.json read back; keys other than the metrics' (a caller's additions) are ignored."""
        return cls(
            fid=Fid.from_json(data["fid"]),
            kid=Kid.from_json(data["kid"]),
            precision_recall=PrecisionRecall.from_json(data["precision_recall"])
            if "precision_recall" in data
            else None,
            memorization=data.get("memorization"),
            adherence=Adherence.from_json(data["adherence"]) if "adherence" in data else None,
        )
