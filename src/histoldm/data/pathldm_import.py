"""Import instead of tiling: PathLDM's HDF5 + train/test npz, or a folder of images with a CSV.

PathLDM layout: HDF5 datasets `X` (JPEG bytes per row), `wsi` and `folder_name` (byte strings);
`train.npz` / `test.npz` with `indices` (HDF5 rows), `summaries` (wsi -> str or list of str),
`prob_tumor` and `prob_til` (wsi -> {folder_name -> prob}). The npz dictionaries are pickled
object arrays; they are read with an unpickler that only admits numpy's array reconstruction
(no other class can be created), never with np.load(allow_pickle=True).

Output in OUT (itself a patch store): patches.parquet + PNGs, scores.parquet, summaries.jsonl
(backend "pathldm-import"), split.json (method "given:pathldm-npz"), manifest.json.

Both imports resume (`_PatchWriter`): a re-run into the same OUT keeps the complete PNGs already there
(decoding and re-encoding is the whole cost) and rewrites the tables, which are cheap; `import.json`
records the inputs, and resuming from other inputs is refused.
"""

from __future__ import annotations

import csv
import io
import pickle
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from histoldm.data.scores import SCORE_COLUMNS, probability, write_scores
from histoldm.data.splits import split_json
from histoldm.data.store import case_id_of, image_relpath, patch_table, png_bytes, safe_id
from histoldm.errors import UserError
from histoldm.fileio import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    check_settings,
    read_text_input,
    require_file,
)
from histoldm.manifest import write_manifest
from histoldm.tables import write_parquet
from histoldm.text.tokenizer import count_tokens

_ALLOWED_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays/scalars and plain containers; refuses every other global (no code runs)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_npz_safely(path: Path) -> dict[str, Any]:
    """Every array of an npz; pickled object arrays go through the restricted unpickler, 0-d ones unwrapped."""
    require_file(path, "npz file")
    out: dict[str, Any] = {}
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                f = io.BytesIO(z.read(name))
                version = np.lib.format.read_magic(f)
                header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = header(f)
                if dtype.hasobject:
                    value = _ArrayOnlyUnpickler(f).load()
                else:
                    f.seek(0)
                    value = np.lib.format.read_array(f, allow_pickle=False)
                if isinstance(value, np.ndarray) and value.shape == () and value.dtype == object:
                    value = value.item()
                out[name.removesuffix(".npy")] = value
    except (zipfile.BadZipFile, ValueError, pickle.UnpicklingError, EOFError) as e:
        raise UserError(f"{path}: not a readable npz ({e})") from None
    return out


IMPORT_SETTINGS = "import.json"
_PNG_HEAD = b"\x89PNG\r\n\x1a\n"
_PNG_TAIL = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk every complete PNG ends with


def _file_identity(path: Path) -> dict[str, Any]:
    path = Path(path)
    return {"path": str(path.resolve()), "bytes": path.stat().st_size}


def _complete_png(path: Path) -> bool:
    """Starts and ends as a whole PNG does: a file cut short (a power cut, an older version's plain
    write) fails, so it is written again instead of kept."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(-12, 2)
            return head == _PNG_HEAD and f.read(12) == _PNG_TAIL
    except OSError:  # missing, or shorter than 12 bytes
        return False


class _PatchWriter:
    """Writes an import's PNGs so that a re-run into the same folder resumes.

    The inputs are checked against OUT/import.json before anything is written, and recorded with the
    first PNG (so a run that fails before writing one locks nothing). A re-run keeps the complete PNGs
    of the recorded import; a folder without a record (an older version's, or someone else's) is
    written over. Each PNG is written atomically.
    """

    def __init__(self, out: Path, settings: dict[str, Any]):
        self.out, self.settings, self.record = Path(out), settings, Path(out) / IMPORT_SETTINGS
        check_settings(self.record, settings, f"{out}: holds an import of other inputs")
        self.resuming = self.record.is_file()
        self.kept = 0

    def write_once(self, rel: str, make_png: Callable[[], bytes]) -> None:
        target = self.out / rel
        if self.resuming and _complete_png(target):
            self.kept += 1
            return
        data = make_png()
        if not self.record.is_file():
            atomic_write_json(self.record, self.settings)
        atomic_write_bytes(
            target, data, fsync=False
        )  # no fsync per patch: _complete_png catches what a power cut leaves


def _png_size(path: Path) -> str:
    """WIDTHxHEIGHT from a PNG's IHDR chunk (24 bytes read, no decode)."""
    with open(path, "rb") as f:
        head = f.read(24)
    return f"{int.from_bytes(head[16:20], 'big')}x{int.from_bytes(head[20:24], 'big')}"


