"""The run folder train and distill share: where it is, what a resumed run must match, what it started from.

RUN/config.json (the config of the latest session), RUN/contract.json (what a resume must share: the model and
the caches), RUN/init.json (train: the UNet's starting weights), RUN/stats.jsonl, RUN/checkpoints/, RUN/model/.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from histoldm.fileio import atomic_write_json, check_settings
from histoldm.models.bundle import save_bundle
from histoldm.train.checkpoint import clean_partial
from histoldm.train.init import compvis_init, load_init_weights, skipped_lines

CONTRACT = "contract.json"
INIT_FILE = "init.json"


def resolve_run_dir(cfg, stage: str = "train") -> Path:
    """The explicit run_dir, else the newest unfinished run of this name (auto-resume), else a new id.
    `cfg` is a TrainingRunConfig (name, runs_dir, run_dir, resume)."""
    if cfg.run_dir is not None:
        return Path(cfg.run_dir)
    runs = sorted(p for p in Path(cfg.runs_dir).glob("[0-9]" * 5 + "-*") if p.is_dir())
    mine = [p for p in runs if p.name[6:] == cfg.name and not (p / "manifest.json").is_file()]
    if mine and cfg.resume != "none":
        return mine[-1]
    next_id = int(runs[-1].name[:5]) + 1 if runs else 0
    new = Path(cfg.runs_dir) / f"{next_id:05d}-{cfg.name}"
    finished = [p for p in runs if p.name[6:] == cfg.name and (p / "manifest.json").is_file()]
    if finished and cfg.resume == "auto":  # say so: at full scale a silent restart repeats days of training
        print(
            f"{stage}: {finished[-1]} is finished; starting a new run {new.name} "
            f"(resume: {finished[-1]} continues that one)"
        )
    return new


def cache_contract(latent_meta: dict[str, Any], text_meta: dict[str, Any]) -> dict[str, Any]:
    """The part of a contract both stages share: the latent and text caches a run learns from."""
    return {
        "latents": {k: latent_meta.get(k) for k in ("fingerprint", "scaling_factor", "channels", "size")},
        "text_cache": {k: text_meta.get(k) for k in ("encoder", "fingerprint", "mode", "max_length")},
    }


def cache_inputs(data, resume_from: Path | None) -> dict[str, Any]:
    """The manifest's inputs both stages share: the caches' meta files, captions, split and the checkpoint
    resumed from. `data` is the config's data section (latents, text_cache, captions, split)."""
    return {
        "latents": Path(data.latents) / "meta.json",
        "text_cache": Path(data.text_cache) / "meta.json",
        "captions": data.captions,
        "split": data.split,
        "resumed_from": resume_from,
    }


def check_contract(checkpoint: Path | None, contract: dict[str, Any]) -> None:
    """Refuse, before any compute, to resume a run on another model or other caches (it would mix two)."""
    if checkpoint is None:
        return
    run_dir = Path(checkpoint).parent.parent  # RUN/checkpoints/step-XXXXXXXX
    check_settings(
        run_dir / CONTRACT,
        contract,
        f"{run_dir}: resuming with another model or other caches than the run was trained with",
        fix="give the run a new name (or resume: none)",
    )


def write_run_folder(run_dir: Path, cfg, contract: dict[str, Any], init: dict[str, Any] | None = None) -> None:
    """The run folder's records, on the main process: this session's config, the contract and (for a run
    that starts here) what its UNet started from. A partial checkpoint of a killed session is removed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    clean_partial(run_dir)
    atomic_write_json(run_dir / "config.json", cfg.model_dump(mode="json"))
    atomic_write_json(run_dir / CONTRACT, contract)
    if init is not None:
        atomic_write_json(run_dir / INIT_FILE, init)


def initialise(unet, model_cfg, resume_from: Path | None, run_dir: Path, say=print) -> dict[str, Any]:
    """The UNet's starting weights, chosen when a run starts; a resumed run's come from its checkpoint,
    and what it started from is read back from RUN/init.json for the manifest. `model_cfg`: train's model section."""
    if resume_from is not None:
        if model_cfg.init_from is not None:
            say(
                f"train: resuming {run_dir}; model.init_from ({model_cfg.init_from}) is read only when a run starts, "
                "ignored"
            )
        path = run_dir / INIT_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if model_cfg.init_from is not None:
        report = load_init_weights(model_cfg.init_from, unet).as_dict()
        listed = f" (each listed in {run_dir / INIT_FILE})" if report["skipped"] else ""
        say(
            f"train: UNet from {report['source']} ({report['kind']}): {report['loaded']} tensors loaded, "
            f"{len(report['skipped'])} skipped{listed}"
            + "".join(f"\n  {line}" for line in skipped_lines(report["skipped"]))
        )
        return report
    return {
        "source": "scratch",
        "init": model_cfg.init,
        "zeroed": compvis_init(unet) if model_cfg.init == "compvis" else 0,
    }


def report_training_data(cfg, patches: int, cases: int, stage: str = "train") -> None:
    """Say what the model learns from; without a split that includes the test cases, which would
    make every later evaluation on them meaningless, so it is said loudly."""
    if cfg.data.split is None:
        print(
            f"{stage}: WARNING: no data.split given: training on every captioned patch, test cases included "
            f"({patches} patches from {cases} cases); set data.split to a split.json to hold cases out",
            file=sys.stderr,
        )
    else:
        print(
            f"{stage}: {patches} training patches from {cases} cases "
            f"(split '{cfg.data.split_name}' of {cfg.data.split})"
        )


def export_bundle(folder: Path, meta, unet, ema) -> None:
    """Save the inference weights (EMA when on) as a model bundle, from a contiguous CPU copy."""
    from diffusers import UNet2DConditionModel

    state = ema.averaged_state_dict(unet) if ema is not None else unet.state_dict()
    export = UNet2DConditionModel.from_config(unet.config)
    export.load_state_dict({k: v.detach().cpu().contiguous() for k, v in state.items()})
    save_bundle(folder, meta, export)
