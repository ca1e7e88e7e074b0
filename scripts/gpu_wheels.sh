#!/usr/bin/env bash
# Download, here (where PyPI is reachable), the wheels the lent GPU machine lacks into .whl/, for
# Python 3.12 on manylinux x86_64. That machine has no network; its image already holds torch 2.11,
# transformers, accelerate, safetensors, numpy, pyarrow, huggingface-hub, pillow, regex, requests,
# filelock, pyyaml, tqdm, rich, tensorboard, h5py, scipy, matplotlib (docs/performance.md).
# --no-deps: every missing dependency is named below, one version each (two versions of one package
# stop the whole install there). histoldm itself travels as the working tree (PYTHONPATH=src).
#
#   scripts/gpu_wheels.sh            # then: run with carry [".whl"] (docs/performance.md)
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || grep -qx '/.whl/' .gitignore || echo '/.whl/' >> .git/info/exclude

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
ls -la .whl
du -sh .whl
