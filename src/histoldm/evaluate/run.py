"""`histoldm evaluate`: FID, KID, precision/recall (+ memorisation, adherence) of a generated set.

Every number goes out with the protocol it was measured under (its name, N, image format and size,
resize filter, extractor and its sha256), in metrics.json and on the printed line beside it. Reference
statistics made once (`histoldm fid-ref`) are refused when their protocol differs from this run's, and
real and generated sets of different image sizes are refused unless asked for. Inputs and outputs are
checked before any feature is computed; a metric the set sizes do not allow is skipped with the reason.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histoldm.devices import launched_processes
from histoldm.errors import UserError
from histoldm.evaluate import features as F
from histoldm.evaluate import metrics as M
from histoldm.evaluate.adherence import adherence_line, check_adherence_inputs, run_adherence
from histoldm.evaluate.config import EvaluateConfig, ExtractConfig, FidRefConfig
from histoldm.evaluate.memorization import memorization_report, pairs_image
from histoldm.evaluate.protocol import FidProtocol
from histoldm.evaluate.results import Adherence, Fid, Kid, Metrics, PrecisionRecall
from histoldm.fileio import atomic_write_json, read_jsonl, require_output_file, require_output_folder
from histoldm.manifest import write_manifest


def default_workers() -> int:
    """Leave a core for the network: decoding in more workers than spare cores only competes with it."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def fake_image_paths(fake: Path) -> list[Path]:
    """The sampler's images as listed in FAKE/index.jsonl (so grid.png is not counted), else every image."""
    index = Path(fake) / "index.jsonl"
    if not index.is_file():
        return F.list_images(fake)

    paths = [Path(fake) / row["file"] for row in read_jsonl(index) if "file" in row]
    if not paths:
        raise UserError(f"{index}: lists no images")
    return paths


def _extract(
    cfg: ExtractConfig, extractor: F.Extractor, paths: list[Path], desc: str, procs=None, parts: Path | None = None
) -> F.FeatureSet | None:
    """Features of `paths`; across the processes of `accelerate launch` (procs) each takes its share,
    saved under `parts`, and only the main process gets the merged set (the others None)."""
    workers = cfg.workers if cfg.workers is not None else default_workers()
    options = {"mode": cfg.resize, "batch_size": cfg.batch_size, "workers": workers, "desc": desc}
    if procs is None:
        return F.extract_features(paths, extractor, **options)
    return F.extract_in_processes(paths, extractor, procs, parts, desc.split()[0], **options)


def _base_protocol(cfg: ExtractConfig, extractor: F.Extractor) -> FidProtocol:
    return FidProtocol(
        protocol=F.RESIZE_PROTOCOL[cfg.resize],
        resize=cfg.resize,
        resize_detail=F.RESIZE_DESCRIPTION[cfg.resize],
        resize_where=F.resize_location(extractor),
        **extractor.protocol(),
    )


@dataclass(frozen=True)
class FidRefResult:
    """`histoldm fid-ref`: the statistics file, the protocol it was made under, the unreadable files."""

    stats: Path
    protocol: FidProtocol
    skipped: list[dict]


@dataclass(frozen=True)
class EvaluateResult:
    """`histoldm evaluate` (and the noise floor): `metrics` is what OUT/metrics.json holds (`metrics.to_json()`),
    one entry per metric with its protocol (fid, kid, precision_recall[, memorization, adherence])."""

    out: Path
    metrics: Metrics
    fake_features: F.FeatureSet | None = None  # the generated set's features, kept in memory for a caller that measures
    # more against them (the demo's noise floor); not written to disk
    real_features: F.FeatureSet | None = None  # the real set's, when it is a folder (the demo's per-group metrics)


def run_fid_ref(cfg: FidRefConfig) -> FidRefResult:
    """Reference statistics (mu, sigma) of a real image folder, saved in pytorch-fid's .npz layout."""
    started = time.time()
    paths = F.list_images(cfg.images)
    require_output_file(cfg.out, "statistics file")
    extractor = F.load_extractor(cfg.extractor, cfg.device, cfg.dtype)
    fs = _extract(cfg, extractor, paths, "real features")
    protocol = _base_protocol(cfg, extractor).extend(
        n=len(fs.paths),
        image_format=fs.image_format,
        image_size=F.image_sizes(fs.paths),
        feature_dim=fs.features.shape[1],
    )
    M.save_stats(cfg.out, *M.gaussian_stats(fs.features), protocol.as_dict(), fs.features if cfg.features else None)
    write_manifest(
        Path(f"{cfg.out}.manifest.json"),
        stage="fid-ref",
        config=cfg,
        inputs={"images": cfg.images},
        produced={"stats": str(cfg.out), "n": len(fs.paths), "features": cfg.features},
        started=started,
        skipped=fs.skipped,
    )
    return FidRefResult(Path(cfg.out), protocol, fs.skipped)


