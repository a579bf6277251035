#!/usr/bin/env bash
# The threaded tests under ThreadSanitizer.
#
#   tools/tsan.sh [ctest -R regex]    (default: the tests that start threads)
#
# Builds build-tsan (VF_TSAN=ON: the library and tests with -fsanitize=thread,
# gcc's libtsan) and runs test_pool (threads hammering one pool), test_device
# (the simulated device's copy-engine thread), test_residency (prefetch on
# that thread) and test_threads (pool calls, registration and generation on
# several threads at once). Any data race or lock-order report fails the run.
# OpenBLAS runs single-threaded here: its own threads are not instrumented, so
# TSan cannot see their synchronisation and would report false races.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${VF_TSAN_BUILD:-build-tsan}
tests=${1:-^(test_pool|test_device|test_residency|test_threads)$}
mkdir -p "$build"
cmake -S . -B "$build" -DVF_TSAN=ON -DVF_WERROR=ON -DVF_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  >"$build/configure.log" 2>&1 || { cat "$build/configure.log"; exit 1; }
targets=$(ctest --test-dir "$build" -N -R "$tests" | sed -n 's/^ *Test *#[0-9]*: *//p')
[ -n "$targets" ] || { echo "tsan.sh: no test matches '$tests'" >&2; exit 1; }
cmake --build "$build" -j2 --target $targets
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1 second_deadlock_stack=1 history_size=4}
export OPENBLAS_NUM_THREADS=1
ctest --test-dir "$build" -R "$tests" --output-on-failure
