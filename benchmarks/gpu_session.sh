#!/usr/bin/env bash
# One lent-GPU session in one call, inside 9 minutes (see benchmarks/results/README.md):
# install, run the test suite with compiled kernels (fp16/bf16 included), probe fastconv's host
# overhead, then time the bf16 channels_last cases of fastconv against cuDNN eager and the
# whole-network cases (benchmarks/test_bench_networks.py). Everything it writes goes to $OUT
# (default: /tmp/fastconv-gpu), seven files: env.txt, tests.log, tests.xml, warm.log,
# host_overhead.txt, bench.log, bench.json (the device tool brings back at most eight).
#
#   bash benchmarks/gpu_session.sh [TEST_SECONDS] [BENCH_SECONDS]
#   bash benchmarks/gpu_session.sh --collect-only   # list phase 2's cases and exit (no GPU)
#
# Phase 1 (TEST_SECONDS, default 180) runs, side by side, the test suite on 9 processes and a
# warm-up pass of the timed cases on 6 processes with timing off: it only fills Triton's and
# inductor's on-disk caches, so phase 2 loads compiled kernels instead of compiling them one at
# a time. Phase H (HOST_SECONDS, default 45) runs benchmarks/host_overhead.py alone. Phase 2
# (BENCH_SECONDS, default and at most: what is left of TOTAL_SECONDS, default 520, counted from
# the script's start) times the cases alone on the GPU, one process, the network cases first
# and each case's eager and fastconv side by side. Each phase is stopped with SIGINT at its
# limit, which still writes pytest's summary and pytest-benchmark's JSON for the cases that
# finished (phase 2 is killed 15 s later if it has not exited: 535 s in all, under 9 minutes).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# Phase 2's cases: every bf16 channels_last case of fastconv and eager (no torch.compile: its
# compile times do not fit), and every case of the network file (all its providers, compile
# included, time in one test).
BENCH=(benchmarks/test_bench_networks.py benchmarks/test_bench_conv.py
  benchmarks/test_bench_pool.py benchmarks/test_bench_pad.py benchmarks/test_bench_model.py)
OP_CASES="bf16 and channels_last and not compile and not cpu"
NETWORK_CASES="networks"
CASES="($OP_CASES) or $NETWORK_CASES"
if [[ ${1:-} == --collect-only ]]; then
  exec "$PYTHON" -m pytest "${BENCH[@]}" -k "$CASES" --collect-only -q -p no:cacheprovider
fi

OUT=${OUT:-/tmp/fastconv-gpu}
mkdir -p "$OUT"
TOTAL_SECONDS=${TOTAL_SECONDS:-520}
TEST_SECONDS=${1:-180}
HOST_SECONDS=${HOST_SECONDS:-45}
# Every test file but the compile gate (it builds cubins without a GPU; CPU CI runs it), the
# kernel tests first so that they finish if the phase runs out of time, then the rest.
FIRST=(tests/test_conv2d*.py tests/test_pool2d.py tests/test_pad2d.py tests/test_launch_limits.py
  tests/test_layers.py tests/test_ops.py tests/test_fusion.py tests/test_conv_bn.py
  tests/test_convert.py tests/test_models.py)
TESTS=("${FIRST[@]}")
for file in tests/test_*.py; do
  [[ $file == tests/test_compile_gate.py || " ${FIRST[*]} " == *" $file "* ]] || TESTS+=("$file")
done

{
  nvidia-smi
  "$PYTHON" -c "import torch, triton; print(torch.__version__, torch.version.cuda, \
torch.backends.cudnn.version(), triton.__version__, torch.cuda.get_device_name())"
  "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e .
} >"$OUT/env.txt" 2>&1
tail -3 "$OUT/env.txt"
echo "install done at ${SECONDS}s"

timeout -s INT "$TEST_SECONDS" "$PYTHON" -m pytest "${TESTS[@]}" -n 9 --dist load -q -rfE \
  -p no:cacheprovider --durations=30 --junitxml="$OUT/tests.xml" >"$OUT/tests.log" 2>&1 &
tests_pid=$!
timeout -s INT "$TEST_SECONDS" "$PYTHON" -m pytest "${BENCH[@]}" \
  -k "($OP_CASES and fastconv) or $NETWORK_CASES" -n 6 --benchmark-disable -q \
  -p no:cacheprovider >"$OUT/warm.log" 2>&1
wait "$tests_pid"
tail -25 "$OUT/tests.log"
tail -3 "$OUT/warm.log"
echo "phase 1 done at ${SECONDS}s"

timeout -s INT "$HOST_SECONDS" "$PYTHON" benchmarks/host_overhead.py >"$OUT/host_overhead.txt" 2>&1
tail -5 "$OUT/host_overhead.txt"
echo "host overhead probe done at ${SECONDS}s"

left=$((TOTAL_SECONDS - SECONDS))
BENCH_SECONDS=${2:-$left}
((BENCH_SECONDS > left)) && BENCH_SECONDS=$left
((BENCH_SECONDS < 1)) && BENCH_SECONDS=1 # timeout 0 would mean no limit
timeout -s INT -k 15 "$BENCH_SECONDS" "$PYTHON" -m pytest "${BENCH[@]}" -k "$CASES" \
  --benchmark-only -p no:cacheprovider --benchmark-json="$OUT/bench.json" -q \
  >"$OUT/bench.log" 2>&1
grep -E "passed|failed|error" "$OUT/bench.log" | tail -3
echo "phase 2 done at ${SECONDS}s (limit ${BENCH_SECONDS}s)"