def _real_side(
    cfg: EvaluateConfig, extractor: F.Extractor, real_fs: F.FeatureSet | None, protocol: FidProtocol
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, FidProtocol]:
    """mu, sigma of the real set, its features (KID and P/R need them: a folder's, or those `fid-ref` kept
    in the statistics; None for statistics without them), and the protocol with the real set's count and format."""
    if real_fs is None:
        real = Path(cfg.real)
        mu, sigma, ref = M.load_stats(real)
        if ref is None:  # pytorch-fid's or PathLDM's (center_crop_real_stats.npz): only mu and sigma
            protocol = protocol.extend(
                n_real="unknown (external statistics)",
                image_format_real="unknown",
                real_statistics=(
                    f"{real.name} from another tool (e.g. pytorch-fid, PathLDM): its preprocessing is not ours"
                ),
            )
        else:
            protocol = protocol.extend(n_real=ref.get("n"), image_format_real=ref.get("image_format"))
        if mu.size != protocol.feature_dim:
            raise UserError(
                f"{real}: statistics of {mu.size}-d features, this run's extractor gives {protocol.feature_dim}-d"
            )
        return mu, sigma, M.load_features(real, mu, protocol.n_real), protocol
    fs = real_fs
    protocol = protocol.extend(n_real=len(fs.paths), image_format_real=fs.image_format)
    mu, sigma = _stats(fs, cfg.real)
    stats_protocol = _base_protocol(cfg, extractor).extend(
        n=len(fs.paths),
        image_format=fs.image_format,
        image_size=protocol.image_size_real,
        feature_dim=fs.features.shape[1],
    )
    M.save_stats(cfg.out / "real_stats.npz", mu, sigma, stats_protocol.as_dict())
    return mu, sigma, fs.features, protocol


