#!/usr/bin/env bash
# bench/gpu.sh: the CUDA backend's checks and kernel benchmarks on a GPU machine.
#
# Runs, in one go: the op-by-op parity test against the CPU backend (both
# compute dtypes, every conv path), the kernel benchmarks (flash attention at
# the ANCHORS.md shapes, GEMM, conv, GroupNorm), the flash tile-shape sweep,
# and PyTorch SDPA on the same card as the baseline. Logs go to $OUT (or
# ./bench-out); the last lines are a summary to paste into bench/RESULTS.md.
#
# Binaries: $VF_GPU_BIN (default build-cuda/gpu) holds test_cuda_ops,
# libvramfit-cuda.so, flash_bench and any shared library the GPU machine lacks
# (the lent machines have no libopenblas); they are built on the development
# machine by `bench/gpu.sh --prepare` because the GPU machine cannot install
# the core's Debian dependencies. With no prepared binaries and a full
# toolchain present, it builds into build-gpu first.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${VF_GPU_BIN:-build-cuda/gpu}

if [ "${1:-}" = "--prepare" ]; then
    set -e
    B=build-cuda/rel
    cmake -S . -B $B -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build $B -j2 --target test_cuda_ops vramfit_cuda
    mkdir -p "$BIN"
    cp $B/tests/test_cuda_ops $B/libvramfit-cuda.so "$BIN"/
    nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I src bench/flash_bench.cu -o "$BIN"/flash_bench
    for f in $(ldd "$BIN"/test_cuda_ops | awk '/=>/ {print $3}'); do
        case "$f" in */libc.so*|*/libm.so*|*/libgcc_s*|*/ld-linux*) ;; *) cp -L "$f" "$BIN"/ ;; esac
    done
    ls -la "$BIN"
    exit 0
fi

OUT=${OUT:-bench-out}
mkdir -p "$OUT"
if [ ! -x "$BIN/test_cuda_ops" ]; then
    echo "no prepared binaries in $BIN: building into build-gpu"
    cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release && cmake --build build-gpu -j"$(nproc)" --target test_cuda_ops vramfit_cuda || exit 1
    BIN=build-gpu-bin; mkdir -p $BIN; cp build-gpu/tests/test_cuda_ops build-gpu/libvramfit-cuda.so $BIN/
    nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I src bench/flash_bench.cu -o $BIN/flash_bench || true
fi
export LD_LIBRARY_PATH="$PWD/$BIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export VF_CUDA_LIB="$PWD/$BIN/libvramfit-cuda.so"
PY=python3
[ -x /opt/torch/.venv/bin/python3 ] && PY=/opt/torch/.venv/bin/python3
# cuDNN: the system's if ldconfig knows it, else the one PyTorch ships.
if ! ldconfig -p | grep -q 'libcudnn.so.9 '; then
    d=$($PY -c 'import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], "lib"))' 2>/dev/null)
    [ -n "$d" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
fi

{
    date -u '+date: %Y-%m-%d %H:%M UTC'
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
    ldd "$VF_CUDA_LIB" | grep -E 'cublas|cudnn|not found'
} 2>&1 | tee "$OUT/env.txt"

echo "== parity (test_cuda_ops) and kernel benchmarks"
"$BIN/test_cuda_ops" --bench 2>&1 | tee "$OUT/ops.log"
ops_rc=${PIPESTATUS[0]}
echo "== flash tile sweep"
[ -x "$BIN/flash_bench" ] && "$BIN/flash_bench" 2>&1 | tee "$OUT/flash.log"
echo "== PyTorch SDPA baseline"
PYTHONUNBUFFERED=1 $PY bench/sdpa_bench.py 2>&1 | tee "$OUT/sdpa.log"

echo "== summary"
cat "$OUT/env.txt"
grep -E '^FAIL|passed,' "$OUT/ops.log"
grep -E '^BENCH' "$OUT/ops.log"
[ -f "$OUT/flash.log" ] && grep -E 'TFLOP' "$OUT/flash.log"
grep -E 'SDPA (default|flash|cudnn) ' "$OUT/sdpa.log"
exit $ops_rc
