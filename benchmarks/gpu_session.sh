#!/bin/sh
# Everything the GPU path needs checked and measured, as ONE call on a lent GPU machine
# (the device tool's `run`, timeout_s 600; the machine has numpy, cupy, torch and transformers
# but reaches no package registry). From the repository root:
#
#     sh benchmarks/gpu_session.sh          # results under $OUT (or /tmp/gpu_out)
#
# 1. installs llama_np over the machine's own packages (no downloads);
# 2. runs the GPU tests (kernels vs their NumPy emulation, tiny models in fp32/bf16/fp16 vs NumPy,
#    the CUDA-graph decoder);
# 3. runs benchmarks/gpu.py: tiny and SmolLM2 shapes on NumPy and CuPy, then Llama 3 8B's shape
#    (random bf16 weights made on the GPU) against transformers eager bf16 and the HBM limit.
# Copy the figures it prints into the README's performance section with the device and the date.
set -u
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # works even if the editable install fails
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
PY=python3
echo "== environment" | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$OUT/env.txt"
$PY -c "import sys, numpy, cupy, torch, transformers; print(sys.version.split()[0], 'numpy', numpy.__version__, 'cupy', cupy.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)" 2>&1 | tee -a "$OUT/env.txt"
$PY -m pip install --no-deps --no-build-isolation -e . >"$OUT/pip.txt" 2>&1 || { echo "pip install failed:"; tail -5 "$OUT/pip.txt"; }
echo "== tests (GPU; the emulated ones run in CI)"
# -o addopts="": the project's pytest options name nbval, which the GPU machine does not have.
timeout 150 $PY -m pytest -q -p no:cacheprovider -o addopts="" -rs tests/test_gpu.py \
    >"$OUT/tests.txt" 2>&1
tail -25 "$OUT/tests.txt"
echo "== benchmark"
PYTHONUNBUFFERED=1 timeout 300 $PY benchmarks/gpu.py --json "$OUT/gpu.json" >"$OUT/bench.txt" 2>&1
echo "(exit $?)"
cat "$OUT/bench.txt"
