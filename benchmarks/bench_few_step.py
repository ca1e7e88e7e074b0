"""Which sampler setting holds DDIM-50's quality at fewer UNet passes? Every setting against the REAL
held-out patches, beside DDIM-50's own seed-to-seed floor at the same N, on two seeds.

For each setting and seed, `histoldm sample` draws the held-out captions (each `--repeat` times, under ids
id-r0, id-r1, ...: per-image seeds come from (seed, id)); `histoldm evaluate` compares the set with the real
held-out patches (FID, KID, precision/recall, condition adherence; evaluate's default protocol, each set's
Inception features extracted once) and, as a second column labelled "same noise", FID against DDIM-50 with
the same seed. The floor is the FID / KID between DDIM-50 seed 0
and seed 1 (histoldm.evaluate.noise_floor): two draws of one distribution. A setting whose FID and KID
against the real patches lie within DDIM-50's own two seeds (and within the floor of each other) is not
measurably worse than DDIM-50 at this N.

Settings with the `turbo` preset sample the student (`--student`, made by `histoldm distill`); the others
the teacher. An existing sample folder (e.g. the demo's own DDIM-50 sets) can stand in for a setting and seed
(`--reuse ddim50:0=DIR`): its settings.json must say the same solver, steps, guidance and seed; its wall
time per image then comes from its manifest. `--timing ddim50,turbo4` instead times the settings on the same
few images, interleaved (median of 3 rounds), to OUT/timing.json. Results are appended to OUT/results.jsonl as
each set finishes (a re-run skips finished sets) and the table written to OUT/few_step.md.

    nice -n 10 python -u benchmarks/bench_few_step.py --teacher DEMO/model/run/model --student RUN/model \\
        --captions DEMO/model/held-out-captions.jsonl --text-cache DEMO/model/text-cache \\
        --real DEMO/model/real-held-out --captions-parquet DEMO/model/captions.parquet \\
        --reuse ddim50:0=DEMO/model/samples --reuse ddim50:1=DEMO/model/samples-seed1 --out /tmp/few_step
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

INTERVAL = (44, 634)  # the fast preset's guidance interval
SETTINGS = {  # name -> SampleConfig fields
    "turbo8": {"preset": "turbo", "steps": 8},
    "turbo4": {"preset": "turbo", "steps": 4},
    "turbo4 g1.75": {"preset": "turbo", "steps": 4, "guidance": 1.75},  # the teacher's scale, as an input
    "turbo2": {"preset": "turbo", "steps": 2},
    "turbo1": {"preset": "turbo", "steps": 1},
    "ddim50": {"preset": "paper"},
    "fast": {"preset": "fast"},
    "dpm++12": {"solver": "dpmpp", "steps": 12},
    "dpm++10": {"solver": "dpmpp", "steps": 10},
    "dpm++8": {"solver": "dpmpp", "steps": 8},
    "unipc10": {"solver": "unipc", "steps": 10},
    "unipc8": {"solver": "unipc", "steps": 8},
    "unipc6": {"solver": "unipc", "steps": 6},
    "unipc10 interval": {"solver": "unipc", "steps": 10, "guidance_interval": INTERVAL},
    "unipc8 interval": {"solver": "unipc", "steps": 8, "guidance_interval": INTERVAL},
    "unipc6 interval": {"solver": "unipc", "steps": 6, "guidance_interval": INTERVAL},
}


def image_paths(folder: Path) -> list[Path]:
    """A sample folder's images (its index, not its grid) or an export folder's."""
    from histoldm.evaluate import features as F
    from histoldm.evaluate.run import fake_image_paths

    return fake_image_paths(folder) if (Path(folder) / "index.jsonl").is_file() else F.list_images(folder)


def image_size(folder: Path) -> str:
    """WxH of the folder's first image (the images of a sample or export folder share one size)."""
    from PIL import Image

    with Image.open(image_paths(folder)[0]) as im:
        return f"{im.width}x{im.height}"


