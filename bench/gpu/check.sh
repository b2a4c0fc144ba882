#!/usr/bin/env bash
# The one-command GPU check: on a CUDA machine, within 8.5 minutes of wall time,
#   1. the tests marked `gpu` (tests/attent_kernels/test_gpu.py: every autotune configuration of
#      every kernel in bfloat16 against the reference, the dtype policy at its documented
#      tolerances, bitwise reproducibility; and the product path's GPU tests under tests/attent:
#      fit with a teacher on CUDA end to end), capped at 180 s;
#   2. the bfloat16 benchmark set (bench/gpu/run.py: LLaMA-7B, ViT-B/16 and GPT-2-head shapes,
#      do_bench timings, ratio to cuBLAS; the probe against a plain step), with a 150 s budget
#      for starting cases, capped at 210 s;
#   3. the product path (bench/gpu/product.py: fit on the digits ViT with full data and teachers
#      fed fgrad, loss and gradnorm, each twice in the process; one score call against
#      F.cross_entropy), capped at 120 s.
# Writes device.txt, gpu-tests.log, gpu-tests.xml, kernels-gpu.json, kernels-gpu.md,
# product-gpu.json and product-gpu.md to the output folder: the first argument, else $OUT, else
# bench/results/gpu-check.
#
#     bench/gpu/check.sh [OUTPUT_DIR]          # PYTHON=... picks the interpreter (default python3)
#
# Exit status 0 when the tests pass, every benchmark row ran and agreed with the reference, and
# the product path ran.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${1:-${OUT:-bench/results/gpu-check}}"
mkdir -p "$out"
python="${PYTHON:-python3}"
unset TRITON_INTERPRET
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  "$python" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
} > "$out/device.txt" 2>&1
cat "$out/device.txt"

parallel=()
if "$python" -c "import xdist" 2>/dev/null; then
    parallel=(-n 8)  # compiling the configurations dominates: spread it over the CPU cores
fi
timeout 180 "$python" -m pytest -q -m gpu tests "${parallel[@]}" -p no:cacheprovider \
    --junitxml="$out/gpu-tests.xml" > "$out/gpu-tests.log" 2>&1
tests_rc=$?
tail -n 25 "$out/gpu-tests.log"

timeout 210 "$python" bench/gpu/run.py --out "$out" --budget 150
bench_rc=$?

timeout 120 "$python" bench/gpu/product.py --out "$out"
product_rc=$?

echo "gpu tests: exit $tests_rc; kernel benchmark: exit $bench_rc; product path: exit $product_rc (124: time limit);" \
     "results in $out"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$product_rc" -eq 0 ]
