"""Training data from caches only: latent rows joined to caption-embedding rows by patch id.

captions.parquet (patch_id, case_id, caption) x split.json (cases of the chosen split) x latent
cache (patch_id) x text cache (caption -> row). The trainer gets (latent, text rows) items and looks
the embeddings up itself, so the text table can live on the GPU once instead of travelling per batch.

Randomness at training time (random crops, the caption of a patch with several, dihedral augmentation,
guidance dropout, the objective's noise) is drawn from generators seeded by (seed, micro-batch position,
rank), one named `Stream` per kind of draw, and the sampler's order from (seed, epoch): a resumed run sees
exactly the batches and draws of an uninterrupted one. `micro_batches` turns loader items into model input.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import numpy as np
import torch

from histoldm.data.splits import load_split
from histoldm.errors import UserError
from histoldm.tables import read_parquet
from histoldm.text.cache import TextCache
from histoldm.train.latents import LatentCache


class TextTable:
    """The text cache (histoldm.text.cache) as the trainer needs it: one (N + 1, L, D) table whose
    last row is the empty caption, and caption -> row."""

    def __init__(self, folder: Path):
        self.cache = TextCache.open(folder)
        self.meta = self.cache.meta
        self.embeddings, self.uncond = self.cache.embeddings, self.cache.uncond
        self.dim = int(self.embeddings.shape[-1])

    def row_of(self, caption: str) -> int | None:
        return self.cache.row(caption) if caption in self.cache else None

    def table_with_uncond(self) -> torch.Tensor:
        """(N + 1, L, D): row N is the empty caption, the target of guidance dropout."""
        return torch.cat([self.embeddings, self.uncond.to(self.embeddings.dtype)])

    @property
    def uncond_row(self) -> int:
        return int(self.embeddings.shape[0])


def _split_cases(split_path: Path, split: str) -> set[str]:
    assigned = load_split(split_path)
    cases = {str(c) for c, name in assigned.items() if name == split}
    if not cases:
        raise UserError(
            f"{split_path}: no cases in split '{split}' (has {', '.join(sorted(set(assigned.values()))) or 'none'})"
        )
    return cases


class LatentTextDataset(torch.utils.data.Dataset):
    """Items are (latent float32 (C, H, W), the patch's text rows (K,) padded with -1, how many).
    A patch with several caption rows (several summaries of its case) is one item: the trainer draws
    one of its captions per read (`pick_captions`). `skipped` counts caption rows left out and why;
    `cases` is how many cases the pairs come from."""

    def __init__(
        self, latents: LatentCache, text: TextTable, captions_path: Path, split_path: Path | None, split: str = "train"
    ):
        table = read_parquet(captions_path, "captions file", ["patch_id", "case_id", "caption"]).to_pydict()
        cases = _split_cases(split_path, split) if split_path else None
        position = latents.positions()
        self.latents = latents
        rows_of: dict[int, list[int]] = {}
        self.skipped = {"other_split": 0, "no_latent": 0, "empty_caption": 0, "caption_not_in_text_cache": 0}
        self.missing_captions: set[str] = set()  # captions encode-text has not cached (captions re-made since?)
        used_cases: set[str] = set()
        for pid, case, caption in zip(table["patch_id"], table["case_id"], table["caption"]):
            if cases is not None and str(case) not in cases:
                self.skipped["other_split"] += 1
            elif str(pid) not in position:
                self.skipped["no_latent"] += 1
            elif not (isinstance(caption, str) and caption.strip()):  # encode-text skips it: no caption to learn
                self.skipped["empty_caption"] += 1
            elif text.row_of(caption) is None:
                self.skipped["caption_not_in_text_cache"] += 1
                self.missing_captions.add(caption)
            else:
                rows = rows_of.setdefault(position[str(pid)], [])
                if text.row_of(caption) not in rows:
                    rows.append(text.row_of(caption))
                used_cases.add(str(case))
        self.cases = len(used_cases)
        if not rows_of:
            raise UserError(f"{captions_path}: no training pairs (skipped: {self.skipped})")
        self.index = list(rows_of)
        self.counts = torch.tensor([len(r) for r in rows_of.values()])
        width = int(self.counts.max())
        self.rows = torch.tensor([r + [-1] * (width - len(r)) for r in rows_of.values()])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.array(self.latents[self.index[i]], dtype=np.float32)), self.rows[i], self.counts[i]


def pick_captions(rows: torch.Tensor, counts: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One caption row per item, uniformly among its `counts` candidates (PathLDM's multiple-captions
    variant draws one summary per read); items with one caption get it."""
    choice = (torch.rand(counts.shape, generator=gen, device=counts.device) * counts).long().clamp_max(counts - 1)
    return rows.gather(1, choice[:, None])[:, 0]


class ResumableSampler(torch.utils.data.Sampler):
    """Infinite batches of indices for one rank: epoch e is a permutation seeded by (seed, e), dealt
    round-robin to ranks, cut into per-rank batches; `start` skips that many batches (resume)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, start: int = 0):
        self.per_rank = n // world
        self.batches_per_epoch = self.per_rank // batch_size
        if self.batches_per_epoch == 0:
            raise UserError(f"dataset: {n} pairs are too few for batch size {batch_size} on {world} process(es)")
        self.n, self.batch_size, self.seed, self.rank, self.world, self.start = n, batch_size, seed, rank, world, start

    def __iter__(self) -> Iterator[list[int]]:
        epoch, offset = divmod(self.start, self.batches_per_epoch)
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            mine = torch.randperm(self.n, generator=g)[self.rank :: self.world][: self.per_rank].tolist()
            for b in range(offset, self.batches_per_epoch):
                yield mine[b * self.batch_size : (b + 1) * self.batch_size]
            epoch, offset = epoch + 1, 0


class Stream(IntEnum):
    """The independent random streams of one micro-batch (`step_generator`'s `stream`). Each draw has its own,
    so caption dropout and flips, say, are not correlated; the numbers are part of every run's random draws."""

    NOISE = 0  # train: flips, then the objective's timesteps and noise (one generator, in that order)
    DROPOUT = 1  # guidance dropout: a caption becomes the empty caption
    CROP = 2  # random crop offsets (CPU)
    CAPTION = 3  # which of a patch's captions (CPU)
    CONSISTENCY = 4  # distill: the objective's timesteps, guidance scales and noise
    FLIPS = 5  # distill: flips, apart from the objective's draws


def step_generator(seed: int, draw: int, rank: int, device: torch.device, stream: int = Stream.NOISE):
    """The one source of per-micro-batch randomness: a generator seeded by (seed, draw, rank, stream), `draw`
    being the micro-batch's position in the run (the data position), so a resumed run draws the same."""
    return torch.Generator(device=device).manual_seed(
        (((seed * 1_000_003 + draw) * 1_009 + rank) * 17 + int(stream)) % 2**63
    )


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch as the model takes it."""

    latents: torch.Tensor  # (B, C, window, window) float32 on the device: cropped, augmented, in the memory format
    context: torch.Tensor  # (B, L, D) float32 caption embeddings (guidance dropout applied)
    gen: torch.Generator  # the objective's draws, on the device


@dataclass(frozen=True)
class BatchRecipe:
    """How a loader's items (latents, caption rows, counts) become micro-batches: the per-draw randomness
    (`Stream`s seeded by seed, draw and rank) and where the tensors go."""

    seed: int
    rank: int
    device: torch.device
    window: int  # latent crop size (the stored size: no crop)
    augment: str  # none | flips | dihedral
    memory_format: torch.memory_format
    uncond_row: int
    uncond_prob: float | None  # guidance dropout; None: every caption kept (no draw)
    preload_text: bool  # the caption table is on the device (else rows are gathered on the host)
    noise_stream: Stream = Stream.NOISE
    flips_stream: Stream = Stream.NOISE  # the same stream as the noise: one generator, flips drawn first


def micro_batches(items: Iterable, table: torch.Tensor, recipe: BatchRecipe, start: int) -> Iterator[MicroBatch]:
    """The loader's items as micro-batches, the first at data position `start`: caption pick, guidance
    dropout, crop and flips each drawn from the micro-batch's own stream, then the embeddings looked up."""
    r = recipe
    cpu = torch.device("cpu")
    for draw, (lat, rows, counts) in enumerate(items, start):
        generator = functools.partial(step_generator, r.seed, draw, r.rank)  # (device, stream): this draw's
        gen = generator(r.device, r.noise_stream)
        rows = pick_captions(rows, counts, generator(cpu, Stream.CAPTION))
        if r.uncond_prob is not None:
            rows = drop_captions(rows, r.uncond_row, r.uncond_prob, generator(cpu, Stream.DROPOUT))
        lat = random_crop(lat.to(r.device, non_blocking=True), r.window, generator(cpu, Stream.CROP))
        if r.augment != "none":
            flips = gen if r.flips_stream == r.noise_stream else generator(r.device, r.flips_stream)
            lat = augment_dihedral(lat, flips, transpose=r.augment == "dihedral")
        lat = lat.contiguous(memory_format=r.memory_format)
        # A table on the device is indexed there; one on the host is indexed, then the rows are copied.
        context = table[rows.to(r.device, non_blocking=True)] if r.preload_text else table[rows]
        yield MicroBatch(lat, context.to(r.device, non_blocking=True).float(), gen)


def augment_dihedral(latents: torch.Tensor, gen: torch.Generator, transpose: bool = True) -> torch.Tensor:
    """Random flips (and transposes) per sample: with `transpose` the 8 symmetries of the square,
    uniformly (flips + rot90); without it PathLDM's horizontal and vertical flips.

    Applied to latents, this approximates the same augmentation of the images: the autoencoder is
    convolutional but not exactly equivariant, so a flipped latent decodes to nearly (not exactly)
    the flipped image. Tissue has no preferred orientation, so the approximation is harmless.
    """
    b = latents.shape[0]
    draws = torch.rand(3, b, 1, 1, 1, generator=gen, device=latents.device) < 0.5
    latents = torch.where(draws[0], latents.flip(-1), latents)
    latents = torch.where(draws[1], latents.flip(-2), latents)
    return torch.where(draws[2], latents.transpose(-1, -2), latents) if transpose else latents


def crop_window(latent_meta: dict, crop: int | None) -> int:
    """The latent window a `crop` of pixels is: the model's input size. Crops lie on the autoencoder's
    stride (a latent cell is stride x stride pixels), so they are checked against it here."""
    size = int(latent_meta["size"])
    if crop is None:
        return size
    if not latent_meta.get("image_size"):
        raise UserError(
            "data.crop: the latent cache does not record its image size (an older encode-latents); re-encode it to crop"
        )
    image_size = int(latent_meta["image_size"])
    stride = image_size // size
    if crop % stride or crop > image_size:
        raise UserError(
            f"data.crop: {crop} px is not a multiple of the autoencoder's stride {stride} "
            f"no larger than the stored {image_size} px"
        )
    return crop // stride


def random_crop(latents: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """A size x size window per sample at a uniformly drawn offset (PathLDM's random crop of a larger
    tile, taken in latent space: pixel offsets on the autoencoder's stride). `gen` is a CPU
    generator, so the offsets cost no device sync; the slicing runs wherever `latents` are."""
    b, _, h, w = latents.shape
    if (h, w) == (size, size):
        return latents
    ys = torch.randint(0, h - size + 1, (b,), generator=gen).tolist()
    xs = torch.randint(0, w - size + 1, (b,), generator=gen).tolist()
    return torch.stack([latents[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(zip(ys, xs))])


def drop_captions(rows: torch.Tensor, uncond_row: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """Classifier-free guidance dropout: each caption becomes the empty caption with probability p."""
    drop = torch.rand(rows.shape, generator=gen, device=rows.device) < p
    return torch.where(drop, torch.full_like(rows, uncond_row), rows)
