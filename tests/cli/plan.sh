#!/usr/bin/env bash
# vramfit plan on the tiny SDXL reference (diffusers folder): --json parses and
# carries the plan's fields consistently (runs cover every block, peaks inside
# the budget), the text form has its lines, an explicit strategy is honoured,
# a budget below the minimum fails saying what would fit, a machine without a
# GPU gets a CPU plan, and bad usage (a bad size among them) exits 2.
set -u
: "${VF_CLI:?set VF_CLI to the vramfit binary}"
command -v python3 >/dev/null || { echo "SKIP: python3 not found"; exit 77; }
model="${VF_SHARED:-}/reference/tiny-sdxl/diffusers"
[ -d "$model" ] || { echo "SKIP: $model not found (set VF_SHARED)"; exit 77; }

. "$(dirname "$0")/check.bash"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$VF_CLI" plan "$model" --vram-budget 1GiB --json >"$tmp/json" 2>"$tmp/err"
check "plan --json exits 0" test $? -eq 0
check "plan --json writes nothing to stderr" test ! -s "$tmp/err"
check "plan --json parses with the plan's fields" python3 - "$tmp/json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
for k in ["arch", "strategy", "requested", "reason", "request", "budget_bytes",
          "peak_device_bytes", "peak_host_bytes", "stage_peak_device_bytes", "time_per_step_s",
          "time_per_generation_s", "ring_depth", "ring_slot_bytes", "attention_slices",
          "vae_tile_latent", "resources", "components", "candidates"]:
    assert k in p, k
assert p["arch"] == "sdxl" and p["requested"] == "auto"
assert p["strategy"] in ("full-gpu", "cpu-offload", "sequential", "stream"), p["strategy"]
assert p["reason"].startswith(p["strategy"]), p["reason"]
assert p["budget_bytes"] == 1 << 30
assert 0 < p["peak_device_bytes"] <= p["budget_bytes"]
assert all(v <= p["peak_device_bytes"] for v in p["stage_peak_device_bytes"].values())
assert p["time_per_step_s"] > 0
assert p["time_per_generation_s"] >= p["time_per_step_s"] * p["request"]["steps"]
assert p["request"] == {"width": 64, "height": 64, "steps": 20, "cfg": True, "batch": 2}
comps = {c["component"]: c for c in p["components"]}
assert set(comps) == {"text_encoder", "text_encoder_2", "unet", "vae"}, set(comps)
stages = {"text_encoder": "encode_prompt", "text_encoder_2": "encode_prompt",
          "unet": "denoise", "vae": "decode"}
for name, c in comps.items():
    assert c["stage"] == stages[name] and c["device"] in ("gpu", "cpu")
    first = 0
    for r in c["blocks"]:
        assert r["first"] == first and r["count"] >= 1
        assert r["dtype"] == c["dtype"] and r["home"] in ("disk", "host", "pinned", "device")
        assert r["mode"] in ("resident", "streamed", "on-demand", "cpu")
        first += r["count"]
    assert first == c["blocks_total"] > 0
    assert sum(r["bytes"] for r in c["blocks"]) == c["weight_bytes"]
    assert c["resident_bytes"] + c["streamed_bytes"] == c["weight_bytes"] or c["device"] == "cpu"
# dtype auto: the tiny model fits at full speed in F32 (Q8 < 8 GB < F16 < 12 GB < F32 is for SDXL sizes)
assert comps["unet"]["dtype"] == "F32" and comps["unet"]["device"] == "gpu"
assert p["dtype_reason"].startswith("auto: f32"), p["dtype_reason"]
assert any(c["fits"] for c in p["candidates"])
PY

"$VF_CLI" plan "$model" --vram-budget 1GiB >"$tmp/text" 2>"$tmp/err"
check "plan text exits 0" test $? -eq 0
text_ok() {
    grep -q '^strategy:  ' "$tmp/text" && grep -q '^reason:    ' "$tmp/text" \
        && grep -q -E '^peak:      GPU .* host ' "$tmp/text" && grep -q -E '^time:      .* per step' "$tmp/text" \
        && grep -q -E '^ring:      ' "$tmp/text" && grep -q -E '^unet: GPU, denoise, F32' "$tmp/text" \
        && grep -q -E '^dtypes:    auto: f32' "$tmp/text" \
        && grep -q -E '^ +0-[0-9]+ +F32 +device +resident .*time_embedding \.\. ' "$tmp/text"
}
check "plan text has strategy, reason, peak, time, ring and block runs" text_ok

"$VF_CLI" plan "$model" --vram-budget 1GB --offload sequential --cfg 1 --steps 4 --json >"$tmp/seq" 2>&1
check "an explicit strategy is honoured, guidance off gives batch 1" python3 - "$tmp/seq" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
assert p["strategy"] == "sequential" and p["requested"] == "sequential", p["strategy"]
assert p["budget_bytes"] == 1000000000
assert p["request"]["batch"] == 1 and p["request"]["steps"] == 4
# one component at a time: the peak is the largest stage
assert p["peak_device_bytes"] == max(p["stage_peak_device_bytes"].values())
PY

"$VF_CLI" plan "$model" --vram-budget 300M >"$tmp/out" 2>"$tmp/err"
check "a budget below the minimum exits 1" test $? -eq 1
check "... saying how much would fit" grep -q -E 'needs at least [0-9.]+ GB' "$tmp/err"

VF_CUDART_PATH=/nonexistent/libcudart.so "$VF_CLI" plan "$model" --json >"$tmp/cpu" 2>&1
check "without a GPU or a budget the plan is for the CPU" python3 - "$tmp/cpu" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
assert p["resources"]["gpu"] is False and p["peak_device_bytes"] == 0
assert all(c["device"] == "cpu" and c["dtype"] == "F32" for c in p["components"])
PY
VF_CUDART_PATH=/nonexistent/libcudart.so "$VF_CLI" plan "$model" --offload full-gpu >/dev/null 2>"$tmp/err"
check "an explicit GPU strategy without a GPU or budget exits 1" test $? -eq 1
check "... naming what to do" grep -q 'budget' "$tmp/err"

usage_exit() { "$VF_CLI" plan "$@" >/dev/null 2>"$tmp/uerr"; test $? -eq 2; }
check "bad budget string exits 2" usage_exit "$model" --vram-budget 6X
check "... naming the text" grep -q "'6X'" "$tmp/uerr"
check "negative budget exits 2" usage_exit "$model" --vram-budget -1G
check "empty budget exits 2" usage_exit "$model" --vram-budget ""
check "zero budget exits 2" usage_exit "$model" --vram-budget 0
check "unknown strategy exits 2" usage_exit "$model" --offload gpu
check "bad width exits 2" usage_exit "$model" --width wide
check "missing MODEL exits 2" usage_exit --vram-budget 6G
check "unknown option exits 2" usage_exit "$model" --frobnicate
check "option without value exits 2" usage_exit "$model" --vram-budget
"$VF_CLI" plan --help >"$tmp/help"
check "--help exits 0 and documents the budget" grep -q -- '--vram-budget SIZE' "$tmp/help"

finish
