#!/usr/bin/env bash
# One lent-GPU session in one call (see benchmarks/results/README.md): install, run the test
# suite with compiled kernels (fp16/bf16 included), then time the bf16 benchmark cases of
# fastconv against cuDNN eager. Everything it writes goes to $OUT (default: /tmp/fastconv-gpu).
#
#   bash benchmarks/gpu_session.sh [TEST_SECONDS] [BENCH_SECONDS]
#
# Phase 1 (TEST_SECONDS, default 240) runs, side by side, the test suite on 9 processes and a
# warm-up pass of the timed benchmark cases on 6 processes with timing off: it only fills
# Triton's on-disk kernel cache, so phase 2 loads compiled kernels instead of compiling them
# one at a time. Phase 2 (BENCH_SECONDS, default 240) times the cases alone on the GPU, one
# process. Each phase is stopped with SIGINT at its limit, which still writes pytest's summary
# and pytest-benchmark's JSON for the cases that finished.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fastconv-gpu}
mkdir -p "$OUT"
TEST_SECONDS=${1:-240}
BENCH_SECONDS=${2:-240}
# Every test file but the compile gate (it builds cubins without a GPU; CPU CI runs it), the
# kernel tests first so that they finish if the phase runs out of time, then the rest.
FIRST=(tests/test_conv2d*.py tests/test_pool2d.py tests/test_pad2d.py tests/test_launch_limits.py
  tests/test_layers.py tests/test_ops.py tests/test_fusion.py tests/test_conv_bn.py
  tests/test_convert.py tests/test_models.py)
TESTS=("${FIRST[@]}")
for file in tests/test_*.py; do
  [[ $file == tests/test_compile_gate.py || " ${FIRST[*]} " == *" $file "* ]] || TESTS+=("$file")
done
BENCH=(benchmarks/test_bench_model.py benchmarks/test_bench_conv.py
  benchmarks/test_bench_pool.py benchmarks/test_bench_pad.py)
CASES="bf16 and not compile and not cpu"

{
  nvidia-smi
  python3 -c "import torch, triton; print(torch.__version__, torch.version.cuda, \
torch.backends.cudnn.version(), triton.__version__, torch.cuda.get_device_name())"
  python3 -m pip install -q --no-deps --no-build-isolation -e .
} >"$OUT/env.txt" 2>&1
tail -3 "$OUT/env.txt"

timeout -s INT "$TEST_SECONDS" python3 -m pytest "${TESTS[@]}" -n 9 --dist load -q -rfE \
  -p no:cacheprovider --durations=30 --junitxml="$OUT/tests.xml" >"$OUT/tests.log" 2>&1 &
tests_pid=$!
timeout -s INT "$TEST_SECONDS" python3 -m pytest "${BENCH[@]}" -k "$CASES and fastconv" -n 6 \
  --benchmark-disable -q -p no:cacheprovider >"$OUT/warm.log" 2>&1
wait "$tests_pid"
tail -25 "$OUT/tests.log"
tail -3 "$OUT/warm.log"

timeout -s INT "$BENCH_SECONDS" python3 -m pytest "${BENCH[@]}" -k "$CASES" --benchmark-only \
  -p no:cacheprovider --benchmark-json="$OUT/bench.json" -q >"$OUT/bench.log" 2>&1
grep -E "passed|failed|error" "$OUT/bench.log" | tail -3
