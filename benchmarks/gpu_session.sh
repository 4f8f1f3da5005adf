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
# 4. runs lesson 11's solution notebook cell by cell (benchmarks/run_notebook.py), if SmolLM2 is
#    in the cache there.
# Copy the figures it prints into the README's performance section with the device and the date.
#
# SmolLM2's real weights (98 MB) are over one call's 64 MiB, and the machine reaches no registry.
# What worked (2026-11-27): split the cached GGUF in two ignored folders (head -c / tail -c),
# call 1 carries the first half and copies it to /tmp, call 2 (at once, while the machine is
# warm) carries the second half and the gguf wheel, and before this script runs:
#   cat /tmp/a .carry_b/b > /root/.cache/llama_np/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
#   pip install --no-index --no-deps --target /tmp/site .carry_b/gguf-*.whl; export PYTHONPATH=/tmp/site
# (llama_np checks its sha256). Without it the SmolLM2 tests skip and the benchmark uses random
# weights of its shape.
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
if [ -f "${LLAMA_NP_CACHE:-$HOME/.cache/llama_np}/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
    echo "== lesson 11, cell by cell"
    (cd solutions && PYTHONUNBUFFERED=1 timeout 150 $PY ../benchmarks/run_notebook.py 11_gpu_cupy.ipynb \
        >"$OUT/lesson11.txt" 2>&1)
    grep -B2 -A8 "Error\|cells failed" "$OUT/lesson11.txt"
fi
