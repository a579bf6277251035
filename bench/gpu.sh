#!/usr/bin/env bash
# bench/gpu.sh: the CUDA backend's checks and benchmarks on a GPU machine.
#
#   bench/gpu.sh --prepare     on the development machine: a Release build of
#                              vramfit, test_cuda_ops, test_gpu_pipeline and
#                              libvramfit-cuda.so, packed into $VF_GPU_BIN with
#                              what the GPU machine lacks: the core's shared
#                              libraries (libs.tar.xz: OpenBLAS, cJSON, ...),
#                              the reference fixtures (shared.tar.xz, from
#                              ../shared) and the diffusers wheel (whl/).
#   bench/gpu.sh [pipeline]    on the GPU machine (default): op parity
#                              (test_cuda_ops), pipeline parity against the
#                              fixtures in fp16 and bf16 (test_gpu_pipeline),
#                              `vramfit synth --arch sdxl --preset full --dtype
#                              f16`, the same pipeline test on it against the
#                              CPU path at 256x256, then `vramfit bench` at
#                              1024x1024 with CFG in fp16 (per-op profile) and
#                              bf16, and diffusers' eager SDXL UNet step and
#                              VAE decode on the same card as the baseline.
#   bench/gpu.sh ops           the kernel benchmarks (test_cuda_ops --bench,
#                              with every flash variant; bench/flash_bench.cu's
#                              checks and timings of the flash variants and
#                              configurations; PyTorch SDPA).
#   bench/gpu.sh parity        op and pipeline parity only.
#   bench/gpu.sh budgets       synthesizes SDXL if needed, then `vramfit bench`
#                              at 1024x1024 CFG fp16 under VRAM budgets of
#                              full, 8, 6, 4, 2 and 1 GiB (and smaller until
#                              nothing runs): strategy, step time, driver and
#                              arena peaks, bytes over the link per step,
#                              against the full-GPU step and the UNet's bytes
#                              over the measured link bandwidth.
#   bench/gpu.sh quant         GPU dequantization parity (test_cuda_quant), then
#                              the budget rows with q8, f8 and q4 weights
#                              (full and 2 GiB) against fp16.
#   bench/gpu.sh final         full-GPU and 2 GiB rows with and without a LoRA,
#                              q4 at 2 GiB and q8 resident.
#   bench/gpu.sh lora          diffusers + PEFT references for the LoRA fixtures
#                              on this GPU (fp16, bf16; tools/
#                              make_lora_gpu_reference.py), then test_gpu_lora
#                              against them and the CPU references.
#   bench/gpu.sh pool          the model pool on the GPU (test_gpu_pool), with
#                              SDXL's tier timings (synthesized if needed).
#   bench/gpu.sh rows          q4 and q8 at 2 GiB (threaded quantize on load)
#                              and the VAE alone, full and under 1 GiB.
#   bench/gpu.sh ctx           what the CUDA context holds (bench/ctx_probe.cu)
#                              and the 8-bit rows at 2, 2.5 and 3 GiB.
#   bench/gpu.sh prof          full-GPU f16/q8/f8 steps with per-op profiles.
#   bench/gpu.sh ahead         packed weights expanded ahead of compute: GPU
#                              tests, full-GPU rows with and without it, the
#                              8-bit rows at 2 and 3 GiB.
#   bench/gpu.sh synthcheck    GPU tests, synthesized SDXL on CUDA against the
#                              CPU, f16 full and q8/f8 at 2 GiB rows.
#   bench/gpu.sh search        Q8's scale search, F16 conv_in/conv_out: GPU
#                              tests, synthesized SDXL against the CPU, the
#                              full-GPU and 2 GiB rows of f16 and the packed
#                              formats.
#   bench/gpu.sh train-demo    trains the demo model (tools/demo/train.py)
#                              into $OUT/demo.
#
# $VF_GPU_BIN defaults to .gpu (keep it out of git: echo /.gpu/ >>
# .git/info/exclude) so that the device tool can carry it. Logs go to $OUT (or
# ./bench-out); the last lines are the summary to put in bench/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${VF_GPU_BIN:-.gpu}
MODE=${1:-pipeline}

