"""The latent cache: every patch of a patch store encoded once, so training never runs the autoencoder.

    DIR/latents-00000.npy   float16 (n, C, H, W), memory-mappable, already multiplied by scaling_factor
    DIR/latents-00000.json  the patch ids of that shard's rows and the patches skipped in it
    DIR/index.parquet       patch_id, shard, row (written when every shard is done)
    DIR/meta.json           autoencoder, kind, scaling_factor, channels, size, fingerprint, complete

Resumable: the plan (patch order, shard size, autoencoder fingerprint, scaling factor) goes into
meta.json before the first shard; a re-run with the same plan skips finished shards. Each shard is
written atomically, so a kill loses at most the shard in progress.

Across processes (`accelerate launch -m histoldm.cli encode-latents ...`): process i of N encodes
shards i, i+N, ...; the main process then writes the index. Every shard holds the same patches and
is encoded in the same batches whatever N is, so the cache is the one a single process writes.

KL latents are scaled by 1/std measured over the first batches (as Stable Diffusion's 0.18215 was);
VQ latents keep PathLDM's scale 1.0.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from tqdm import tqdm

from histoldm.data.store import TABLE_NAME, PatchStore
from histoldm.devices import launched_processes, resolve_dtype
from histoldm.errors import UserError
from histoldm.fileio import atomic_write_bytes, atomic_write_json, check_settings, require_file
from histoldm.manifest import write_manifest
from histoldm.models.autoencoder import encode, load_autoencoder
from histoldm.train.config import EncodeLatentsConfig

META = "meta.json"
INDEX = "index.parquet"


def _shard_name(k: int) -> str:
    return f"latents-{k:05d}"


def _read_store(store: Path) -> tuple[list[str], list[Path]]:
    patches = PatchStore.open(store)
    if not len(patches):
        raise UserError(f"{store / TABLE_NAME}: no patches")
    return [str(x) for x in patches.patch_ids], patches.paths


class PatchImages(torch.utils.data.Dataset):
    """Decodes patch images to [-1, 1] tensors; a bad file yields ok=False instead of stopping the run.

    `size` resizes (PIL Lanczos) to size x size first: a model can work at a lower resolution than the
    stored patches (the CPU demo trains at 64 px on 256 px patches)."""

    def __init__(self, paths: list[Path], size: int | None = None):
        self.paths = paths
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            with Image.open(io.BytesIO(self.paths[i].read_bytes())) as im:
                im = im.convert("RGB")
                if self.size and im.size != (self.size, self.size):
                    im = im.resize((self.size, self.size), Image.Resampling.LANCZOS)
                arr = np.array(im, dtype=np.uint8)
            image = torch.from_numpy(arr).permute(2, 0, 1).float().div(127.5).sub(1.0)
            return image, True, ""
        except Exception as e:  # unreadable or missing image: recorded, skipped
            return torch.zeros(0), False, f"{type(e).__name__}: {e}"


def as_list(items):
    """Collate to a plain list: bad images stay visible as ok=False items."""
    return items


def image_batches(paths: list[Path], batch_size: int, workers: int, size: int | None = None):
    """Lists of (image, ok, error), decoded in worker processes ahead of the encoder."""
    return torch.utils.data.DataLoader(
        PatchImages(paths, size), batch_size=batch_size, num_workers=workers, collate_fn=as_list
    )


def _encode_batch(ae, items, first_shape, device, dtype, pin: bool):
    """Encode the readable images of one batch; returns (latents fp32 cpu, ok mask, errors)."""
    ok = [good and (first_shape is None or img.shape == first_shape) for img, good, _ in items]
    errors = [
        err or ("" if good else f"image shape differs from {tuple(first_shape)}")
        for (_, _, err), good in zip(items, ok)
    ]
    images = [img for (img, _, _), good in zip(items, ok) if good]
    if not images:
        return torch.zeros(0), ok, errors
    x = torch.stack(images)
    if pin:
        x = x.pin_memory()
    x = x.to(device, non_blocking=True)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        z = encode(ae, x)
    return z.float().cpu(), ok, errors


def _first_shape(paths: list[Path], size: int | None) -> torch.Size:
    for p in paths:
        image, good, _ = PatchImages([p], size)[0]
        if good:
            return image.shape
    raise UserError(f"{paths[0].parent}: no readable patch image")


def _measure_scale(ae, paths, cfg, shape, device, dtype, pin) -> float:
    """1/std of the first `scale_batches` batches of latents (unit-variance inputs for the UNet)."""
    sample = paths[: cfg.batch_size * cfg.scale_batches]
    zs = []
    for items in image_batches(sample, cfg.batch_size, 0, cfg.image_size):
        z = _encode_batch(ae, items, shape, device, dtype, pin)[0]
        if z.numel():
            zs.append(z)
    if not zs:
        raise UserError(f"{cfg.store}: no readable patch among the first {len(sample)} to measure the latent scale")
    return float(1.0 / torch.cat(zs).std().clamp_min(1e-8))


def _plan_hash(ids: list[str], shard_size: int) -> str:
    h = hashlib.sha256(f"{shard_size}\n".encode())
    for i in ids:
        h.update(i.encode() + b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class EncodeLatentsResult:
    """`histoldm encode-latents`, on the main process. With `shards_missing` > 0 (a process of this run
    stopped) the cache is unfinished: `latents` and `skipped` are 0 and a re-run finishes it."""

    out: Path
    latents: int
    skipped: int
    shards: int
    scaling_factor: float
    shards_missing: int = 0


def _shard_done(out: Path, k: int) -> bool:
    """Shard k is finished when both its files are (each is written atomically)."""
    return (out / f"{_shard_name(k)}.json").is_file() and (out / f"{_shard_name(k)}.npy").is_file()


def _write_shard(out: Path, k: int, ids: list[str], paths: list[Path], cfg, encode, scale: float, empty, bar) -> None:
    """Encode one shard's patches: its latents (scaled, float16; `empty`: one latent's shape) and the ids kept and
    skipped (with why), each file written atomically, the ids last."""
    chunks, kept, missed = [], [], []
    pos = 0
    for items in image_batches(paths, cfg.batch_size, cfg.workers, cfg.image_size):
        z, ok, errors = encode(items)
        if z.numel():
            chunks.append((z * scale).to(torch.float16).numpy())
        for j, (good, err) in enumerate(zip(ok, errors)):
            if good:
                kept.append(ids[pos + j])
            else:
                missed.append({"patch_id": ids[pos + j], "reason": err})
        pos += len(items)
        bar.update(len(items))
    array = np.concatenate(chunks) if chunks else np.zeros((0, *empty), np.float16)
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(out / f"{_shard_name(k)}.npy", buf.getvalue())
    atomic_write_json(out / f"{_shard_name(k)}.json", {"patch_ids": kept, "skipped": missed})


def _write_index(out: Path, n_shards: int) -> tuple[list[tuple[str, int, int]], list[dict]]:
    """index.parquet (patch_id, shard, row) over the finished shards; returns its rows and the skipped patches."""
    skipped: list[dict] = []
    index_rows: list[tuple[str, int, int]] = []
    for k in range(n_shards):
        done = json.loads((out / f"{_shard_name(k)}.json").read_text())
        index_rows += [(pid, k, row) for row, pid in enumerate(done["patch_ids"])]
        skipped += done["skipped"]
    table = pa.table(
        {
            "patch_id": [r[0] for r in index_rows],
            "shard": pa.array([r[1] for r in index_rows], pa.int32()),
            "row": pa.array([r[2] for r in index_rows], pa.int32()),
        }
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(out / INDEX, buf.getvalue())
    return index_rows, skipped


def _new_meta(cfg: EncodeLatentsConfig, ae, image_size: int, scale: float, plan: str, n_patches: int) -> dict:
    """meta.json of a cache that starts here: the autoencoder's contract, the plan, not complete yet."""
    return {
        "autoencoder": str(Path(cfg.vae).resolve()) if Path(cfg.vae).is_dir() else cfg.vae,  # found from any folder
        "kind": ae.kind,
        "scaling_factor": scale,
        "scaling_measured": ae.kind == "kl" and cfg.scaling_factor is None,
        "channels": ae.latent_channels,
        "size": image_size // ae.downsample,
        "image_size": image_size,
        "fingerprint": ae.fingerprint,
        "dtype": "float16",
        "plan": plan,
        "n_patches": n_patches,
        "complete": False,
    }


