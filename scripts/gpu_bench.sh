#!/usr/bin/env bash
# The GPU benchmark in one command on a machine without network (docs/performance.md): the reference
# benchmark's own baseline cases (carried as .gpu/gpu_anchor.py: its bf16 training
# step, its DDIM-50 loop at batch 128 and its VQ-f4 encode/decode), then benchmarks/bench_gpu.py --quick
# (every target row: DDIM-50, the fast preset and a distilled student's 4 steps (turbo),
# eager and compiled, at batch 128; training
# with compile + checkpointing; encode-latents; a profiler table of one guided DDIM step). Everything
# lands in $OUT. Prepared here by scripts/gpu_prepare.sh; run there with carry [".whl", ".gpu"]:
#
#   bash scripts/gpu_bench.sh [BENCH_GPU_BUDGET_S]      # default 420: no bench case starts that would end later
#   PYTHON=.venv/bin/python bash scripts/gpu_bench.sh --smoke   # on a CPU: the bench steps, tiny (about a minute idle)
set -uo pipefail
if [[ "${1:-}" == "--smoke" ]]; then
  export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TQDM_DISABLE=1
  out=${OUT:-bench-gpu-out}
  mkdir -p "$out"
  "${PYTHON:-python3}" -u benchmarks/bench_gpu.py --tiny --out "$out" --cases "baseline train bf16 1-head,sample,profile,encode,compile" 2>&1 | tee "$out/bench_gpu.log"
  exit "${PIPESTATUS[0]}"
fi
budget=${1:-420}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TQDM_DISABLE=1  # progress bars would flood the logs
out=${OUT:-bench-gpu-out}
mkdir -p "$out"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, diffusers, accelerate, transformers, numpy; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
'accelerate', accelerate.__version__, 'transformers', transformers.__version__, 'numpy', numpy.__version__, 'cpus', __import__('os').cpu_count())"
} 2>&1 | tee "$out/gpu.txt"
# The anchor itself, three of its cases (about a minute); its JSON goes to $OUT/anchor.json.
timeout 120 python3 -u -c '
import sys; sys.path.insert(0, ".gpu"); sys.argv = ["gpu_anchor.py"]
import json, os, torch, gpu_anchor as a
print(torch.__version__, torch.cuda.get_device_name(), flush=True)
a.train_case("train bf16-autocast 1head ctx154", 32, 154, torch.bfloat16)
a.sample_case("ddim50 cfg bf16 h64 bs128", 128, 154, torch.bfloat16, heads=(3, 6, 9, 15))
a.vae_case("vq-f4 bf16 256px bs64", 64, torch.bfloat16)
json.dump(a.RESULTS, open(os.path.join(os.environ.get("OUT", "."), "anchor.json"), "w"), indent=1)
' 2>&1 | tee "$out/anchor.log"
python3 -u benchmarks/bench_gpu.py --quick --budget-s "$budget" --out "$out" 2>&1 | tee "$out/bench_gpu.log"
# sample-region: seconds per 4,096 px region with PathLDM's UNet, DDIM-50 and the fast preset (about 2 minutes).
python3 -u benchmarks/bench_gpu.py --quick --cases sample-region --budget-s 240 --out "$out/region" 2>&1 | tee "$out/bench_region.log"
