"""Small file helpers every stage shares: atomic writes, append-only JSONL, hashing.

Long jobs must never lose finished work or leave a half-written file under a final name, so
every final output goes through a temporary file in the same folder and os.replace.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from histoldm.errors import UserError


def umask_file_mode() -> int:
    """The mode a plain open() would give a new file: 0666 minus the process umask. mkstemp makes
    0600 files, which on a shared server would hide every output from the rest of the lab."""
    try:  # Linux reports the umask without changing it (os.umask would race with other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def follow_umask(path: Path) -> None:
    """Give a file, or every file under a folder, the umask's mode: safetensors' save_file (so also
    save_pretrained) writes 0600 files whatever the umask."""
    path = Path(path)
    mode = umask_file_mode()
    for p in [path] if path.is_file() else (q for q in path.rglob("*") if q.is_file()):
        os.chmod(p, mode)


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` (mode following the umask) for a writer that needs a file name;
    renamed over `path` when the block ends cleanly, removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, umask_file_mode())
        os.close(fd)
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(folder: Path) -> int:
    """Delete the temporary files (`.NAME.*.tmp`) that atomic_output leaves when its process is killed;
    returns how many. Only for a folder no other process is writing into at the moment."""
    stale = [p for p in Path(folder).rglob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def atomic_write_bytes(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write data to path so that readers see either the old file or the whole new one.
    fsync=False still survives a killed process (the rename is atomic), not a power cut: for the
    many small files of a resumable job, where one fsync each would dominate the run."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def jsonl_text(records: Iterable[dict[str, Any]]) -> str:
    """One JSON object per line, keys sorted so equal records give equal files."""
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)


def atomic_write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Write a whole JSONL file at once: readers see the old file or the new one, never a mix."""
    atomic_write_text(path, jsonl_text(records))


def settings_changes(path: Path, current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """key -> (recorded, current) for the settings that differ from those recorded in the JSON file
    `path` (none when nothing is recorded yet): what resuming an output made with them would mix.
    Keys the record predates are not compared, so outputs of an older version stay resumable."""
    path = Path(path)
    if not path.is_file():
        return {}
    recorded = json.loads(path.read_text(encoding="utf-8"))
    return {k: (recorded[k], v) for k, v in current.items() if k in recorded and recorded[k] != v}


def changes_text(changes: dict[str, tuple[Any, Any]]) -> str:
    """'key old -> new, ...' in key order; a changed section (a dict) names the entries that differ in it."""
    parts = []
    for key, (old, new) in sorted(changes.items()):
        if isinstance(old, dict) and isinstance(new, dict):
            inner = {k: (old.get(k), new.get(k)) for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
            parts.append(", ".join(f"{key}.{k} {a} -> {b}" for k, (a, b) in sorted(inner.items())))
        else:
            parts.append(f"{key} {old} -> {new}")
    return ", ".join(parts)


def check_settings(path: Path, settings: dict[str, Any], mismatch: str, fix: str = "choose another --out") -> None:
    """Stop with one line (`mismatch`, what changed, then `fix`) when the settings recorded in `path` differ:
    resuming that output with these would mix the two."""
    if changes := settings_changes(path, settings):
        raise UserError(f"{mismatch} ({changes_text(changes)}); {fix}")


def record_or_check_settings(path: Path, settings: dict[str, Any], mismatch: str, record: bool = True) -> None:
    """First run: record settings in `path` (when `record`: the main one of several processes). A re-run that
    resumes: `check_settings`."""
    check_settings(path, settings, mismatch)
    if record and not Path(path).is_file():
        atomic_write_json(path, settings)


def repair_torn_tail(path: Path) -> None:
    """Cut a line torn by a crash mid-append, so the next append starts on a line of its own.

    Only the last byte is read unless the file is torn, so calling it before every append is cheap."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
    data = path.read_bytes()
    torn_line = data.count(b"\n") + 1
    print(f"warning: {path}:{torn_line}: cut a torn last line (left by an interrupted write)", file=sys.stderr)
    with open(path, "r+b") as f:
        f.truncate(data.rfind(b"\n") + 1)


def append_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records and flush them to disk: a crash loses nothing already appended, and a line
    torn by an earlier crash is cut first instead of corrupting the next record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_torn_tail(path)
    with open(path, "a", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path, *, skip_torn_last_line: bool = True) -> Iterator[dict[str, Any]]:
    """Read JSONL; a torn final line (a crash mid-append) is skipped, any other bad line is an error."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    lines = read_text_input(path, "JSONL file").splitlines(keepends=True)
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as e:
            if skip_torn_last_line and i == len(lines) and not line.endswith("\n"):
                print(f"warning: {path}:{i}: ignored a torn last line (left by an interrupted write)", file=sys.stderr)
                return
            raise UserError(f"{path}:{i}: not valid JSON ({e.msg})") from None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_path(path: Path) -> str:
    """sha256 of a file's bytes, or of a folder's listing (relative path and size of every file).

    A folder of millions of patches is identified by its listing, not its content: hashing every
    byte would cost more than the stage itself. Manifests say which kind of hash they hold.
    """
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(path).as_posix()}\t{p.stat().st_size}\n".encode())
    return h.hexdigest()


def read_text_input(path: Path, what: str = "input") -> str:
    """A user's text file as str; a binary or non-UTF-8 file is a one-line error naming it."""
    path = require_file(path, what)
    if path.is_dir():
        raise UserError(f"{path}: {what} is a folder, expected a file")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: {what} is not UTF-8 text (undecodable byte at offset {e.start})") from None


def require_file(path: Path, what: str = "input") -> Path:
    """Fail early, with one line, when an input file is missing."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: {what} not found")
    return path


def require_writable(path: Path, what: str = "output") -> Path:
    """Fail early, with one line naming `path` as typed, when nothing can be written there: the folder
    itself when it exists, else the nearest existing folder above it must be one this user can write in.
    A read-only mount, an immutable folder or missing rights all read alike (os.access)."""
    path = Path(path)
    target = path.absolute() if path.is_dir() else path.absolute().parent
    folder = next((p for p in (target, *target.parents) if p.exists()), None)
    if folder is None:
        return path
    if not folder.is_dir():
        raise UserError(f"{path}: cannot write the {what} there ({_as_typed(folder, path)} is a file)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{path}: cannot write the {what} there ({_as_typed(folder, path)} is not writable)")
    return path


def _as_typed(folder: Path, path: Path) -> Path:
    """`folder` spelled as the user spelled `path` (relative stays relative) where it is one of its ancestors."""
    for candidate in (path, *path.parents):
        if candidate.absolute() == folder:
            return candidate
    return folder


def require_output_file(path: Path, what: str = "output file") -> Path:
    """Fail early, with one line naming the path as typed, when an output file cannot be written there:
    checked before the compute, not discovered at the final atomic write (which would name a temp file)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: {what} is an existing folder; give a file path")
    return require_writable(path, what)


def require_output_folder(path: Path, what: str = "output folder") -> Path:
    """`require_output_file` for an output folder: an existing file or an unwritable place is refused early."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: {what} is an existing file; give a folder")
    return require_writable(path, what)
