"""The typed metric entries write exactly the JSON metrics.json has always held: every shape an entry takes
(measured, skipped with or without its protocol, with a note) read from its dict and written back byte for byte."""

import json

import pytest

from histoldm.evaluate.protocol import FidProtocol
from histoldm.evaluate.results import Adherence, AttributeAdherence, Fid, Kid, Metrics, PrecisionRecall
from histoldm.fileio import atomic_write_json

PROTOCOL = FidProtocol(
    protocol="clean",
    resize="bicubic",
    resize_detail="PIL bicubic",
    resize_where="before the extractor",
    extractor="inception",
    extractor_sha256="ab" * 32,
    n_real=48,
    n_fake=48,
    feature_dim=2048,
    seeds=(0, 1),
)
ADHERENCE = {
    "levels_compared": ["high", "low"],
    "by_attribute": {
        "tumor": {
            "descriptor": "nuclear_density",
            "auroc": 0.8125,
            "chance": 0.5,
            "p_value": 0.000999000999000999,
            "n_high": 20,
            "n_low": 28,
            "n_permutations": 1000,
        },
        "til": {"status": "not measured: 0 images of til level 'high' and 48 of 'low'"},
    },
}
ENTRIES = {
    "fid": [
        PROTOCOL.extend(fid_method="eigh").entry(value=123.456789),
        {**PROTOCOL.extend(fid_method="eigh").entry(value=1.5), "note": "N = 48 real / 48 generated, fewer ..."},
    ],
    "kid": [
        PROTOCOL.extend(kid_subsets=100, kid_subset_size=48, seed=0).entry(mean=0.0123, std=-0.0004),
        {"status": "real given as statistics without features: ..."},
    ],
    "precision_recall": [
        PROTOCOL.extend(k=3).entry(precision=0.75, recall=0.5),
        {"status": "needs more than k=3 images per set ...", **PROTOCOL.extend(k=3).entry()},
        {"status": "real given as statistics without features: ..."},
    ],
}
TYPES = {"fid": Fid, "kid": Kid, "precision_recall": PrecisionRecall}


def _bytes(tmp_path, data) -> bytes:
    atomic_write_json(tmp_path / "m.json", data)
    return (tmp_path / "m.json").read_bytes()


@pytest.mark.parametrize("key, index", [(k, i) for k, entries in ENTRIES.items() for i in range(len(entries))])
def test_each_entry_writes_back_the_same_json(tmp_path, key, index):
    data = ENTRIES[key][index]
    record = TYPES[key].from_json(data)
    assert _bytes(tmp_path, record.to_json()) == _bytes(tmp_path, data)
    if key != "fid":
        assert record.measured == ("status" not in data)


def test_adherence_writes_back_the_same_json(tmp_path):
    adherence = Adherence.from_json(ADHERENCE)
    assert isinstance(adherence.by_attribute["tumor"], AttributeAdherence)
    assert adherence.by_attribute["tumor"].measured and not adherence.by_attribute["til"].measured
    assert _bytes(tmp_path, adherence.to_json()) == _bytes(tmp_path, ADHERENCE)


@pytest.mark.parametrize("extras", ["evaluate", "noise floor"])
def test_metrics_json_round_trips_byte_for_byte(tmp_path, extras):
    data = {"fid": ENTRIES["fid"][1], "kid": ENTRIES["kid"][0]}
    if extras == "evaluate":
        memorization = {"metric": "cosine", "share_below_threshold": None, "status": "too few", "n_train": 3}
        data |= {"precision_recall": ENTRIES["precision_recall"][1], "memorization": memorization}
        data |= {"adherence": ADHERENCE}
    metrics = Metrics.from_json(json.loads(_bytes(tmp_path, data)))
    assert list(metrics.to_json()) == list(data)  # the file's key order
    assert _bytes(tmp_path, metrics.to_json()) == _bytes(tmp_path, data)
