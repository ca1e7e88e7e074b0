"""Reading pathology reports from a TCGA-Reports CSV, a folder of .txt files, or JSONL.

Case ids are normalised to the 12-character TCGA patient barcode (`TCGA-BH-A0B3`) wherever one
appears in the name (TCGA-Reports names files `TCGA-BH-A0B3.<uuid>`), because captions, splits
and patches all join on the patient. Names without a barcode are kept as given (stripped).
Duplicates keep their first occurrence and are reported, never merged silently. Bytes that are
not UTF-8 are replaced (U+FFFD) and the case carries a warning.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from histoldm.data.store import case_id_of, safe_id
from histoldm.errors import UserError
from histoldm.fileio import require_file

_ID_COLUMNS = ("patient_filename", "case_id")


@dataclass
class Report:
    case_id: str
    text: str
    source: str  # where it came from: "file.csv:row 12", "folder/x.txt"
    warnings: list[str] = field(default_factory=list)


@dataclass
class LoadedReports:
    reports: list[Report]
    duplicates: list[dict[str, str]]  # {case_id, source, kept} for every dropped duplicate


def normalise_case_id(name: str) -> str:
    """The case id the tiling stage gives a slide of the same name, so reports and patches join: the
    12-character TCGA patient barcode (upper case) when present, else the name made file-safe."""
    name = name.strip()
    return case_id_of(safe_id(name)) if name else ""


def _decode(data: bytes, where: str) -> tuple[str, list[str]]:
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError as e:
        text = data.decode("utf-8-sig", errors="replace")
        return text, [
            f"{where}: not valid UTF-8 (first bad byte at offset {e.start}); undecodable bytes replaced by U+FFFD"
        ]


def _from_csv(path: Path) -> list[Report]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
        bad_rows_possible = False
    except UnicodeDecodeError:  # decode per row below, so only the affected cases get a warning
        if b"\x00" in raw[:8192]:  # NUL bytes: an image or archive, not a CSV with a few bad characters
            raise UserError(f"{path}: a binary file, not a CSV of reports") from None
        text = raw.decode("utf-8-sig", errors="surrogateescape")
        bad_rows_possible = True
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    id_column = next((c for c in _ID_COLUMNS if c in columns), None)
    if id_column is None or "text" not in columns:
        raise UserError(
            f"{path}: CSV needs columns 'patient_filename' (or 'case_id') and 'text'; "
            f"found {', '.join(columns) or 'none'}"
        )
    reports = []
    for row_number, row in enumerate(reader, start=2):
        where = f"{path.name}:row {row_number}"
        body, warnings = row.get("text") or "", []
        if bad_rows_possible:
            body, warnings = _decode(body.encode("utf-8", errors="surrogateescape"), where)
        reports.append(Report(normalise_case_id(row.get(id_column) or ""), body, where, warnings))
    return reports


def _from_folder(path: Path) -> list[Report]:
    reports = []
    for file in sorted(path.glob("*.txt")):
        body, warnings = _decode(file.read_bytes(), file.name)
        reports.append(Report(normalise_case_id(file.stem), body, str(file), warnings))
    if not reports:
        raise UserError(f"{path}: folder holds no .txt reports")
    return reports


def _from_jsonl(path: Path) -> list[Report]:
    reports = []
    for line_number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}:line {line_number}"
        decoded, warnings = _decode(line, where)
        try:
            record = json.loads(decoded)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{line_number}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict) or "case_id" not in record or "text" not in record:
            raise UserError(f"{path}:{line_number}: each line needs 'case_id' and 'text'")
        reports.append(Report(normalise_case_id(str(record["case_id"])), str(record["text"] or ""), where, warnings))
    return reports


def load_reports(path: Path) -> LoadedReports:
    """Reports from a CSV, a folder of .txt files or a JSONL file, deduplicated by case id."""
    path = require_file(Path(path), "report input")
    if path.is_dir():
        reports = _from_folder(path)
    elif path.suffix.lower() == ".csv":
        reports = _from_csv(path)
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        reports = _from_jsonl(path)
    else:
        raise UserError(f"{path}: expected a .csv, a .jsonl or a folder of .txt reports")
    seen: dict[str, Report] = {}
    duplicates = []
    for report in reports:
        if not report.case_id:
            report.case_id = f"unnamed-{report.source}"
            report.warnings.append(f"{report.source}: no case id; named {report.case_id}")
        if report.case_id in seen:
            duplicates.append({"case_id": report.case_id, "source": report.source, "kept": seen[report.case_id].source})
            continue
        seen[report.case_id] = report
    return LoadedReports(list(seen.values()), duplicates)
