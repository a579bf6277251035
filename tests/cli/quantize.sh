#!/usr/bin/env bash
# vramfit quantize: the reference fixtures quantized to every dtype, as a
# diffusers folder and as a single file, read back by `vramfit inspect --json`
# with the stored dtypes and unchanged parameter counts, and turned into a PNG
# by `vramfit generate`; --components limits what is converted; an existing
# output is refused (exit 1) unless --force; bad usage (unknown dtype or
# component, missing arguments) exits 2 naming the argument; an unreadable
# input exits 1 naming the file; nothing half-written is left behind.
set -u
: "${VF_CLI:?set VF_CLI to the vramfit binary}"
if [ -z "${VF_SHARED:-}" ] || [ ! -f "$VF_SHARED/reference/README.md" ]; then
    echo "SKIP: ../shared/reference not found (set VF_SHARED)"
    exit 77
fi
R=$VF_SHARED/reference

. "$(dirname "$0")/check.bash"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# the JSON object of one component in `inspect --json` output
component() { grep -o "\"$2\": {[^}]*}[^}]*}" "$1"; }

"$VF_CLI" quantize --help >"$tmp/help"
check "quantize --help exits 0" test $? -eq 0
check "quantize --help shows the usage" grep -q -- "--dtype f16|bf16|f8|q8|q4" "$tmp/help"

"$VF_CLI" quantize >/dev/null 2>&1
check "quantize without arguments exits 2" test $? -eq 2
"$VF_CLI" quantize "$R/tiny-sd15/diffusers" "$tmp/x" >/dev/null 2>"$tmp/err"
check "quantize without --dtype exits 2" test $? -eq 2
check "  ... saying --dtype is required" grep -q -- "--dtype is required" "$tmp/err"
"$VF_CLI" quantize "$R/tiny-sd15/diffusers" "$tmp/x" --dtype int8 >/dev/null 2>"$tmp/err"
check "an unknown --dtype exits 2" test $? -eq 2
check "  ... naming it" grep -q "'int8'" "$tmp/err"
"$VF_CLI" quantize "$R/tiny-sd15/diffusers" "$tmp/x" --dtype q8 --components unet,clip >/dev/null 2>"$tmp/err"
check "an unknown component exits 2" test $? -eq 2
check "  ... naming it" grep -q "unknown component 'clip'" "$tmp/err"
"$VF_CLI" quantize "$R/tiny-sd15/diffusers" "$tmp/x" "$tmp/y" --dtype q8 >/dev/null 2>&1
check "a third path exits 2" test $? -eq 2
"$VF_CLI" quantize "$tmp/absent" "$tmp/x" --dtype q8 >/dev/null 2>"$tmp/err"
check "an unreadable input exits 1" test $? -eq 1
check "  ... naming the file" grep -q "$tmp/absent" "$tmp/err"
check "  ... and writes nothing" test ! -e "$tmp/x"

"$VF_CLI" inspect "$R/tiny-sd15/diffusers" --json >"$tmp/orig.json"
orig_params=$(component "$tmp/orig.json" unet | grep -o '"parameters": [0-9]*')

for d in f16 bf16 f8 q8 q4; do
    D=$(echo $d | tr a-z A-Z)
    [ $d = f8 ] && D=F8_E4M3
    "$VF_CLI" quantize "$R/tiny-sd15/diffusers" "$tmp/sd15-$d" --dtype $d >"$tmp/out" 2>"$tmp/err"
    check "quantize sd15 folder to $d exits 0" test $? -eq 0
    check "  ... copies the tokenizer and scheduler" test -f "$tmp/sd15-$d/tokenizer/vocab.json" -a \
        -f "$tmp/sd15-$d/scheduler/scheduler_config.json"
    "$VF_CLI" inspect "$tmp/sd15-$d" --json >"$tmp/$d.json" 2>&1
    check "  ... inspect --json exits 0" test $? -eq 0
    check "  ... the unet has $D bytes" sh -c "grep -o '\"unet\": {[^}]*}[^}]*}' '$tmp/$d.json' | grep -q '\"$D\": [1-9]'"
    check "  ... and the same parameters" sh -c "grep -o '\"unet\": {[^}]*}[^}]*}' '$tmp/$d.json' | grep -q '$orig_params'"
done
check "q8 is smaller than f16" test "$(stat -c %s "$tmp/sd15-q8/unet/diffusion_pytorch_model.safetensors")" -lt \
    "$(stat -c %s "$tmp/sd15-f16/unet/diffusion_pytorch_model.safetensors")"
