#!/usr/bin/env bash
# Bounded fuzzing of the tests/fuzz targets with libFuzzer (clang-14).
#
#   tools/fuzz.sh [-t SECONDS] [-j JOBS] [TARGET...]     (default: every target)
#
# Builds build-fuzz (VF_FUZZ=ON: the library under ASan + UBSan with coverage
# instrumentation), then runs each target for SECONDS (default 60, or
# $VF_FUZZ_TIME), JOBS targets at a time (default 2, or $VF_FUZZ_JOBS), from its
# seed corpus tests/fuzz/corpus/<target>/ and its kept regressions. New corpus
# entries go to build-fuzz/fuzz-corpus/<target>/ (not committed); any crash, leak,
# timeout or out-of-memory input is written to tests/fuzz/regressions/<target>/,
# where the ctest test fuzz_<target> replays it from then on, and the script
# fails. Ends with one line per target: executions, time, coverage.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${VF_FUZZ_TIME:-60}
jobs=${VF_FUZZ_JOBS:-2}
build=${VF_FUZZ_BUILD:-build-fuzz}
while getopts "t:j:" opt; do
  case $opt in
    t) secs=$OPTARG ;;
    j) jobs=$OPTARG ;;
    *) echo "usage: $0 [-t SECONDS] [-j JOBS] [TARGET...]" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in tests/fuzz/fuzz_*.c; do t=$(basename "$f" .c); targets+=("${t#fuzz_}"); done
fi
cc=${CC:-$(command -v clang-14 || command -v clang || true)}
if [ -z "$cc" ]; then
  echo "fuzz.sh: clang not found (tools/deps.sh installs clang-14 and libclang-rt-14-dev)" >&2
  exit 1
fi

mkdir -p "$build"
CC=$cc cmake -S . -B "$build" -DVF_FUZZ=ON -DVF_WERROR=ON -DVF_CUDA=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$build/configure.log" 2>&1 ||
  { cat "$build/configure.log"; exit 1; }
cmake --build "$build" -j"$jobs" --target $(printf "fuzz_%s " "${targets[@]}")

logs="$build/fuzz-logs"
mkdir -p "$logs"
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

run_one() {
  local t=$1 work="$build/fuzz-corpus/$1" reg="tests/fuzz/regressions/$1"
  mkdir -p "$work" "$reg"
  local dict=()
  [ -f "tests/fuzz/$t.dict" ] && dict=("-dict=tests/fuzz/$t.dict")
  "$build/tests/fuzz/fuzz_$t" "$work" "tests/fuzz/corpus/$t" "$reg" "${dict[@]}" \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2560 -malloc_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$reg/" >"$logs/$t.log" 2>&1
}

declare -A pid_of
status=0
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  run_one "$t" &
  pid_of[$t]=$!
done
failed=()
for t in "${targets[@]}"; do
  if ! wait "${pid_of[$t]}"; then failed+=("$t"); status=1; fi
done

printf "%-14s %12s %8s %8s %8s %8s\n" target execs seconds exec/s cov features
for t in "${targets[@]}"; do
  log="$logs/$t.log"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$( (grep -o 'cov: [0-9]*' "$log" || true) | tail -1 | cut -d' ' -f2)
  ft=$( (grep -o 'ft: [0-9]*' "$log" || true) | tail -1 | cut -d' ' -f2)
  printf "%-14s %12s %8s %8s %8s %8s\n" "$t" "${execs:-?}" "$secs" "${rate:-?}" "${cov:-?}" "${ft:-?}"
done
for t in "${failed[@]}"; do
  echo "fuzz.sh: $t FAILED; the input is kept in tests/fuzz/regressions/$t/ (log: $logs/$t.log):" >&2
  grep -E "ERROR|SUMMARY|runtime error|fuzz:" "$logs/$t.log" | head -5 >&2 || true
done
[ $status -eq 0 ] && echo "fuzz.sh: ${#targets[@]} targets, ${secs} s each, no crash"
exit $status
