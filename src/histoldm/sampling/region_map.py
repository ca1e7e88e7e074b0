"""Label maps of `sample-region`: a tumour and a TIL level per window, read and checked before compute.

A cell is `TUMOR/TIL`, each a level name (`--levels`, default low, high) or `-` (the caption leaves
that part out, as `captions` does for a patch without that score). Sources:

- CSV: one row per window row, one cell per window column, e.g. `high/low,high/high`;
- PNG: one pixel per window, red = tumour and green = TIL probability x 255, turned into levels with
  PathLDM's rule (`histoldm.data.scores.levels_of`);
- a constant level for every window (`--level high/low`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from histoldm.data.captions import fill_template
from histoldm.data.scores import levels_of
from histoldm.errors import UserError
from histoldm.fileio import read_text_input, require_file

MISSING = "-"


@dataclass(frozen=True)
class LabelMap:
    """Rows of `TUMOR/TIL` cells; `source` names where they came from (for messages and the index)."""

    cells: tuple[tuple[str, ...], ...]
    source: str

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.cells), len(self.cells[0])

    def levels(self, i: int, j: int) -> tuple[str | None, str | None]:
        tumor, til = self.cells[i][j].split("/")
        return (None if tumor == MISSING else tumor), (None if til == MISSING else til)


def _cell(text: str, levels: list[str], where: str) -> str:
    """A cell checked against the level names; anything else is a UserError naming the cell."""
    parts = [p.strip() for p in text.strip().split("/")]
    known = [*levels, MISSING]
    if len(parts) != 2 or any(p not in known for p in parts):
        raise UserError(f"{where}: cell {text.strip()!r} is not TUMOR/TIL with levels from {', '.join(known)}")
    return "/".join(parts)


def read_label_map(path: Path, levels: list[str]) -> LabelMap:
    """A CSV or PNG label map (module docstring)."""
    path = require_file(Path(path), "label map")
    if path.suffix.lower() == ".png":
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
        cells = tuple(tuple(f"{levels_of(px[0], levels)}/{levels_of(px[1], levels)}" for px in row) for row in rgb)
        return LabelMap(cells, str(path))
    rows = [r for r in csv.reader(io.StringIO(read_text_input(path, "label map"))) if any(c.strip() for c in r)]
    if not rows:
        raise UserError(f"{path}: label map has no cells")
    if len({len(r) for r in rows}) != 1:
        raise UserError(f"{path}: label map rows have different lengths ({sorted({len(r) for r in rows})})")
    return LabelMap(
        tuple(tuple(_cell(c, levels, f"{path} row {i + 1}") for c in r) for i, r in enumerate(rows)), str(path)
    )


def constant_map(level: str, levels: list[str], shape: tuple[int, int]) -> LabelMap:
    cell = _cell(level, levels, f"--level {level}")
    return LabelMap(tuple(tuple(cell for _ in range(shape[1])) for _ in range(shape[0])), f"constant {cell}")


def check_map_shape(label_map: LabelMap, shape: tuple[int, int], what: str) -> None:
    """The map must have one cell per window of the region (`what` says which region, in words)."""
    if label_map.shape != shape:
        raise UserError(
            f"{label_map.source}: label map is {label_map.shape[0]}x{label_map.shape[1]} cells; "
            f"{what} has {shape[0]}x{shape[1]} windows (one cell per window)"
        )


def window_caption(template: str, label_map: LabelMap, i: int, j: int, summary: str | None) -> str:
    """The caption of window (i, j), built like a training caption (`histoldm.data.captions`)."""
    tumor, til = label_map.levels(i, j)
    return fill_template(template, {"tumor": tumor, "til": til, "summary": summary or None})


def map_picture(cells: list[list[str]], levels: list[str], cell_px: int = 16):
    """The map as a PIL image for reports: red = tumour level, green = TIL level (0 = lowest, 255 =
    highest, dark grey = left out), one `cell_px` square per window."""

    def value(level: str) -> int:
        return 40 if level == MISSING else round(255 * levels.index(level) / (len(levels) - 1))

    rgb = np.array(
        [[[value(c.split("/")[0]), value(c.split("/")[1]), 0] for c in row] for row in cells], dtype=np.uint8
    )
    return Image.fromarray(rgb).resize((rgb.shape[1] * cell_px, rgb.shape[0] * cell_px), Image.NEAREST)
