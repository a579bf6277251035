#!/usr/bin/env bash
# vramfit info: the text and --json forms succeed, the JSON parses and carries
# the documented keys, VF_CUDART_PATH pointing nowhere gives a reasoned "no GPU",
# and bad usage exits 2.
set -u
: "${VF_CLI:?set VF_CLI to the vramfit binary}"
command -v python3 >/dev/null || { echo "SKIP: python3 not found"; exit 77; }

. "$(dirname "$0")/check.bash"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$VF_CLI" info >"$tmp/text" 2>"$tmp/err"
check "info exits 0" test $? -eq 0
text_ok() {
    grep -q -E '^GPU: ' "$tmp/text" && grep -q -E '^RAM: .* GiB total, .* GiB available' "$tmp/text" \
        && grep -q -E '^CPU: .*cores? usable' "$tmp/text" && grep -q '^SIMD: ' "$tmp/text"
}
check "info text has GPU, RAM, CPU and SIMD lines" text_ok
check "info writes nothing to stderr" test ! -s "$tmp/err"

"$VF_CLI" info --json >"$tmp/json" 2>"$tmp/err"
check "info --json exits 0" test $? -eq 0
check "info --json parses with the documented keys" python3 - "$tmp/json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
keys = ["has_cuda", "has_mps", "device_count", "driver_version", "runtime_version",
        "cuda_error", "devices", "total_ram", "available_ram", "cgroup_limit",
        "cpu_cores", "cpu_name", "simd"]
missing = [k for k in keys if k not in r]
assert not missing, missing
assert isinstance(r["has_cuda"], bool) and r["has_mps"] is False
assert r["device_count"] == len(r["devices"])
assert r["has_cuda"] == (r["device_count"] > 0)
assert 0 < r["available_ram"] <= r["total_ram"] or r["available_ram"] == 0
assert r["cpu_cores"] >= 1
for d in r["devices"]:
    assert d["name"] and d["free_vram"] <= d["total_vram"]
    assert d["compute_capability"].count(".") == 1
PY

# The text and the JSON describe the same machine.
if python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["has_cuda"] else 1)' "$tmp/json"; then
    check "text lists the GPUs" grep -q -E '^  \[0\] .*VRAM' "$tmp/text"
else
    check "text says why there is no GPU" grep -q '^GPU:  no CUDA GPU: ..' "$tmp/text"
fi

VF_CUDART_PATH=/nonexistent/libcudart.so "$VF_CLI" info --json >"$tmp/nocuda" 2>&1
check "VF_CUDART_PATH to a missing file still exits 0" test $? -eq 0
check "... and reports no GPU naming the library" python3 - "$tmp/nocuda" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["has_cuda"] is False and r["device_count"] == 0 and r["devices"] == []
assert "/nonexistent/libcudart.so" in r["cuda_error"], r["cuda_error"]
PY

"$VF_CLI" info --help >"$tmp/help"
check "info --help exits 0 and documents --json" grep -q -- '--json' "$tmp/help"
"$VF_CLI" info --bogus >/dev/null 2>&1
check "unknown option exits 2" test $? -eq 2

finish
