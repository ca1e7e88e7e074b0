#!/usr/bin/env bash
# The device checks of issues 6, 8 and 9 in one command on a lent GPU machine (docs/performance.md):
# first the evaluation front end's img/s (issue 8), then benchmarks/bench_gpu.py --quick (the
# baseline beside our trainer and sampler, issues 6 and 9). Everything lands in $OUT. Prepared here by
# scripts/gpu_prepare.sh; run there with carry [".whl", ".gpu"]:
#
#   bash scripts/gpu_bench.sh [BENCH_GPU_BUDGET_S]      # default 400: no case starts that would end later
set -uo pipefail
budget=${1:-400}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TQDM_DISABLE=1  # progress bars would flood the logs
out=${OUT:-bench-gpu-out}
mkdir -p "$out"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, diffusers, accelerate, transformers, numpy; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
'accelerate', accelerate.__version__, 'transformers', transformers.__version__, 'numpy', numpy.__version__, 'cpus', __import__('os').cpu_count())"
} 2>&1 | tee "$out/gpu.txt"
timeout 150 python3 -u benchmarks/bench_evaluate.py --n 8192 --device cuda --dtype float16 --batch-size 256 --workers 15 \
  --extractor .gpu/inception_fp16.pt --json "$out/bench_evaluate.json" 2>&1 | tee "$out/bench_evaluate.log"
python3 -u benchmarks/bench_gpu.py --quick --budget-s "$budget" --out "$out" 2>&1 | tee "$out/bench_gpu.log"
