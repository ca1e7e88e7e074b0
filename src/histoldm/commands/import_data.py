"""`histoldm import pathldm|folder`: bring existing patches into a patch store instead of tiling."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from histoldm.commands._common import add_command
from histoldm.errors import UserError
from histoldm.fileio import require_writable


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "import",
        "Import PathLDM's HDF5 + npz (mode pathldm) or a folder of images + CSV (mode folder).",
        "histoldm import pathldm data.h5 --npz train.npz --npz test.npz --out store",
        run,
    )
    p.add_argument("mode", choices=["pathldm", "folder"], help="pathldm: HDF5 + npz splits; folder: images + CSV")
    p.add_argument("source", type=Path, help="the HDF5 file (pathldm) or the image folder (folder)")
    p.add_argument("--out", type=Path, required=True, help="patch store folder to create (re-run into it to resume)")
    p.add_argument("--npz", type=Path, action="append", help="pathldm: train.npz / test.npz (repeatable)")
    p.add_argument(
        "--mpp", type=float, default=1.0, help="pathldm: microns per pixel of the patches (default 1.0 = 10x)"
    )
    p.add_argument(
        "--csv", type=Path, help="folder: CSV with path (and slide_id, case_id, x, y, mpp, prob_tumor, prob_til)"
    )


def run(args: argparse.Namespace) -> int:
    from histoldm.data.pathldm_import import import_folder, import_pathldm

    require_writable(args.out)  # as the stage shell checks every stage's output
    if args.mode == "pathldm":
        r = import_pathldm(args.source, args.out, args.npz, args.mpp)
    else:
        if not args.csv:
            raise UserError("import folder: --csv is required")
        r = import_folder(args.source, args.csv, args.out)
    print(f"{r['patches']} patches -> {r['store']}; {len(r['skipped'])} skipped")
    if r.get("tile_sizes"):
        sizes = ", ".join(f"{size} px ({n})" for size, n in r["tile_sizes"].items())
        print(
            f"tiles kept at their stored size, not resized: {sizes}; train a smaller model input on random crops with "
            "data.crop"
        )
    for s in r["skipped"][:10]:
        print(f"skipped: {s}")
    return 0
