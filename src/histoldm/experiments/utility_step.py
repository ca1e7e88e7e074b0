"""The demo's utility evaluation: training captions sampled by the trained model, then
`histoldm.evaluate.utility` against the real training and held-out patches.

The generated set comes from captions of training patches only (the held-out captions' samples serve
FID), so the probe's held-out real patches stay unseen by the generator and by every probe.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from histoldm.data.export import export_patches, split_items
from histoldm.evaluate.config import UtilityConfig
from histoldm.evaluate.utility import run_utility
from histoldm.experiments.chain import ChainResult, sample_held_out
from histoldm.experiments.config import ModelRecipe
from histoldm.fileio import atomic_write_jsonl

if TYPE_CHECKING:
    from histoldm.evaluate.utility import UtilityResult


def utility_step(
    work: Path,
    *,
    store: Path,
    split: Path,
    result: ChainResult,
    recipe: ModelRecipe,
    n_fake: int,
    groups: dict[str, str],
) -> UtilityResult:
    """Sample `n_fake` training captions (WORK/samples-train), export the real training patches at the
    model's size (WORK/real-train), run the utility evaluation (WORK/utility) with the evaluation's
    extractor settings; returns its UtilityResult."""
    work = Path(work)
    captions = result.captions_file
    items = split_items(captions, split, n_fake, recipe.seed, split_name="train")
    caption_list = work / "train-captions.jsonl"
    atomic_write_jsonl(caption_list, ({"id": r["patch_id"], "caption": r["caption"]} for r in items))
    fake = sample_held_out(
        result.train.run_dir, caption_list, work / "samples-train", recipe, recipe.seed, result.text_cache
    ).out
    train_real = export_patches(
        store,
        split_items(captions, split, None, recipe.seed, split_name="train"),
        work / "real-train",
        recipe.image_size,
    )
    evaluated = result.evaluate_config
    shared = {
        k: getattr(evaluated, k)
        for k in ("protocol", "resize", "extractor", "device", "dtype", "batch_size", "workers")
    }
    return run_utility(
        UtilityConfig(
            **shared,
            real=result.real,
            train_real=train_real,
            fake=fake,
            captions=captions,
            split=split,
            out=work / "utility",
            held_out_groups=groups,
        ),
        held_out_features=result.real_features,
    )  # extracted by the evaluation, same extractor and resize
