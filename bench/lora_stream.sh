#!/usr/bin/env bash
# bench/lora_stream.sh: what a LoRA costs per step of a streamed SDXL run on the
# GPU (issue 9: under a 2 GiB budget, at most 10% more per step than without).
#
#   bench/lora_stream.sh [VRAMFIT [MODEL_DIR]]
#
# VRAMFIT: the vramfit command (default: vramfit on PATH, else build/vramfit).
# MODEL_DIR: an SDXL diffusers folder (default $VF_BENCH_SDXL, else
# /tmp/vf-sdxl-f16, synthesized there with `vramfit synth --arch sdxl --preset
# full --dtype f16` when absent). A rank-32 kohya LoRA over every UNet attention,
# feed-forward and proj layer and both text encoders (tools/make_bench_lora.py)
# is written beside it. Then `vramfit generate --json` at 1024x1024 with CFG,
# --backend ${VF_BENCH_BACKEND:-cuda} --vram-budget ${VF_BENCH_BUDGET:-2G}
# --offload stream, with 4 and 12 steps, without and with the LoRA at 0.8.
# The steady per-step time is (denoise(12) - denoise(4)) / 8, so the one-time
# costs (converting weights to the pinned host copies, the LoRA merge with
# them) cancel; they are printed separately as the first-use overhead.
# Prints both per-step times and their ratio; exits 1 above 1.10.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
vf=${1:-$(command -v vramfit || echo "$here/build/vramfit")}
model=${2:-${VF_BENCH_SDXL:-/tmp/vf-sdxl-f16}}
backend=${VF_BENCH_BACKEND:-cuda}
budget=${VF_BENCH_BUDGET:-2G}
[ -x "$vf" ] || { echo "lora_stream: no vramfit command at $vf" >&2; exit 2; }
if [ ! -f "$model/model_index.json" ]; then
    echo "synthesizing SDXL (full shapes, f16) into $model ..."
    "$vf" synth --arch sdxl --preset full --dtype f16 --output "$model"
fi
lora=$model.bench-lora.safetensors
[ -f "$lora" ] || python3 "$here/tools/make_bench_lora.py" "$model" "$lora" --rank 32

denoise() { # steps [--lora ...] -> seconds of the denoise stage
    local steps=$1
    shift
    "$vf" generate --model "$model" --prompt "a photo of a cat" --negative "blurry" --width 1024 --height 1024 \
        --steps "$steps" --cfg 5 --seed 1 --backend "$backend" --vram-budget "$budget" --offload stream \
        --quiet --json --output /tmp/vf-lora-bench.png "$@" |
        python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["ok"], r; print(r["seconds"]["denoise"])'
}

a4=$(denoise 4)
a12=$(denoise 12)
b4=$(denoise 4 --lora "$lora:0.8")
b12=$(denoise 12 --lora "$lora:0.8")
python3 - "$a4" "$a12" "$b4" "$b12" "$budget" "$backend" <<'PY'
import sys
a4, a12, b4, b12 = map(float, sys.argv[1:5])
plain, lora = (a12 - a4) / 8, (b12 - b4) / 8
first_plain, first_lora = a4 - 4 * plain, b4 - 4 * lora
ratio = lora / plain
print(f"SDXL 1024x1024 CFG, {sys.argv[6]}, budget {sys.argv[5]}, stream:")
print(f"  per step without LoRA {plain * 1e3:.1f} ms, with a rank-32 LoRA {lora * 1e3:.1f} ms: x{ratio:.3f}")
print(f"  first-use overhead (conversions, LoRA merge): {first_plain:.2f} s without, {first_lora:.2f} s with")
sys.exit(0 if ratio <= 1.10 else 1)
PY
