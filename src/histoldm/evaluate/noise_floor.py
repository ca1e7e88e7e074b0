"""The seed-to-seed noise floor of FID and KID: the same model, the same captions, two seeds.

Two sample sets that differ only in their initial noise come from one distribution, so the FID and
KID between them is what sampling noise alone gives at this N (FID's small-N bias included). A
difference between two models smaller than this floor is not evidence that one is better.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from histoldm.errors import UserError
from histoldm.evaluate import features as F
from histoldm.evaluate import metrics as M
from histoldm.evaluate.config import SeedFloorConfig
from histoldm.evaluate.results import Fid, Kid, Metrics
from histoldm.evaluate.run import EvaluateResult, _base_protocol, _extract, fake_image_paths
from histoldm.fileio import atomic_write_json, read_jsonl
from histoldm.manifest import write_manifest


def _sample_set(folder: Path) -> tuple[dict, list[str]]:
    """The sampler settings (model, steps, guidance, seed, ...) and the caption ids of a sample folder."""
    folder = Path(folder)
    for name in ("settings.json", "index.jsonl"):
        if not (folder / name).is_file():
            raise UserError(f"{folder}: not a `histoldm sample` folder ({name} missing)")
    settings = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
    return settings, sorted(r["id"] for r in read_jsonl(folder / "index.jsonl"))


def run_seed_floor(cfg: SeedFloorConfig, first_features: F.FeatureSet | None = None) -> EvaluateResult:
    """FID and KID between two seeds' sample sets of the same captions; writes OUT/metrics.json.

    `first_features`: the first set's features when the caller already has them (`histoldm evaluate`'s
    EvaluateResult.fake_features, made with this config's extractor and resize); they must cover exactly
    the first folder's images. Saves extracting that set again (a quarter of the demo's Inception time)."""
    started = time.time()
    (settings_a, ids_a), (settings_b, ids_b) = _sample_set(cfg.first), _sample_set(cfg.second)
    seed_a, seed_b = settings_a.pop("seed", None), settings_b.pop("seed", None)
    if ids_a != ids_b:
        raise UserError(
            f"{cfg.second}: holds other captions than {cfg.first}; the floor compares one caption list under two seeds"
        )
    if settings_a != settings_b:
        differ = sorted(k for k in settings_a.keys() | settings_b.keys() if settings_a.get(k) != settings_b.get(k))
        raise UserError(
            f"{cfg.second}: sampled with other settings than {cfg.first} ({', '.join(differ)}); only the seed may "
            "differ"
        )
    if seed_a == seed_b:
        raise UserError(
            f"{cfg.second}: sampled with the same seed as {cfg.first} ({seed_a}); the floor needs two seeds"
        )
    extractor = F.load_extractor(cfg.extractor, cfg.device, cfg.dtype)
    first_paths = fake_image_paths(cfg.first)
    if first_features is None:
        a = _extract(cfg, extractor, first_paths, f"seed {seed_a} features")
    elif sorted(map(str, first_features.paths + [Path(s["file"]) for s in first_features.skipped])) == sorted(
        map(str, first_paths)
    ):
        a = first_features
    else:
        raise UserError(f"{cfg.first}: the features given for it are of other images")
    b = _extract(cfg, extractor, fake_image_paths(cfg.second), f"seed {seed_b} features")
    protocol = _base_protocol(cfg, extractor).extend(
        n_real=len(a.paths),
        n_fake=len(b.paths),
        image_format_real=a.image_format,
        image_format_fake=b.image_format,
        image_size_real=F.image_sizes(a.paths),
        image_size_fake=F.image_sizes(b.paths),
        feature_dim=a.features.shape[1],
        seeds=(seed_a, seed_b),
    )
    fid = M.frechet_distance(*M.gaussian_stats(a.features), *M.gaussian_stats(b.features), method=cfg.fid_method)
    kid_mean, kid_std = M.kid(
        a.features, b.features, n_subsets=cfg.kid_subsets, subset_size=cfg.kid_subset_size, seed=cfg.seed
    )
    size = min(cfg.kid_subset_size, len(a.paths), len(b.paths))
    floor = Metrics(
        fid=Fid(**protocol.extend(fid_method=cfg.fid_method).entry(value=fid)),
        kid=Kid(
            **protocol.extend(kid_subsets=cfg.kid_subsets, kid_subset_size=size, seed=cfg.seed).entry(
                mean=kid_mean, std=kid_std
            )
        ),
    )
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "metrics.json", floor.to_json())
    write_manifest(
        out / "manifest.json",
        stage="noise-floor",
        config=cfg,
        inputs={"first": cfg.first / "index.jsonl", "second": cfg.second / "index.jsonl"},
        produced={"metrics": "metrics.json", "fid": fid, "kid": kid_mean},
        started=started,
        seed=cfg.seed,
    )
    return EvaluateResult(out, floor)
