#!/usr/bin/env bash
# vramfit inspect: the tiny SDXL pipeline as a diffusers folder and as a single
# file (with --config) reports SDXL and the four components, and both layouts
# give the same parameters and bytes per component (the key maps, seen from the
# command line). Also the SD1.5 pair, --json's keys, errors and usage.
set -u
: "${VF_CLI:?set VF_CLI to the vramfit binary}"
[ -n "${VF_SHARED:-}" ] && [ -f "$VF_SHARED/reference/README.md" ] || { echo "SKIP: set VF_SHARED"; exit 77; }
command -v python3 >/dev/null || { echo "SKIP: python3 not found"; exit 77; }

. "$(dirname "$0")/check.bash"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ref=$VF_SHARED/reference

for m in sdxl sd15; do
    dir=$ref/tiny-$m/diffusers
    file=$ref/tiny-$m/tiny-$m.safetensors
    "$VF_CLI" inspect "$dir" >"$tmp/$m.dir.txt" 2>"$tmp/err"
    check "$m: inspect folder exits 0" test $? -eq 0
    "$VF_CLI" inspect "$file" --config "$dir" >"$tmp/$m.file.txt" 2>>"$tmp/err"
    check "$m: inspect single file exits 0" test $? -eq 0
    "$VF_CLI" inspect "$dir" --json >"$tmp/$m.dir.json" 2>>"$tmp/err"
    check "$m: inspect folder --json exits 0" test $? -eq 0
    "$VF_CLI" inspect --json "$file" --config "$dir" >"$tmp/$m.file.json" 2>>"$tmp/err"
    check "$m: inspect single file --json exits 0" test $? -eq 0
    check "$m: nothing on stderr" test ! -s "$tmp/err"
done

text_sdxl() {
    local f=$1
    grep -q 'SDXL' "$f" && grep -q '^text_encoder ' "$f" && grep -q '^text_encoder_2 ' "$f" \
        && grep -q '^unet ' "$f" && grep -q '^vae ' "$f" && grep -q '^total ' "$f"
}
check "sdxl folder text: SDXL, four components and a total" text_sdxl "$tmp/sdxl.dir.txt"
check "sdxl single-file text: SDXL, four components and a total" text_sdxl "$tmp/sdxl.file.txt"
check "sdxl layouts named" grep -q 'layout: *diffusers folder' "$tmp/sdxl.dir.txt"
check "sdxl single file named" grep -q 'layout: *single file' "$tmp/sdxl.file.txt"
check "sd15 text: SD15 without text_encoder_2" \
    bash -c "grep -q SD15 '$tmp/sd15.dir.txt' && ! grep -q '^text_encoder_2' '$tmp/sd15.dir.txt'"
# The text tables (parameter and byte columns) agree line for line across layouts.
same_table() { diff <(grep -E '^(text_encoder|unet|vae|total)' "$1") <(grep -E '^(text_encoder|unet|vae|total)' "$2"); }
check "sdxl text tables equal across layouts" same_table "$tmp/sdxl.dir.txt" "$tmp/sdxl.file.txt"

compare_json() {
    python3 - "$1" "$2" "$3" "$4" <<'PY'
import json, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
arch, ncomp = sys.argv[3], int(sys.argv[4])
for r, layout in ((a, "diffusers"), (b, "single_file")):
    assert r["architecture"] == arch and r["layout"] == layout, (r["architecture"], r["layout"])
    assert len(r["components"]) == ncomp, list(r["components"])
    t = r["total"]
    assert t["parameters"] == sum(c["parameters"] for c in r["components"].values())
    assert t["bytes"] == sum(t["bytes_by_dtype"].values())
    for name, c in r["components"].items():
        assert c["parameters"] > 0 and c["tensors"] > 0, name
        assert c["bytes"] == 2 * c["parameters"], name  # the fixtures are float16
        assert c["bytes_by_dtype"] == {"F16": c["bytes"]}, name
assert set(a["components"]) == set(b["components"])
for name in a["components"]:
    for k in ("parameters", "bytes", "tensors", "bytes_by_dtype"):
        assert a["components"][name][k] == b["components"][name][k], (name, k)
PY
}
check "sdxl --json: same counts for both layouts" compare_json "$tmp/sdxl.dir.json" "$tmp/sdxl.file.json" sdxl 4
check "sd15 --json: same counts for both layouts" compare_json "$tmp/sd15.dir.json" "$tmp/sd15.file.json" sd15 3

"$VF_CLI" inspect "$tmp/nonexistent" >/dev/null 2>"$tmp/err"
check "missing model exits 1" test $? -eq 1
check "... naming the path" grep -q "$tmp/nonexistent" "$tmp/err"
mkdir "$tmp/empty"
"$VF_CLI" inspect "$tmp/empty" >/dev/null 2>"$tmp/err"
check "a folder without model_index.json exits 1 naming it" \
    bash -c "grep -q 'model_index.json' '$tmp/err'"
"$VF_CLI" inspect >/dev/null 2>&1
check "no MODEL exits 2" test $? -eq 2
"$VF_CLI" inspect "$ref/tiny-sdxl/diffusers" --bogus >/dev/null 2>&1
check "unknown option exits 2" test $? -eq 2
"$VF_CLI" inspect --help >"$tmp/help"
check "--help exits 0 and documents --config and --json" \
    bash -c "grep -q -- --config '$tmp/help' && grep -q -- --json '$tmp/help'"

finish