def run_encode_latents(cfg: EncodeLatentsConfig, procs=None) -> EncodeLatentsResult | None:
    """Encode every patch of the store once (this process's share of the shards under accelerate
    launch); the main process returns counts and the output folder, the others None. `procs`:
    histoldm.devices.Processes, default the processes this one was launched among."""
    started = time.time()
    ids, paths = _read_store(cfg.store)
    procs = procs or launched_processes(cfg.device, "encode-latents")
    device = procs.device
    dtype = resolve_dtype(cfg.precision, device, stage="encode-latents precision")
    pin = device.type == "cuda"
    ae = load_autoencoder(cfg.vae, device)
    shape = _first_shape(paths, cfg.image_size)
    plan = _plan_hash(ids, cfg.shard_size)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    # Plan: reuse a compatible unfinished cache (its scaling factor included), else start afresh.
    meta_path = out / META
    old = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    check_settings(
        meta_path,
        {"plan": plan, "fingerprint": ae.fingerprint, "image_size": shape[-1]},
        f"{out}: holds a latent cache of other patches, another autoencoder or another image size",
    )
    if old:
        scale = float(old["scaling_factor"])
    elif cfg.scaling_factor is not None:
        scale = cfg.scaling_factor
    elif ae.kind == "kl":  # measured on the main process; the others read it below
        scale = _measure_scale(ae, paths, cfg, shape, device, dtype, pin) if procs.is_main else float("nan")
    else:
        scale = float(getattr(ae.model.config, "scaling_factor", 1.0) or 1.0)
    meta = _new_meta(cfg, ae, shape[-1], scale, plan, len(ids))
    if not old and procs.is_main:
        atomic_write_json(meta_path, meta)
    procs.barrier()
    if not old and not procs.is_main:  # the main process's plan, measured scale included
        meta = json.loads(meta_path.read_text())
        scale = float(meta["scaling_factor"])

    # Encode: this process's shards, one at a time, each written atomically; finished shards are skipped.
    n_shards = (len(ids) + cfg.shard_size - 1) // cfg.shard_size
    mine = list(range(procs.rank, n_shards, procs.world))
    with tqdm(
        total=sum(min(len(ids), (k + 1) * cfg.shard_size) - k * cfg.shard_size for k in mine),
        desc="encode-latents",
        unit="patch",
        disable=not procs.is_main,
    ) as bar:
        encode = functools.partial(_encode_batch, ae, first_shape=shape, device=device, dtype=dtype, pin=pin)
        empty = (meta["channels"], meta["size"], meta["size"])
        for k in mine:
            lo, hi = k * cfg.shard_size, min(len(ids), (k + 1) * cfg.shard_size)
            if _shard_done(out, k):
                bar.update(hi - lo)
            else:
                _write_shard(out, k, ids[lo:hi], paths[lo:hi], cfg, encode, scale, empty, bar)
    procs.barrier()
    if not procs.is_main:
        return None
    missing = [k for k in range(n_shards) if not _shard_done(out, k)]
    if missing:  # a process of this run died, or ran alone with another rank: a re-run finishes the cache
        return EncodeLatentsResult(out, 0, 0, n_shards, scale, shards_missing=len(missing))

    # Finish: the index, then meta marked complete, then the manifest.
    index_rows, skipped = _write_index(out, n_shards)
    meta = json.loads(meta_path.read_text()) | {"complete": True, "n_latents": len(index_rows), "n_shards": n_shards}
    atomic_write_json(meta_path, meta)
    produced = {"latents": len(index_rows), "skipped": len(skipped), "shards": n_shards, "scaling_factor": scale}
    write_manifest(
        out / "manifest.json",
        stage="encode-latents",
        config=cfg,
        inputs={"store": cfg.store / "patches.parquet"},
        produced=produced,
        started=started,
        skipped=skipped,
    )
    return EncodeLatentsResult(out, len(index_rows), len(skipped), n_shards, scale)


