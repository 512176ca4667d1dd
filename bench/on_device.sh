#!/usr/bin/env bash
# The GPU checks in one call on a device machine: the test suite on CuPy, then bench/gpu.py.
#
# Here, once per machine (fills .whl/ with what the device image lacks):
#     ../shared/tools/gpu-wheels ndonnx onnx onnxruntime dask distributed
# On the device (carry [".whl"]; what lands in $OUT comes back):
#     bash bench/on_device.sh
# Knobs: BACKEND (default cupy), PYTEST_ARGS (e.g. "tests/test_layers.py"), BENCH_ARGS
# (e.g. "--configs A,E --repeats 2"), TEST_SECONDS and BENCH_SECONDS (time limits of the two
# parts, 240 and 300 by default, so that one call fits in ten minutes).
# Without a GPU, `BACKEND=numpy BENCH_ARGS=--smoke bash bench/on_device.sh` runs the same steps.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/portnn-device}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
    python3 -c "import portnn as pn; print('portnn', pn.__version__, 'backends:', pn.available_backends())"
} 2>&1 | tee "$out/device.txt"

# shellcheck disable=SC2086  # the knobs are word lists on purpose
timeout "${TEST_SECONDS:-240}" env PORTNN_BACKEND="${BACKEND:-cupy}" \
    python3 -m pytest -q -p no:cacheprovider --maxfail=25 ${PYTEST_ARGS:-tests} 2>&1 | tee "$out/tests.log"
tests=${PIPESTATUS[0]}

# shellcheck disable=SC2086
timeout "${BENCH_SECONDS:-300}" python3 bench/gpu.py --write-docs "$out/benchmarks-gpu.md" ${BENCH_ARGS:-} \
    2>&1 | tee "$out/bench.log"
bench=${PIPESTATUS[0]}

echo "tests exit $tests, bench exit $bench (124: ran out of its time)" | tee -a "$out/device.txt"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