if [ "$MODE" = "--prepare" ]; then
    set -e
    B=${VF_GPU_BUILD:-build-gpu-rel}
    cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=Release ${VF_CUDA_ARCHS:+-DCMAKE_CUDA_ARCHITECTURES=$VF_CUDA_ARCHS} >/dev/null
    cmake --build "$B" -j2 --target vramfit_cli test_cuda_ops test_gpu_pipeline test_cuda_quant test_gpu_lora \
        test_gpu_pool vramfit_cuda
    rm -rf "$BIN" && mkdir -p "$BIN/whl"
    cp "$B/vramfit" "$B/tests/test_cuda_ops" "$B/tests/test_gpu_pipeline" "$B/tests/test_cuda_quant" \
        "$B/tests/test_gpu_lora" "$B/tests/test_gpu_pool" "$B/libvramfit-cuda.so" "$BIN"/
    nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I src bench/flash_bench.cu -o "$BIN"/flash_bench || true
    libs=$(for f in "$BIN"/vramfit "$BIN"/test_*; do ldd "$f" | awk '/=>/ {print $3}'; done | sort -u |
           grep -vE '/(libc|libm|libgcc_s|ld-linux[^/]*|libpthread|libdl|librt)\.so')
    tar cJhf "$BIN/libs.tar.xz" --transform 's|.*/||' $libs
    tar cJf "$BIN/shared.tar.xz" -C ../shared reference/README.md reference/tiny-sd15 reference/tiny-sdxl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d "$BIN/whl" diffusers importlib_metadata peft accelerate || true
    du -sh "$BIN"/*
    exit 0
fi

OUT=${OUT:-bench-out}
mkdir -p "$OUT"
T=/tmp/vf-gpu
mkdir -p "$T/lib" "$T/site"
tar xJf "$BIN/libs.tar.xz" -C "$T/lib"
tar xJf "$BIN/shared.tar.xz" -C "$T"
export VF_SHARED="$T"
export LD_LIBRARY_PATH="$PWD/$BIN:$T/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export VF_CUDA_LIB="$PWD/$BIN/libvramfit-cuda.so"
PY=python3
[ -x /opt/torch/.venv/bin/python3 ] && PY=/opt/torch/.venv/bin/python3
# cuDNN: the system's if ldconfig knows it, else the one PyTorch ships.
if ! ldconfig -p | grep -q 'libcudnn.so.9 '; then
    d=$($PY -c 'import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], "lib"))' 2>/dev/null)
    [ -n "$d" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
fi
if ls "$BIN"/whl/*.whl >/dev/null 2>&1 && ! $PY -c 'import diffusers, peft' 2>/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$T/site" "$BIN"/whl/*.whl &&
        export PYTHONPATH="$T/site${PYTHONPATH:+:$PYTHONPATH}"
fi

{
    date -u '+date: %Y-%m-%d %H:%M UTC'
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
    ldd "$VF_CUDA_LIB" | grep -E 'cublas|cudnn|not found'
} 2>&1 | tee "$OUT/env.txt"

if [ "$MODE" = "ops" ]; then
    # test_cuda_ops runs the attention checks and benchmarks once per flash
    # variant ($VF_FLASH_VARIANT, tagged " vN"); flash_bench checks and times
    # every variant and extra configuration. A faulting kernel kills its
    # process's CUDA context (the kernels fault rather than hang), so if the
    # full flash_bench run dies, each entry is rerun in a process of its own.
    timeout 1200 "$BIN/test_cuda_ops" --bench 2>&1 | tee "$OUT/ops.log"
    if [ -x "$BIN/flash_bench" ]; then
        timeout 900 "$BIN/flash_bench" 2>&1 | tee "$OUT/flash.log"
        if ! grep -q '^flash_bench: ' "$OUT/flash.log"; then
            echo "== flash_bench died: each entry on its own" | tee -a "$OUT/flash.log"
            n=$("$BIN/flash_bench" --count)
            for ((i = 0; i < n; i++)); do
                timeout 300 "$BIN/flash_bench" --only $i 2>&1 | tee -a "$OUT/flash.log"
                echo "entry $i: exit ${PIPESTATUS[0]}" | tee -a "$OUT/flash.log"
            done
        fi
    fi
    PYTHONUNBUFFERED=1 $PY bench/sdpa_bench.py 2>&1 | tee "$OUT/sdpa.log"
    echo "== summary"
    grep -E '^FAIL|passed,|^BENCH' "$OUT/ops.log"
    grep -E '^CHECK .*(FAIL|failed)|^NOTE|^entry ' "$OUT/flash.log"
    sed -n '/^SUMMARY/,$p' "$OUT/flash.log"
    grep -E 'SDPA (default|flash) +float16' "$OUT/sdpa.log"
    exit 0
fi

SX=/tmp/vf-sdxl
synth_sdxl() {
    [ -f $SX/model_index.json ] && return 0
    s=$(date +%s%N)
    "$BIN/vramfit" synth --arch sdxl --preset full --dtype f16 --force --output $SX 2>&1 | tail -2
    echo "synth: $((($(date +%s%N) - s) / 1000000)) ms"
}

gpu_tests() { # $1: the log; the four GPU test binaries, their summary lines
    "$BIN/test_cuda_ops" 2>&1 | grep -E '^FAIL|passed,' | tee "$1"
    "$BIN/test_cuda_quant" 2>&1 | tail -3 | tee -a "$1"
    "$BIN/test_gpu_pipeline" 2>&1 | grep -E 'q8|passed|FAIL' | tee -a "$1"
    VF_TESTDATA=tests/data "$BIN/test_gpu_pool" 2>&1 | tail -2 | tee -a "$1"
}

budget_row() { # $1: label, $2..: extra bench arguments
    local label=$1; shift
    "$BIN/vramfit" bench --model $SX --width 1024 --height 1024 --steps 3 --cfg 5 --runs 2 --backend cuda:f16 \
        --no-decode --json "$@" >"$OUT/budget_$label.json" 2>"$OUT/budget_$label.err"
    local rc=$?
    $PY - "$OUT/budget_$label.json" "$label" "$rc" "$OUT/budget_$label.err" <<'PYEOF'
import json, sys
path, label, rc, err = sys.argv[1:5]
try:
    d = json.load(open(path))
except Exception:
    msg = open(err).read().strip().splitlines()
    print(f"{label:>6}  did not run (rc {rc}): {msg[-1] if msg else '?'}")
    sys.exit(0)
g = 1024**3
print(f"{label:>6}  {d['strategy']:<11} step {d['step_ms']:8.1f} ms  unet {d['unet_ms']:8.1f} ms  "
      f"driver peak {d['driver_peak_bytes']/g:6.2f} GiB  budget {d['budget_bytes']/g:6.2f} GiB  "
      f"context {d['context_bytes']/g:5.2f}  arena {d['arena_bytes']/g:6.2f}  ring {d['ring_depth']}  "
      f"h2d/step {d['h2d_bytes_per_step']/g:6.2f} GiB  link {d['link_bandwidth']/1e9:5.1f} GB/s  "
      f"predicted {d['predicted_step_ms']:7.1f} ms  decode {d['decode_ms']:7.1f} ms  "
      f"arena peak {d['pool_peak_denoise_bytes']/g:5.2f} GiB  act peak {d['activation_peak_denoise_bytes']/g:5.3f} "
      f"(planned {d.get('activation_plan_denoise_bytes', 0)/g:5.3f}) GiB"
      + (f"  ERROR {d['generation_error']}" if d['generation_error'] else ""))
PYEOF
}

synth_check_rows() { # $1: the log, $2..: budget_row argument lists; appends to the log
    local log=$1; shift
    synth_sdxl
    VF_GPU_SYNTH_SDXL=$SX "$BIN/test_gpu_pipeline" 2>&1 | grep -E 'synth|passed' | tee -a "$log"
    local row
    for row in "$@"; do
        budget_row $row | tee -a "$log"
    done
}

if [ "$MODE" = "parity" ]; then
    "$BIN/test_cuda_ops" 2>&1 | grep -E '^FAIL|passed,' | tee "$OUT/checks.log"
    "$BIN/test_gpu_pipeline" 2>&1 | tee -a "$OUT/checks.log"
    exit 0
fi

if [ "$MODE" = "budgets" ]; then
    synth_sdxl
    echo "== budgets: SDXL 1024x1024 CFG 5 fp16 (3 steps, medians of 2 runs)" | tee "$OUT/budgets.txt"
    budget_row full | tee -a "$OUT/budgets.txt"
    for g in 8 6 4 2 1.5 1; do
        budget_row ${g}G --vram-budget ${g}G | tee -a "$OUT/budgets.txt"
    done
    echo "== the VAE alone under 1 GiB (tiled if the plan says so)" | tee -a "$OUT/budgets.txt"
    "$BIN/vramfit" bench --model $SX --width 1024 --height 1024 --runs 2 --backend cuda:f16 --vae-only \
        --vram-budget 1G --json 2>&1 | grep -E '"(vae_ms|driver_peak_bytes|strategy)"|error' | tee -a "$OUT/budgets.txt"
    exit 0
fi

if [ "$MODE" = "quant" ]; then
    "$BIN/test_cuda_quant" 2>&1 | tail -15 | tee "$OUT/quant.log"
    synth_sdxl
    echo "== quantized streaming: SDXL 1024x1024 CFG 5 (3 steps, medians of 2 runs)" | tee "$OUT/quant_budgets.txt"
    budget_row f16_2G --vram-budget 2G | tee -a "$OUT/quant_budgets.txt"
    for d in q8 f8 q4; do
        budget_row ${d}_2G --dtype $d --vram-budget 2G | tee -a "$OUT/quant_budgets.txt"
    done
    budget_row q8_full --dtype q8 | tee -a "$OUT/quant_budgets.txt"
    echo "== LoRA (rank 32, every attention/ff/proj layer, both text encoders) streamed at 2 GiB" |
        tee -a "$OUT/quant_budgets.txt"
    [ -f /tmp/vf-lora.safetensors ] || $PY tools/make_bench_lora.py $SX /tmp/vf-lora.safetensors --rank 32
    budget_row f16_2G_lora --vram-budget 2G --lora /tmp/vf-lora.safetensors | tee -a "$OUT/quant_budgets.txt"
    exit 0
fi

if [ "$MODE" = "final" ]; then
    synth_sdxl
    echo "== final rows: SDXL 1024x1024 CFG 5 (3 steps, medians of 2 runs)" | tee "$OUT/final.txt"
    budget_row full | tee -a "$OUT/final.txt"
    budget_row 2G --vram-budget 2G | tee -a "$OUT/final.txt"
    [ -f /tmp/vf-lora.safetensors ] || $PY tools/make_bench_lora.py $SX /tmp/vf-lora.safetensors --rank 32
    budget_row 2G_lora --vram-budget 2G --lora /tmp/vf-lora.safetensors | tee -a "$OUT/final.txt"
    budget_row q4_2G --dtype q4 --vram-budget 2G | tee -a "$OUT/final.txt"
    budget_row q8_full --dtype q8 | tee -a "$OUT/final.txt"
    exit 0
fi

if [ "$MODE" = "lora" ]; then
    R=/tmp/vf-lora-gpu-ref
    mkdir -p $R
    for d in fp16 bf16; do
        [ -f $R/sdxl_ref_cuda_$d.safetensors ] && continue
        PYTHONUNBUFFERED=1 $PY tools/make_lora_gpu_reference.py --dtype $d --shared "$T" --data tests/data/lora \
            --out $R 2>&1 | grep -vE 'Warning|warn\(' | tee -a "$OUT/lora_ref.log"
    done
    VF_TESTDATA=tests/data VF_LORA_GPU_REF=$R "$BIN/test_gpu_lora" 2>&1 | tee "$OUT/lora.log" | tail -60
    exit 0
fi

if [ "$MODE" = "pool" ]; then
    VF_TESTDATA=tests/data "$BIN/test_gpu_pool" 2>&1 | tee "$OUT/pool.log"
    synth_sdxl
    VF_GPU_SYNTH_SDXL=$SX "$BIN/test_gpu_pool" 2>&1 | grep -E 'SDXL|passed|FAIL|CHECK' | tee -a "$OUT/pool.log"
    exit 0
fi

if [ "$MODE" = "rows" ]; then
    synth_sdxl
    echo "== rows: SDXL 1024x1024 CFG 5 (3 steps, medians of 2 runs)" | tee "$OUT/rows.txt"
    budget_row full | tee -a "$OUT/rows.txt"
    budget_row q8_2G --dtype q8 --vram-budget 2G | tee -a "$OUT/rows.txt"
    s=$(date +%s%N)
    budget_row q4_2G --dtype q4 --vram-budget 2G | tee -a "$OUT/rows.txt"
    echo "q4 row (quantize on load included): $((($(date +%s%N) - s) / 1000000)) ms" | tee -a "$OUT/rows.txt"
    grep -E '"load_s"' "$OUT/budget_q4_2G.json" | tee -a "$OUT/rows.txt"
    echo "== the VAE alone, full and under 1 GiB" | tee -a "$OUT/rows.txt"
    for b in "" "--vram-budget 1G"; do
        "$BIN/vramfit" bench --model $SX --width 1024 --height 1024 --runs 3 --backend cuda:f16 --vae-only $b \
            --json 2>&1 | grep -E '"(vae_ms|driver_peak_bytes|pool_peak_vae_bytes|strategy)"|error' |
            tr -d '\n' | tee -a "$OUT/rows.txt"
        echo | tee -a "$OUT/rows.txt"
    done
    exit 0
fi

if [ "$MODE" = "replan" ]; then
    # after the planner learnt the CUDA slack, the two expansion scratch slots
    # and flash attention: the budget rows again, f16 and packed
    synth_sdxl
    echo "== replan: SDXL 1024x1024 CFG 5 (3 steps, medians of 2 runs)" | tee "$OUT/replan.txt"
    budget_row full | tee -a "$OUT/replan.txt"
    for g in 6 2 1.5 1; do
        budget_row ${g}G --vram-budget ${g}G | tee -a "$OUT/replan.txt"
    done
    for d in q8 f8 q4; do
        budget_row ${d}_2G --dtype $d --vram-budget 2G | tee -a "$OUT/replan.txt"
    done
    exit 0
fi

if [ "$MODE" = "ctx" ]; then
    # what the context and libraries hold (bench/ctx_probe.cu, built here),
    # with and without a smaller per-thread stack; then the 8-bit rows at
    # 2, 2.5 and 3 GiB with the arena's activation peak
    nvcc -O2 bench/ctx_probe.cu -lcublasLt -lcublas -ldl -o /tmp/ctx_probe 2>&1 | grep -v deprecated
    for st in "" 1024 256 0; do
        echo "== ctx_probe $st"; /tmp/ctx_probe $st
    done 2>&1 | tee "$OUT/ctx.txt"
    synth_sdxl
    echo "== ctx rows: SDXL 1024x1024 CFG 5 (3 steps, medians of 2 runs)" | tee "$OUT/ctxrows.txt"
    budget_row q8_2G --dtype q8 --vram-budget 2G | tee -a "$OUT/ctxrows.txt"
    VF_CUDA_STACK=256 budget_row q8_2G_s256 --dtype q8 --vram-budget 2G | tee -a "$OUT/ctxrows.txt"
    VF_CUDA_STACK=256 budget_row f16_2G_s256 --vram-budget 2G | tee -a "$OUT/ctxrows.txt"
    for g in 2.5 3; do
        for d in q8 f8; do
            budget_row ${d}_${g}G --dtype $d --vram-budget ${g}G | tee -a "$OUT/ctxrows.txt"
        done
    done
    budget_row f16_3G --vram-budget 3G | tee -a "$OUT/ctxrows.txt"
    exit 0
fi

if [ "$MODE" = "prof" ]; then
    # the cost of expanding packed weights: full-GPU steps with f16, q8 and f8
    # weights, each with the per-op profile of one UNet forward
    synth_sdxl
    for d in ${VF_PROF_DTYPES:-f16 q8 f8}; do
        echo "== $d full GPU, SDXL 1024x1024 CFG 5"
        "$BIN/vramfit" bench --model $SX --width 1024 --height 1024 --steps 3 --cfg 5 --runs 2 \
            --backend cuda:f16 --no-decode --dtype $d --profile ${VF_PROF_ARGS:-} 2>&1 | head -${VF_PROF_LINES:-45}
    done | tee "$OUT/prof.txt"
    exit 0
fi

if [ "$MODE" = "ahead" ]; then
    # packed weights expanded ahead of their compute on a third stream, and
    # the smaller per-thread stack: the GPU tests, then the rows (set
    # VF_AHEAD_ROWS to choose: full = full-GPU with and without expansion
    # ahead, budget = 2 and 3 GiB)
    [ -z "${VF_AHEAD_NO_TESTS:-}" ] && gpu_tests "$OUT/ahead_tests.log"
    synth_sdxl
    echo "== ahead rows: SDXL 1024x1024 CFG 5 (3 steps, medians of 2 runs)" | tee "$OUT/ahead.txt"
    for set in ${VF_AHEAD_ROWS:-full budget}; do
        if [ $set = full ]; then
            budget_row f16_full | tee -a "$OUT/ahead.txt"
            for d in q8 f8; do
                budget_row ${d}_full --dtype $d | tee -a "$OUT/ahead.txt"
                VF_EXPAND_AHEAD=0 budget_row ${d}_full_at_acquire --dtype $d | tee -a "$OUT/ahead.txt"
            done
        else
            for g in 2 3; do
                for d in q8 f8; do
                    budget_row ${d}_${g}G --dtype $d --vram-budget ${g}G | tee -a "$OUT/ahead.txt"
                done
            done
            budget_row f16_2G --vram-budget 2G | tee -a "$OUT/ahead.txt"
            VF_CUDA_STACK=driver budget_row f16_2G_driver_stack --vram-budget 2G | tee -a "$OUT/ahead.txt"
            VF_CUDA_STACK=driver budget_row q8_2G_driver_stack --dtype q8 --vram-budget 2G | tee -a "$OUT/ahead.txt"
            budget_row q4_2G --dtype q4 --vram-budget 2G | tee -a "$OUT/ahead.txt"
        fi
    done
    exit 0
fi

if [ "$MODE" = "search" ]; then
    # Q8's scale search and F16 input/output convolutions: the GPU tests, the
    # synthesized SDXL on CUDA against the CPU, and the packed rows (full GPU,
    # 2 GiB) beside f16 in the same call
    gpu_tests "$OUT/search.log"
    synth_check_rows "$OUT/search.log" "f16_full" "q8_full --dtype q8" "f8_full --dtype f8" \
        "q8_2G --dtype q8 --vram-budget 2G" "f8_2G --dtype f8 --vram-budget 2G" "q4_2G --dtype q4 --vram-budget 2G" \
        "f16_2G --vram-budget 2G"
    exit 0
fi

if [ "$MODE" = "synthcheck" ]; then
    # after the synth's initialisation changed: the GPU tests, the synthesized
    # SDXL on CUDA against the CPU, and the q8/f8 rows at 2 GiB on it
    gpu_tests "$OUT/synthcheck.log"
    synth_check_rows "$OUT/synthcheck.log" "f16_full" "q8_2G --dtype q8 --vram-budget 2G" \
        "f8_2G --dtype f8 --vram-budget 2G"
    exit 0
fi

if [ "$MODE" = "stages" ]; then
    # per-stage components kept in host memory between prompts: encode time of
    # later prompts at 2 GiB (the text encoders are per-stage there), with and
    # without a LoRA; medians of 3 runs (the first run converts, the others not)
    synth_sdxl
    [ -f /tmp/vf-lora.safetensors ] || $PY tools/make_bench_lora.py $SX /tmp/vf-lora.safetensors --rank 32
    for extra in "" "--lora /tmp/vf-lora.safetensors"; do
        "$BIN/vramfit" bench --model $SX --width 1024 --height 1024 --steps 2 --cfg 5 --runs 3 --backend cuda:f16 \
            --no-decode --vram-budget 2G --json $extra 2>/dev/null | grep -E '"(encode_ms|load_s)"' | tr -d '\n'
        echo "  ($extra)"
    done | tee "$OUT/stages.txt"
    exit 0
fi

if [ "$MODE" = "train-demo" ]; then
    PYTHONUNBUFFERED=1 $PY tools/demo/train.py --out "$OUT/demo" --device cuda ${VF_DEMO_MINUTES:+--minutes $VF_DEMO_MINUTES} 2>&1 |
        tee "$OUT/train.log" | tail -40
    du -sh "$OUT/demo"
    exit 0
fi

echo "== op parity (test_cuda_ops)"
if ! "$BIN/test_cuda_ops" 2>&1 | grep -E '^FAIL|passed,' | tee "$OUT/checks.log"; then
    echo "op parity failed: the rest runs with the legacy GroupNorm statistics kernel" | tee -a "$OUT/checks.log"
    export VF_CUDA_GN=legacy
    "$BIN/test_cuda_ops" 2>&1 | grep -E '^FAIL|passed,' | tee -a "$OUT/checks.log"
fi
echo "== pipeline parity on the reference fixtures"
"$BIN/test_gpu_pipeline" 2>&1 | tee -a "$OUT/checks.log"
echo "== synthesize SDXL (full, f16)"
s=$(date +%s%N)
"$BIN/vramfit" synth --arch sdxl --preset full --dtype f16 --force --output $SX 2>&1 | tail -2
echo "synth: $((($(date +%s%N) - s) / 1000000)) ms" | tee -a "$OUT/checks.log"
echo "== SDXL synth: CUDA fp16 against the CPU path, 256x256, one step"
VF_GPU_SYNTH_SDXL=$SX "$BIN/test_gpu_pipeline" 2>&1 | grep -E 'synth|passed' | tee -a "$OUT/checks.log"
echo "== vramfit bench, SDXL 1024x1024, CFG 5, fp16, everything resident"
"$BIN/vramfit" bench --model $SX --width 1024 --height 1024 --steps 4 --cfg 5 --runs 3 --backend cuda:f16 \
    --profile --json >"$OUT/bench_f16.json" 2>&1
cat "$OUT/bench_f16.json"
echo "== vramfit bench, the VAE alone (its own peak), fp16"
"$BIN/vramfit" bench --model $SX --width 1024 --height 1024 --runs 5 --backend cuda:f16 --vae-only --json \
    >"$OUT/bench_vae.json" 2>&1
cat "$OUT/bench_vae.json"
echo "== diffusers baseline (same card, same call)"
PYTHONUNBUFFERED=1 $PY bench/diffusers_bench.py $SX 1024 2>&1 | tail -3 | tee "$OUT/diffusers.json"
echo "== vramfit bench, bf16"
"$BIN/vramfit" bench --model $SX --width 1024 --height 1024 --steps 4 --cfg 5 --runs 2 --backend cuda:bf16 \
    --json >"$OUT/bench_bf16.json" 2>&1
echo "== summary"
cat "$OUT/env.txt"
grep -E 'passed|FAIL|synth' "$OUT/checks.log"
grep -E '"(encode|step|unet|decode)_ms"|peak|weights_bytes|load_s' "$OUT/bench_f16.json" | head -8
grep -E '"(encode|step|unet|decode)_ms"' "$OUT/bench_bf16.json"
grep -E '"vae_ms"|activation_peak|workspace' "$OUT/bench_vae.json"
tail -1 "$OUT/diffusers.json"