class LatentCache:
    """Read side of the cache: memory-mapped shards, rows addressed by patch id or position."""

    def __init__(
        self,
        folder: Path,
        meta: dict,
        patch_ids: list[str],
        shard: np.ndarray,
        row: np.ndarray,
        shards: list[np.ndarray],
    ):
        self.folder, self.meta, self.patch_ids = folder, meta, patch_ids
        self.shard, self.row, self.shards = shard, row, shards

    @classmethod
    def open(cls, folder: Path) -> LatentCache:
        folder = Path(folder)
        meta_path = require_file(folder / META, "latent cache meta.json")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not meta.get("complete", False):
            raise UserError(f"{folder}: latent cache is incomplete (re-run encode-latents to finish it)")
        table = pq.read_table(require_file(folder / INDEX, "latent cache index"))
        shard = table.column("shard").to_numpy().astype(np.int64)
        n_shards = int(meta.get("n_shards", shard.max() + 1 if len(shard) else 0))
        shards = [
            np.load(require_file(folder / f"{_shard_name(k)}.npy", "latent shard"), mmap_mode="r")
            for k in range(n_shards)
        ]
        return cls(
            folder,
            meta,
            [str(x) for x in table.column("patch_id").to_pylist()],
            shard,
            table.column("row").to_numpy().astype(np.int64),
            shards,
        )

    def __len__(self) -> int:
        return len(self.patch_ids)

    def __getitem__(self, i: int) -> np.ndarray:
        """The scaled latent of entry i, float16 (C, H, W)."""
        return self.shards[self.shard[i]][self.row[i]]

    def positions(self) -> dict[str, int]:
        return {pid: i for i, pid in enumerate(self.patch_ids)}