def repeated_captions(captions: Path, repeat: int, out: Path) -> Path:
    """Every caption `repeat` times under ids id-r0, id-r1, ... (repeat 1: the ids as they are)."""
    from histoldm.sampling.captions_io import read_caption_items

    items, _ = read_caption_items(captions)
    path = out / "captions_repeated.jsonl"
    rows = [
        {"id": it.id if repeat == 1 else f"{it.id}-r{k}", "caption": it.caption} for it in items for k in range(repeat)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sample_set(name: str, seed: int, args, captions: Path) -> dict:
    """Sample (or reuse) one set; its folder, UNet passes and wall seconds per image."""
    from histoldm.sampling.config import SampleConfig
    from histoldm.sampling.run import run_sample
    from histoldm.sampling.solvers import passes_per_image

    fields = SETTINGS[name]
    bundle = args.student if fields.get("preset") == "turbo" else args.teacher
    reuse = args.reuse.get(f"{name}:{seed}")
    out = Path(reuse) if reuse else args.out / f"{name.replace(' ', '_')}-seed{seed}"
    cfg = SampleConfig(
        checkpoint=bundle, captions=captions, text_cache=args.text_cache, out=out, seed=seed, device="cpu", **fields
    )
    if reuse:
        settings = json.loads((out / "settings.json").read_text())
        wanted = {"solver": cfg.solver, "steps": cfg.steps, "guidance": cfg.guidance, "seed": seed}
        if {k: settings.get(k) for k in wanted} != wanted:
            raise SystemExit(f"--reuse {name}:{seed}={reuse}: its settings.json is not {wanted}")
        manifest = json.loads((out / "manifest.json").read_text())
        per_image = manifest["wall_time_s"] / manifest["produced"]["images"]
    else:
        started = time.perf_counter()
        result = run_sample(cfg)
        per_image = (time.perf_counter() - started) / max(result.n_new, 1)
    return {
        "setting": name,
        "seed": seed,
        "solver": cfg.solver,
        "steps": cfg.steps,
        "interval": cfg.guidance_interval,
        "unet_passes": passes_per_image(cfg.solver, cfg.steps, cfg.guidance_interval),
        "out": str(out),
        "s_per_image": round(per_image, 3),
        "reused": bool(reuse),
    }


class Evaluator:
    """`histoldm evaluate`'s metrics under its default protocol (clean resize, bundled InceptionV3), with each
    image set's features extracted once (OUT/features/*.npy): every set is compared with the real patches and
    with DDIM-50, so evaluate's own per-call extraction would triple the Inception time."""

    def __init__(self, args):
        from histoldm.evaluate import features as F
        from histoldm.evaluate.config import ExtractConfig
        from histoldm.evaluate.run import _base_protocol

        self.args = args
        self.cfg = ExtractConfig(workers=1)
        self.extractor = F.load_extractor(self.cfg.extractor, self.cfg.device, self.cfg.dtype)
        self.protocol = _base_protocol(self.cfg, self.extractor)
        self.cache = args.out / "features"
        self.cache.mkdir(parents=True, exist_ok=True)

    def features(self, folder: Path):
        import numpy as np

        from histoldm.evaluate import features as F

        key = self.cache / (str(Path(folder).resolve()).strip("/").replace("/", "_") + ".npy")
        if key.is_file():
            return np.load(key)
        fs = F.extract_features(
            image_paths(folder),
            self.extractor,
            mode=self.cfg.resize,
            batch_size=self.cfg.batch_size,
            workers=1,
            desc=Path(folder).name,
        )
        np.save(key, fs.features)
        return fs.features

    def compare(self, real_folder: Path, fake_folder: Path, seed: int) -> dict:
        """FID, KID and precision / recall between two folders' features, with the protocol line."""
        from histoldm.evaluate import metrics as M

        real, fake = self.features(real_folder), self.features(fake_folder)

        fid = M.frechet_distance(*M.gaussian_stats(real), *M.gaussian_stats(fake), method="eigh")
        kid_mean, kid_std = M.kid(real, fake, n_subsets=100, subset_size=1000, seed=seed)
        precision, recall = M.precision_recall(real, fake, k=3)
        line = (
            self.protocol.extend(
                n_real=len(real),
                n_fake=len(fake),
                fid_method="eigh",
                image_format_real="png",
                image_format_fake="png",
                image_size_real=image_size(real_folder),
                image_size_fake=image_size(fake_folder),
                feature_dim=real.shape[1],
            ).line()
            + f", KID 100 subsets of {min(len(real), len(fake))}, P/R k=3"
        )
        return {
            "fid": fid,
            "kid": kid_mean,
            "kid_std": kid_std,
            "precision": precision,
            "recall": recall,
            "protocol_line": line,
        }

    def evaluate_set(self, row: dict, same_noise_reference: Path) -> dict:
        """Metrics against the real held-out patches, adherence, and FID against DDIM-50 of the same seed
        (same noise)."""
        from histoldm.evaluate import metrics as M
        from histoldm.evaluate.adherence import run_adherence

        fake = self.features(Path(row["out"]))
        record = {**row, **self.compare(self.args.real, Path(row["out"]), row["seed"])}
        adherence = run_adherence(Path(row["out"]), captions_parquet=self.args.captions_parquet, seed=row["seed"])
        record["adherence_auroc"] = {a: r.auroc for a, r in adherence.by_attribute.items()}
        if Path(same_noise_reference) != Path(row["out"]):
            ref = self.features(same_noise_reference)
            record["same_noise_fid"] = M.frechet_distance(
                *M.gaussian_stats(ref), *M.gaussian_stats(fake), method="eigh"
            )
        return record

    def seed_floor(self, first: Path, second: Path) -> dict:
        """DDIM-50 seed 0 against seed 1: what sampling noise alone gives at this N."""
        floor = self.compare(first, second, 0)
        return {"setting": "DDIM-50 seed 0 vs seed 1 (floor)", **floor}


def timing(args, names: list[str], n_images: int, repeats: int = 3) -> dict:
    """Seconds per image of each setting on the same images, the settings interleaved in each of `repeats`
    rounds (median): on a shared machine the load drifts, and interleaving puts every setting under the same."""
    import statistics

    import torch

    from histoldm.devices import sampling_numerics
    from histoldm.models.bundle import read_bundle_meta
    from histoldm.sampling.captions_io import read_caption_items
    from histoldm.sampling.config import SampleConfig
    from histoldm.sampling.run import ImageSampler, image_seed, resolve_bundle

    items, _ = read_caption_items(args.captions)
    captions, seeds = [it.caption for it in items[:n_images]], [image_seed(0, it.id) for it in items[:n_images]]
    device = torch.device("cpu")
    samplers = {}
    for name in names:
        fields = SETTINGS[name]
        bundle = resolve_bundle(args.student if fields.get("preset") == "turbo" else args.teacher)
        cfg = SampleConfig(
            checkpoint=bundle,
            prompt="x",
            out=args.out / "timing",
            text_cache=args.text_cache,
            device="cpu",
            batch_size=n_images,
            **fields,
        )
        samplers[name] = ImageSampler.load(
            cfg, bundle, read_bundle_meta(bundle), device, sampling_numerics("default", "auto", device), captions
        )
        samplers[name](captions[:1], seeds[:1])  # warm-up
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name, sampler in samplers.items():
            started = time.perf_counter()
            sampler(captions, seeds)
            times[name].append((time.perf_counter() - started) / n_images)
    return {
        name: {
            "s_per_image_median": statistics.median(t),
            "runs": t,
            "images": n_images,
            "threads": torch.get_num_threads(),
        }
        for name, t in times.items()
    }


def table(records: list[dict], floor: dict | None) -> str:
    def f(v, scale=1.0, digits=2):
        return "-" if v is None else f"{v * scale:.{digits}f}"

    lines = [
        "| setting | seed | UNet passes / image | s / image (CPU) | FID vs real | KID vs real (x 1e-3) | precision / "
        "recall | adherence AUROC tumor / til | same-noise FID vs DDIM-50 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        auroc = r.get("adherence_auroc") or {}
        lines.append(
            f"| {r['setting']} | {r['seed']} | {r['unet_passes']} | {f(r['s_per_image'])} | {f(r['fid'])} | "
            f"{f(r['kid'], 1e3)} +- {f(r['kid_std'], 1e3)} | "
            f"{f(r['precision'], digits=3)} / {f(r['recall'], digits=3)} | {f(auroc.get('tumor'), digits=3)} / "
            f"{f(auroc.get('til'), digits=3)} | "
            f"{f(r.get('same_noise_fid'))} |"
        )
        lines.append(f"| ↳ protocol: {r['protocol_line']} | | | | | | | | |")
    if floor:
        lines.append(
            f"| {floor['setting']} | - | - | - | {f(floor['fid'])} | {f(floor['kid'], 1e3)} +- "
            f"{f(floor['kid_std'], 1e3)} | {f(floor['precision'], digits=3)} / {f(floor['recall'], digits=3)} | - | - |"
        )
        lines.append(f"| ↳ protocol: {floor['protocol_line']} | | | | | | | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", type=Path, required=True, help="the trained model bundle (or run folder)")
    ap.add_argument("--student", type=Path, help="the distilled student bundle (needed by the turbo settings)")
    ap.add_argument("--captions", type=Path, required=True, help="held-out captions (.txt, .jsonl or captions.parquet)")
    ap.add_argument(
        "--captions-parquet",
        type=Path,
        required=True,
        help="captions.parquet with each caption's tumor / til level (adherence)",
    )
    ap.add_argument("--real", type=Path, required=True, help="the real held-out patches (export-patches folder)")
    ap.add_argument("--text-cache", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=1, help="samples per caption (N = captions x repeat)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument(
        "--settings", default=",".join(SETTINGS), help="comma-separated, in the order to run: " + ", ".join(SETTINGS)
    )
    ap.add_argument(
        "--reuse",
        action="append",
        default=[],
        metavar="NAME:SEED=DIR",
        help="an existing sample folder for one setting and seed",
    )
    ap.add_argument(
        "--timing",
        default="",
        help="only time these settings (comma-separated), interleaved, on --timing-images images; no quality",
    )
    ap.add_argument("--timing-images", type=int, default=4)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    args.reuse = dict(item.split("=", 1) for item in args.reuse)

    args.out.mkdir(parents=True, exist_ok=True)
    if args.timing:
        result = timing(args, args.timing.split(","), args.timing_images)
        (args.out / "timing.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
        return 0
    captions = repeated_captions(args.captions, args.repeat, args.out)
    results = args.out / "results.jsonl"
    done = (
        {(r["setting"], r["seed"]): r for r in map(json.loads, results.read_text().splitlines())}
        if results.is_file()
        else {}
    )
    seeds = [int(s) for s in args.seeds.split(",")]
    evaluator = Evaluator(args)
    ddim = {
        seed: sample_set("ddim50", seed, args, captions) for seed in seeds
    }  # the reference every row is shown beside
    for name in args.settings.split(","):
        for seed in seeds:
            if (name, seed) in done:
                continue
            row = ddim[seed] if name == "ddim50" else sample_set(name, seed, args, captions)
            done[(name, seed)] = evaluator.evaluate_set(row, Path(ddim[seed]["out"]))
            with results.open("a") as f:
                f.write(json.dumps(done[(name, seed)]) + "\n")
            print(json.dumps(done[(name, seed)]), flush=True)
    floor = evaluator.seed_floor(Path(ddim[seeds[0]]["out"]), Path(ddim[seeds[1]]["out"])) if len(seeds) > 1 else None
    text = table([done[k] for k in done], floor)
    (args.out / "few_step.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
