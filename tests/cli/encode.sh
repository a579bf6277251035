#!/usr/bin/env bash
# vramfit encode: tiny-sdxl's embeddings from the diffusers folder and from the
# single file match the diffusers reference (max relative error 1e-4, read with
# python3's struct and json only); a single file without a tokenizer fails with
# a message that names --tokenizer; bad usage exits 2.
set -u
: "${VF_CLI:?set VF_CLI to the vramfit binary}"
command -v python3 >/dev/null || { echo "SKIP: python3 not found"; exit 77; }
ref=${VF_SHARED:-}/reference/tiny-sdxl
[ -n "${VF_SHARED:-}" ] && [ -f "$ref/reference.safetensors" ] || {
    echo "SKIP: ../shared/reference not found (set VF_SHARED)"; exit 77; }

. "$(dirname "$0")/check.bash"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$ref/reference.json" "$1"; }
prompt=$(field prompt)
negative=$(field negative_prompt)

# Compares every tensor of $1 with the same key in the reference.
compare() {
    python3 - "$1" "$ref/reference.safetensors" <<'PY'
import json, struct, sys

def load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", (path, k, v["dtype"])
        a, b = v["data_offsets"]
        out[k] = (v["shape"], struct.unpack("<%df" % ((b - a) // 4), data[a:b]))
    return out

got, want = load(sys.argv[1]), load(sys.argv[2])
keys = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
assert sorted(got) == sorted(keys), sorted(got)
for k in keys:
    (gs, g), (ws, w) = got[k], want[k]
    assert gs == ws, (k, gs, ws)
    err = max(abs(x - y) for x, y in zip(g, w)) / max(abs(y) for y in w)
    print("  %-32s max rel err %.3g" % (k, err))
    assert err <= 1e-4, (k, err)
PY
}

"$VF_CLI" encode --help >"$tmp/help"
check "encode --help exits 0" test $? -eq 0
check "encode --help shows the usage" grep -q -- "--output FILE" "$tmp/help"

"$VF_CLI" encode >/dev/null 2>&1
check "encode without arguments exits 2" test $? -eq 2
"$VF_CLI" encode --model "$ref/diffusers" --prompt x >/dev/null 2>&1
check "encode without --output exits 2" test $? -eq 2
"$VF_CLI" encode --model "$ref/diffusers" --prompt x --output "$tmp/x" --bogus 1 >/dev/null 2>&1
check "encode with an unknown option exits 2" test $? -eq 2
"$VF_CLI" encode --model "$ref/diffusers" --prompt >/dev/null 2>&1
check "encode with a missing value exits 2" test $? -eq 2

"$VF_CLI" encode --model "$ref/diffusers" --prompt "$prompt" --negative "$negative" \
    --output "$tmp/diffusers.safetensors" >"$tmp/out" 2>"$tmp/err"
check "encode (diffusers folder) exits 0" test $? -eq 0
check "encode (diffusers folder) matches the reference" compare "$tmp/diffusers.safetensors"

"$VF_CLI" encode --model "$ref/tiny-sdxl.safetensors" --tokenizer "$ref/diffusers" --config "$ref/diffusers" \
    --prompt "$prompt" --negative "$negative" --output "$tmp/single.safetensors" >"$tmp/out" 2>"$tmp/err"
check "encode (single file) exits 0" test $? -eq 0
check "encode (single file) matches the reference" compare "$tmp/single.safetensors"

HF_HUB_CACHE=$tmp/no-hf-cache "$VF_CLI" encode --model "$ref/tiny-sdxl.safetensors" --config "$ref/diffusers" \
    --prompt "$prompt" --output "$tmp/none.safetensors" >/dev/null 2>"$tmp/err"
check "encode (single file, no tokenizer) exits 1" test $? -eq 1
check "  ... and says to pass --tokenizer" grep -q -- "--tokenizer" "$tmp/err"
check "  ... and writes no output" test ! -e "$tmp/none.safetensors"

finish