def tile_sizes(out: Path, rows: list[dict[str, Any]]) -> dict[str, int]:
    """How many imported tiles have each size: imports keep tiles as stored (never resized), so a
    model with a smaller input trains on random crops (train `data.crop`), at the tiles' magnification."""
    counts: dict[str, int] = {}
    for r in rows:
        size = _png_size(out / r["path"])
        counts[size] = counts.get(size, 0) + 1
    return dict(sorted(counts.items()))


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _jpeg_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value)
    if isinstance(value, np.void):
        return value.tobytes()
    return np.asarray(value, dtype=np.uint8).tobytes()


class _Unreadable(Exception):
    """An input image that cannot be read or decoded: skipped and listed, the import goes on."""


def _png_of_row(images: Any, row: int) -> bytes:
    try:
        value = images[row]
    except (OSError, ValueError) as e:
        raise _Unreadable(f"HDF5 row unreadable ({e})") from None
    try:
        img = Image.open(io.BytesIO(_jpeg_bytes(value)))
        img.load()
    except (OSError, ValueError) as e:
        raise _Unreadable(f"unreadable JPEG ({e})") from None
    return png_bytes(img)


def _png_of_file(path: Path) -> bytes:
    try:
        with Image.open(path) as im:
            return png_bytes(im)
    except (OSError, ValueError) as e:
        raise _Unreadable(f"{type(e).__name__}: {e}") from None


def _summary_record(case_id: str, summary: str | list[str], source: str) -> dict[str, Any]:
    """A summaries.jsonl line as the summarize stage writes it; `variants` keeps multi-caption lists."""
    variants = [str(s) for s in summary] if isinstance(summary, (list, tuple, np.ndarray)) else None
    text = variants[0] if variants else str(summary)
    rec = {
        "case_id": case_id,
        "summary": text,
        "tokens": count_tokens(text),
        "budget": None,
        "backend": "pathldm-import",
        "model": None,
        "prompt_sha256": None,
        "attempts": 0,
        "status": "ok",
        "usage": None,
        "error": None,
        "source": source,
    }
    if variants and len(variants) > 1:
        rec["variants"] = variants
    return rec


def _row_splits(splits: dict[str, Any], n: int, skipped: list[dict[str, Any]]) -> dict[int, str]:
    """HDF5 row -> the split whose npz lists it (first split name wins); indices outside the file are skipped."""
    row_split: dict[int, str] = {}
    for name in sorted(splits):
        for i in np.asarray(splits[name]["indices"]).ravel().tolist():
            if not 0 <= int(i) < n:
                skipped.append({"split": name, "index": int(i), "reason": f"index outside the HDF5's {n} rows"})
                continue
            row_split.setdefault(int(i), name)
    return row_split


