"""Parquet tables, the file contract between stages: atomic writes and one-line read errors.

Below every stage: the patch store, captions, scores and the text cache all speak Parquet.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from histoldm.errors import UserError
from histoldm.fileio import atomic_write_bytes


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def write_parquet(path: Path, table: pa.Table) -> None:
    """Atomic Parquet write: a reader never sees half a table."""
    atomic_write_bytes(Path(path), parquet_bytes(table))


def read_parquet(path: Path, what: str, columns: list[str] | None = None) -> pa.Table:
    """A Parquet input with one-line errors: missing, not Parquet, or lacking a needed column."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"{path}: {what} is not a readable Parquet file ({e})") from None
    missing = [c for c in columns or [] if c not in schema.names]
    if missing:
        raise UserError(f"{path}: {what} lacks column(s) {', '.join(missing)} (has {', '.join(schema.names)})")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise UserError(f"{path}: {what} is not a readable Parquet file ({e})") from None