def _stats(fs: F.FeatureSet, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """mu, sigma of a set; fewer than 2 images have no covariance, said naming the folder."""
    if len(fs.paths) < 2:
        raise UserError(f"{folder}: FID needs at least 2 readable images per set, got {len(fs.paths)}")
    return M.gaussian_stats(fs.features)


def _image_sizes(cfg: EvaluateConfig, real_paths: list[Path] | None, fake_paths: list[Path]) -> dict[str, str]:
    """Both sets' image sizes for the protocol; different ones refused unless allow_size_mismatch:
    both would be resized to 299 and FID would measure the resolution gap, not the model."""
    fake = F.image_sizes(fake_paths)
    real = (
        F.image_sizes(real_paths)
        if real_paths is not None
        else (M.load_stats(Path(cfg.real))[2] or {}).get("image_size", "unknown")
    )
    if real != fake and "unknown" not in (real, fake) and not cfg.allow_size_mismatch:
        raise UserError(
            f"{cfg.real}: real images are {real} px but the generated ones in {cfg.fake} are {fake} px; export the "
            "real patches at the model's size (`histoldm export-patches --size N`) or pass --allow-size-mismatch to "
            "compare them anyway"
        )
    return {"image_size_real": real, "image_size_fake": fake}


def _check_ref_protocol(stats: Path, protocol: FidProtocol) -> None:
    """Statistics from another extractor or resize filter would give a meaningless FID."""
    ref = M.load_stats(stats)[2]
    for key in ("extractor_sha256", "resize"):
        if ref is not None and ref.get(key) != getattr(protocol, key):
            raise UserError(
                f"{stats}: statistics made with {key}={ref.get(key)}, this run uses {getattr(protocol, key)}; remake "
                "them with `histoldm fid-ref`"
            )


def _train_is_real(cfg: EvaluateConfig) -> bool:
    return Path(cfg.real).is_dir() and Path(cfg.train_real).resolve() == Path(cfg.real).resolve()


def _memorization(
    cfg: EvaluateConfig,
    fake_fs: F.FeatureSet,
    real_fs: F.FeatureSet | None,
    train_fs: F.FeatureSet | None,
    protocol: FidProtocol,
) -> tuple[dict, list[dict]]:
    """Nearest training patch per generated image; reuses the real features when train == real."""
    same = _train_is_real(cfg)
    train_fs = real_fs if same else train_fs
    memo = memorization_report(
        fake_fs.features,
        train_fs.features,
        fake_fs.paths,
        train_fs.paths,
        metric=cfg.memorization_metric,
        quantile=cfg.memorization_quantile,
        n_pairs=cfg.memorization_pairs,
    )
    pairs_image(memo["closest_pairs"], Path(cfg.out) / "memorization_pairs.png")
    skipped = [] if same else [{**s, "set": "train"} for s in train_fs.skipped]
    return protocol.extend(n_train=len(train_fs.paths)).entry(**memo), skipped


def _fid(
    cfg: EvaluateConfig,
    mu_r: np.ndarray,
    sigma_r: np.ndarray,
    mu_f: np.ndarray,
    sigma_f: np.ndarray,
    n_fake: int,
    protocol: FidProtocol,
) -> Fid:
    """FID, with a note when either set has fewer images than feature dimensions (a singular covariance)."""
    fid = Fid(
        **protocol.extend(fid_method=cfg.fid_method).entry(
            value=M.frechet_distance(mu_r, sigma_r, mu_f, sigma_f, method=cfg.fid_method)
        )
    )
    n_real = protocol.n_real if isinstance(protocol.n_real, int) else len(mu_r)
    if min(n_real, n_fake) < len(mu_r):
        note = (
            f"N = {n_real} real / {n_fake} generated, fewer than the {len(mu_r)} feature dimensions: "
            "singular covariance, FID biased upward; compare only at equal N"
        )
        fid = dataclasses.replace(fid, note=note)
    return fid


def _kid_and_precision_recall(
    cfg: EvaluateConfig, real_features: np.ndarray | None, fake_fs: F.FeatureSet, protocol: FidProtocol
) -> dict[str, Kid | PrecisionRecall]:
    """KID and precision/recall, or why not: both need the real features, P/R more than k images per set."""
    if real_features is None:
        why = (
            "real given as statistics without features: KID and precision/recall need real features "
            "(give the folder, or statistics from `histoldm fid-ref`, which keeps them)"
        )
        return {"kid": Kid(status=why), "precision_recall": PrecisionRecall(status=why)}
    kid_mean, kid_std = M.kid(
        real_features, fake_fs.features, n_subsets=cfg.kid_subsets, subset_size=cfg.kid_subset_size, seed=cfg.seed
    )
    n_r, n_f = len(real_features), len(fake_fs.paths)
    size = min(cfg.kid_subset_size, n_r, n_f)
    kid = Kid(
        **protocol.extend(kid_subsets=cfg.kid_subsets, kid_subset_size=size, seed=cfg.seed).entry(
            mean=kid_mean, std=kid_std
        )
    )
    pr_protocol = protocol.extend(k=cfg.pr_k)
    if min(n_r, n_f) > cfg.pr_k:
        precision, recall = M.precision_recall(real_features, fake_fs.features, k=cfg.pr_k)
        return {
            "kid": kid,
            "precision_recall": PrecisionRecall(**pr_protocol.entry(precision=precision, recall=recall)),
        }
    # the k-th nearest neighbour within a set needs more than k images in it
    why = (
        f"needs more than k={cfg.pr_k} images per set (k-th nearest neighbour within a set), "
        f"have {n_r} real and {n_f} generated"
    )
    return {"kid": kid, "precision_recall": PrecisionRecall(status=why, **pr_protocol.entry())}


def _input_paths(cfg: EvaluateConfig) -> tuple[list[Path], list[Path] | None, list[Path]]:
    """The generated, real (None for statistics) and training images, every input checked before any feature."""
    if not Path(cfg.real).exists():
        raise UserError(f"{cfg.real}: real images or statistics not found")
    fake_paths = fake_image_paths(cfg.fake)
    real_paths = None if Path(cfg.real).is_file() else F.list_images(cfg.real)
    train_paths = F.list_images(cfg.train_real) if cfg.train_real is not None and not _train_is_real(cfg) else []
    if cfg.adherence:
        check_adherence_inputs(cfg.fake, cfg.captions)
    return fake_paths, real_paths, train_paths


def _adherence(cfg: EvaluateConfig) -> Adherence:
    return run_adherence(
        cfg.fake,
        captions_parquet=cfg.captions,
        high=cfg.adherence_high,
        low=cfg.adherence_low,
        mpp=cfg.adherence_mpp,
        n_permutations=cfg.adherence_permutations,
        seed=cfg.seed,
    )


def run_evaluate(cfg: EvaluateConfig, procs=None) -> EvaluateResult | None:
    """Compute the metrics, write OUT/metrics.json (+ real_stats.npz, manifest.json); return them.
    Under `accelerate launch` (or given `procs`, histoldm.devices.Processes) every process extracts
    its share of each image set (OUT/features/ holds the shares until the metrics are written) and
    the main process computes the metrics; the others return None."""
    started = time.time()
    procs = procs or launched_processes(cfg.device, "evaluate")
    sharded = procs if procs.world > 1 else None
    out = require_output_folder(cfg.out)
    fake_paths, real_paths, train_paths = _input_paths(cfg)
    extractor = F.load_extractor(cfg.extractor, str(procs.device) if sharded else cfg.device, cfg.dtype)
    protocol = _base_protocol(cfg, extractor)
    if real_paths is None:  # refuse mismatched statistics before spending time on features
        _check_ref_protocol(Path(cfg.real), protocol)
    protocol = protocol.extend(**_image_sizes(cfg, real_paths, fake_paths))
    out.mkdir(parents=True, exist_ok=True)

    parts = out / "features"
    fake_fs = _extract(cfg, extractor, fake_paths, "fake features", sharded, parts)
    real_fs = _extract(cfg, extractor, real_paths, "real features", sharded, parts) if real_paths is not None else None
    train_fs = _extract(cfg, extractor, train_paths, "train features", sharded, parts) if train_paths else None
    if fake_fs is None:  # not the main process: its shares are saved, the main one computes the metrics
        return None
    protocol = protocol.extend(
        n_fake=len(fake_fs.paths), image_format_fake=fake_fs.image_format, feature_dim=fake_fs.features.shape[1]
    )
    mu_r, sigma_r, real_features, protocol = _real_side(cfg, extractor, real_fs, protocol)
    mu_f, sigma_f = _stats(fake_fs, cfg.fake)

    metrics = Metrics(
        fid=_fid(cfg, mu_r, sigma_r, mu_f, sigma_f, len(fake_fs.paths), protocol),
        **_kid_and_precision_recall(cfg, real_features, fake_fs, protocol),
    )
    skipped = [{**s, "set": "real"} for s in (real_fs.skipped if real_fs else [])] + [
        {**s, "set": "fake"} for s in fake_fs.skipped
    ]
    if cfg.train_real is not None:
        memorization, train_skipped = _memorization(cfg, fake_fs, real_fs, train_fs, protocol)
        metrics = dataclasses.replace(metrics, memorization=memorization)
        skipped += train_skipped
    if cfg.adherence:
        metrics = dataclasses.replace(metrics, adherence=_adherence(cfg))

    atomic_write_json(out / "metrics.json", metrics.to_json())
    write_manifest(
        out / "manifest.json",
        stage="evaluate",
        config=cfg,
        inputs={
            "real": cfg.real,
            "fake": cfg.fake,
            "train_real": cfg.train_real,
            "captions": cfg.captions,
            "extractor": cfg.extractor,
        },
        produced={
            "metrics": "metrics.json",
            "real_stats": "real_stats.npz" if real_fs else None,
            "n_fake": len(fake_fs.paths),
        },
        started=started,
        seed=cfg.seed,
        skipped=skipped,
    )
    shutil.rmtree(parts, ignore_errors=True)
    return EvaluateResult(out, metrics, fake_fs, real_fs)


def report_lines(metrics: Metrics) -> list[str]:
    """Human-readable lines, the protocol beside every number."""
    fid, kid, pr = metrics.fid, metrics.kid, metrics.precision_recall
    lines = [f"FID {fid.value:.3f}" + (f" ({fid.note})" if fid.note else "") + f"  [{fid.protocol_line}]"]
    lines.append(
        f"KID {kid.mean:.5f} +- {kid.std:.5f}  [{kid.protocol_line}, {kid.protocol['kid_subsets']} subsets of "
        f"{kid.protocol['kid_subset_size']}]"
        if kid.measured
        else f"KID skipped: {kid.status}"
    )
    lines.append(
        f"precision {pr.precision:.3f} recall {pr.recall:.3f}  [{pr.protocol_line}, k={pr.protocol['k']}]"
        if pr.measured
        else f"precision/recall skipped: {pr.status}"
    )
    if metrics.memorization is not None:
        lines += _memorization_lines(metrics.memorization)
    if metrics.adherence is not None:
        lines += [adherence_line(attr, r) for attr, r in metrics.adherence.by_attribute.items()]
    return lines


def _memorization_lines(m: dict[str, Any]) -> list[str]:
    if m.get("share_below_threshold") is None:
        lines = [f"memorisation not measured: {m['status']}  [{m['protocol_line']}, N train {m['n_train']}]"]
    else:
        lines = [
            f"memorisation: {m['share_below_threshold']:.3f} of generated images below threshold {m['threshold']:.4g} "
            f"({m['metric']}; chance level {m['chance_level']:g})  [{m['protocol_line']}, N train {m['n_train']}]"
        ]
    if m.get("note"):
        lines.append(f"memorisation note: {m['note']}")
    return lines