check "q4 is smaller than q8" test "$(stat -c %s "$tmp/sd15-q4/unet/diffusion_pytorch_model.safetensors")" -lt \
    "$(stat -c %s "$tmp/sd15-q8/unet/diffusion_pytorch_model.safetensors")"

for d in q8 q4 f8; do
    "$VF_CLI" generate --model "$tmp/sd15-$d" --prompt "a red circle" --steps 2 --seed 1 --quiet \
        --output "$tmp/sd15-$d.png" >/dev/null 2>"$tmp/err"
    check "generate from the $d folder exits 0" test $? -eq 0
    check "  ... and writes a PNG" sh -c "head -c 8 '$tmp/sd15-$d.png' | od -An -c | grep -q 'P   N   G'"
done

# an existing output: refused, then replaced with --force
"$VF_CLI" quantize "$R/tiny-sd15/diffusers" "$tmp/sd15-q8" --dtype q4 >/dev/null 2>"$tmp/err"
check "an existing output exits 1" test $? -eq 1
check "  ... pointing at --force" grep -q -- "--force" "$tmp/err"
"$VF_CLI" quantize "$R/tiny-sd15/diffusers" "$tmp/sd15-q8" --dtype q4 --force >/dev/null 2>&1
check "--force replaces it" test $? -eq 0
"$VF_CLI" inspect "$tmp/sd15-q8" --json >"$tmp/forced.json"
check "  ... with the new dtype" grep -q '"Q4"' "$tmp/forced.json"

# --components: only the VAE converted
"$VF_CLI" quantize "$R/tiny-sd15/diffusers" "$tmp/vae-only" --dtype q8 --components vae >/dev/null 2>&1
check "--components vae exits 0" test $? -eq 0
"$VF_CLI" inspect "$tmp/vae-only" --json >"$tmp/vae.json"
check "  ... the vae has Q8 bytes" sh -c "grep -o '\"vae\": {[^}]*}[^}]*}' '$tmp/vae.json' | grep -q '\"Q8\"'"
check "  ... the unet has none" sh -c "! grep -o '\"unet\": {[^}]*}[^}]*}' '$tmp/vae.json' | grep -q '\"Q8\"'"
# the unet's tensor data (the file after its 8-byte length and header) is the original's
data_bytes() { echo $(( $(stat -c %s "$1") - 8 - $(od -An -t u8 -N8 "$1" | tr -d ' ') )); }
u0=$R/tiny-sd15/diffusers/unet/diffusion_pytorch_model.safetensors
u1=$tmp/vae-only/unet/diffusion_pytorch_model.safetensors
check "  ... its tensor data is the original's, byte for byte" bash -c \
    "test $(data_bytes "$u0") -eq $(data_bytes "$u1") && cmp -s <(tail -c $(data_bytes "$u0") '$u0') <(tail -c $(data_bytes "$u1") '$u1')"

# a single SDXL file (fused OpenCLIP q/k/v rows, transposed projection) to Q4 and F8
for d in q4 f8; do
    "$VF_CLI" quantize "$R/tiny-sdxl/tiny-sdxl.safetensors" "$tmp/sdxl-$d.safetensors" --dtype $d \
        --config "$R/tiny-sdxl/diffusers" >/dev/null 2>"$tmp/err"
    check "quantize the sdxl single file to $d exits 0" test $? -eq 0
    "$VF_CLI" inspect "$tmp/sdxl-$d.safetensors" --config "$R/tiny-sdxl/diffusers" --json >"$tmp/sdxl-$d.json" 2>&1
    check "  ... inspect reads it as a single file" grep -q '"layout": "single' "$tmp/sdxl-$d.json"
    "$VF_CLI" generate --model "$tmp/sdxl-$d.safetensors" --config "$R/tiny-sdxl/diffusers" \
        --tokenizer "$R/tiny-sdxl/diffusers" --prompt "a photo" --steps 2 --seed 3 --quiet \
        --output "$tmp/sdxl-$d.png" >/dev/null 2>"$tmp/err"
    check "  ... generate from it exits 0" test $? -eq 0
done
check "sdxl q4 has Q4 text_encoder_2 bytes (fused rows)" sh -c \
    "grep -o '\"text_encoder_2\": {[^}]*}[^}]*}' '$tmp/sdxl-q4.json' | grep -q '\"Q4\"'"
"$VF_CLI" quantize "$R/tiny-sdxl/tiny-sdxl.safetensors" "$tmp/sdxl-q4.safetensors" --dtype q8 \
    --config "$R/tiny-sdxl/diffusers" >/dev/null 2>&1
check "an existing output file exits 1" test $? -eq 1

check "no temporaries are left" test "$(ls -A "$tmp" | grep -c -e 'tmp-' -e '\.tmp$')" -eq 0

finish