def _case_summaries(splits: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """case_id -> summary record: PathLDM keys summaries by slide; one report per case, first slide wins."""
    summaries: dict[str, dict[str, Any]] = {}
    for name in sorted(splits):
        for wsi, text in sorted((splits[name].get("summaries") or {}).items()):
            case = case_id_of(_text(wsi))
            summaries.setdefault(case, _summary_record(case, text, f"{name}.npz"))
    return summaries


def _case_splits(names: list[str], case_split_rows: dict[str, dict[str, int]]):
    """PathLDM splits by slide; a case whose slides fall in several splits goes where most of its patches
    are (ties: first split name) and is listed in `conflicts`. Returns (split -> cases, conflicts)."""
    groups: dict[str, list[str]] = {name: [] for name in names}
    conflicts = {}
    for case, per in sorted(case_split_rows.items()):
        best = sorted(per, key=lambda s: (-per[s], s))[0]
        groups[best].append(case)
        if len(per) > 1:
            conflicts[case] = sorted(per)
    return groups, conflicts


def import_pathldm(h5: Path, out: Path, npz: list[Path] | None = None, mpp: float = 1.0) -> dict[str, Any]:
    """Convert PathLDM data into a patch store with scores, summaries and the given split."""
    import h5py

    started = time.time()
    require_file(h5, "PathLDM HDF5")
    npz = list(npz or [])
    out = Path(out)
    splits = {Path(p).stem: read_npz_safely(p) for p in npz}
    writer = _PatchWriter(
        out, {"kind": "pathldm", "h5": _file_identity(h5), "npz": [_file_identity(p) for p in npz], "mpp": mpp}
    )
    for name, d in splits.items():
        if "indices" not in d:
            raise UserError(f"{name}.npz: no `indices` array (PathLDM split layout)")
    skipped: list[dict[str, Any]] = []
    try:
        f = h5py.File(h5, "r")
    except OSError as e:
        raise UserError(f"{h5}: not a readable HDF5 file ({e})") from None
    with f:
        missing = [k for k in ("X", "wsi", "folder_name") if k not in f]
        if missing:
            raise UserError(
                f"{h5}: no dataset {', '.join(repr(m) for m in missing)} (PathLDM layout: X, wsi, folder_name)"
            )
        n = len(f["X"])
        wsi_all = [_text(v) for v in f["wsi"][:]]
        folder_all = [_text(v) for v in f["folder_name"][:]]
        row_split = _row_splits(splits, n, skipped)
        rows_to_import = sorted(row_split) if splits else list(range(n))

        rows, scores, case_split_rows, seen = [], {}, {}, set()
        for i in tqdm(rows_to_import, desc="import pathldm", unit="patch"):
            wsi, folder = wsi_all[i], folder_all[i]
            slide_id, case_id = safe_id(wsi), case_id_of(wsi)
            patch_id = f"{slide_id}_{safe_id(folder)}"
            if patch_id in seen:
                skipped.append(
                    {
                        "index": i,
                        "patch_id": patch_id,
                        "reason": "duplicate patch_id (wsi and folder_name equal once made file-safe)",
                    }
                )
                continue
            rel = image_relpath(slide_id, patch_id)
            try:
                writer.write_once(rel, lambda i=i: _png_of_row(f["X"], i))
            except _Unreadable as e:
                skipped.append({"index": i, "patch_id": patch_id, "reason": str(e)})
                continue
            seen.add(patch_id)
            rows.append({"patch_id": patch_id, "slide_id": slide_id, "case_id": case_id, "mpp": mpp, "path": rel})
            split = row_split.get(i)
            if split:
                d = splits[split]
                scores[patch_id] = {c: _prob(d.get(c), wsi, folder) for c in ("prob_tumor", "prob_til")}
                case_split_rows.setdefault(case_id, {}).setdefault(split, 0)
                case_split_rows[case_id][split] += 1

    write_parquet(out / "patches.parquet", patch_table(rows))
    patch_ids = [r["patch_id"] for r in rows]
    write_scores(out / "scores.parquet", patch_ids, scores)

    summaries = _case_summaries(splits)
    atomic_write_jsonl(out / "summaries.jsonl", (summaries[c] for c in sorted(summaries)))

    produced: dict[str, Any] = {
        "patches": len(rows),
        "kept_from_earlier_run": writer.kept,
        "summaries": len(summaries),
        "tile_sizes": tile_sizes(out, rows),
    }
    if splits:
        groups, conflicts = _case_splits(sorted(splits), case_split_rows)
        atomic_write_text(
            out / "split.json",
            split_json(
                groups,
                method="given:pathldm-npz",
                seed=None,
                fractions=None,
                stratify_by=None,
                extra={"conflicts": conflicts},
            ),
        )
        produced.update({"split": {k: len(v) for k, v in groups.items()}, "split_conflicts": len(conflicts)})
    write_manifest(
        out / "manifest.json",
        stage="import-pathldm",
        config={"h5": str(h5), "npz": [str(p) for p in npz], "mpp": mpp},
        inputs={"h5": h5, **{Path(p).name: p for p in npz}},
        produced=produced,
        started=started,
        skipped=skipped,
    )
    return {"store": str(out), **produced, "skipped": skipped}


def _prob(table: Any, wsi: str, folder: str) -> float | None:
    """prob_tumor / prob_til lookup: wsi -> {folder_name -> p}; keys may be str or bytes."""
    if not isinstance(table, dict):
        return None
    per = table.get(wsi, table.get(wsi.encode()))
    if not isinstance(per, dict):
        return None
    p = per.get(folder, per.get(folder.encode()))
    return None if p is None else float(p)


def import_folder(images: Path, csv_path: Path, out: Path) -> dict[str, Any]:
    """A folder of patch images + CSV (`path` required; slide_id, case_id, x, y, mpp, prob_tumor, prob_til optional)."""
    started = time.time()
    images, out = Path(images), Path(out)
    reader = csv.DictReader(io.StringIO(read_text_input(csv_path, "patch CSV"), newline=""))
    if "path" not in (reader.fieldnames or []):
        raise UserError(f"{csv_path}: needs a `path` column (image path relative to {images})")
    records = list(reader)
    writer = _PatchWriter(out, {"kind": "folder", "images": str(images.resolve()), "csv": _file_identity(csv_path)})
    rows, scores, skipped = [], {}, []
    seen: set[str] = set()
    for line, rec in enumerate(tqdm(records, desc="import folder", unit="patch"), 2):
        src = images / rec["path"]
        slide_id = safe_id(rec.get("slide_id") or Path(rec["path"]).parent.name or "folder")
        patch_id = safe_id(rec.get("patch_id") or f"{slide_id}_{Path(rec['path']).stem}")
        if patch_id in seen:
            skipped.append({"line": line, "path": rec["path"], "reason": f"duplicate patch_id {patch_id}"})
            continue
        rel = image_relpath(slide_id, patch_id)
        try:
            x = int(float(rec["x"])) if rec.get("x") else None
            y = int(float(rec["y"])) if rec.get("y") else None
            mpp = float(rec["mpp"]) if rec.get("mpp") else None
            probs = {c: probability(rec.get(c)) for c in SCORE_COLUMNS}
            writer.write_once(rel, lambda src=src: _png_of_file(src))
        except (_Unreadable, ValueError) as e:
            reason = str(e) if isinstance(e, _Unreadable) else f"{type(e).__name__}: {e}"
            skipped.append({"line": line, "path": rec["path"], "reason": reason})
            continue
        seen.add(patch_id)
        rows.append(
            {
                "patch_id": patch_id,
                "slide_id": slide_id,
                "case_id": rec.get("case_id") or case_id_of(slide_id),
                "x": x,
                "y": y,
                "mpp": mpp,
                "path": rel,
            }
        )
        if any(v is not None for v in probs.values()):
            scores[patch_id] = probs
    write_parquet(out / "patches.parquet", patch_table(rows))
    if scores:
        write_scores(out / "scores.parquet", [r["patch_id"] for r in rows], scores)
    produced = {"patches": len(rows), "scored": len(scores), "kept_from_earlier_run": writer.kept}
    write_manifest(
        out / "manifest.json",
        stage="import-folder",
        config={"images": str(images), "csv": str(csv_path)},
        inputs={"csv": csv_path},
        produced=produced,
        started=started,
        skipped=skipped,
    )
    return {"store": str(out), **produced, "skipped": skipped}
