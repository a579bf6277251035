#!/usr/bin/env bash
# vramfit generate --lora PATH[:STRENGTH] (repeatable), on the tiny reference
# fixtures with the LoRAs of tests/data/lora: strength 0 gives the image of no
# LoRA byte for byte; the same factors in kohya's and in PEFT's format give the
# same image; a LoRA changes the image, PATH alone means strength 1; what each
# LoRA matched is printed to stderr (not with --quiet); a LoRA for the other
# architecture, a missing file and a bad spec are errors (exit 1, 1, 2).
set -u
: "${VF_CLI:?set VF_CLI to the vramfit binary}"
refroot=${VF_SHARED:-}/reference
[ -n "${VF_SHARED:-}" ] && [ -f "$refroot/tiny-sdxl/reference.safetensors" ] || {
    echo "SKIP: ../shared/reference not found (set VF_SHARED)"; exit 77; }
data=${VF_TESTDATA:-$(dirname "$0")/../data}/lora
[ -f "$data/sdxl_peft.safetensors" ] || { echo "FAIL: $data/sdxl_peft.safetensors missing" >&2; exit 1; }

. "$(dirname "$0")/check.bash"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

xl=$refroot/tiny-sdxl/diffusers
sd=$refroot/tiny-sd15/diffusers
gen() { # model output [args...]: runs generate, stderr to output.err
    local model=$1 out=$2
    shift 2
    "$VF_CLI" generate --model "$model" --prompt "a photo of a cat wearing a tiny hat" --steps 2 \
        --width 64 --height 64 --seed 7 --output "$tmp/$out.png" "$@" 2>"$tmp/$out.err" >/dev/null
}

gen "$xl" none
check "generate without a LoRA" test -s "$tmp/none.png"
gen "$xl" zero --lora "$data/sdxl_peft.safetensors:0" --lora "$data/sdxl_b.safetensors:0.0"
check "strength 0 is the image of no LoRA, byte for byte" cmp -s "$tmp/none.png" "$tmp/zero.png"

gen "$xl" peft --lora "$data/sdxl_peft.safetensors:0.8"
gen "$xl" kohya --lora "$data/sdxl_kohya.safetensors:0.8"
gen "$xl" sgm --lora "$data/sdxl_kohya_sgm.safetensors:.8"
check "a LoRA changes the image" test -s "$tmp/peft.png" -a -s "$tmp/none.png"
check "  ... and it differs" bash -c "! cmp -s '$tmp/none.png' '$tmp/peft.png'"
check "PEFT and kohya files of the same factors give the same image" cmp -s "$tmp/peft.png" "$tmp/kohya.png"
check "kohya names in the original layout too" cmp -s "$tmp/peft.png" "$tmp/sgm.png"

gen "$xl" one --lora "$data/sdxl_b.safetensors"
gen "$xl" one_explicit --lora "$data/sdxl_b.safetensors:1"
check "PATH alone is strength 1" cmp -s "$tmp/one.png" "$tmp/one_explicit.png"
gen "$xl" two --lora "$data/sdxl_peft.safetensors:0.8" --lora "$data/sdxl_b.safetensors:-0.5"
check "two LoRAs differ from one" bash -c "! cmp -s '$tmp/peft.png' '$tmp/two.png'"
check "stderr says what each LoRA matched" \
    grep -q "sdxl_peft.safetensors: strength 0.8, 288 weights (text_encoder 12, text_encoder_2 12, unet 264), rank 4, 0 of 576 keys match nothing" "$tmp/two.err"
check "  ... for each LoRA, with its strength" grep -q "sdxl_b.safetensors: strength -0.5," "$tmp/two.err"
gen "$xl" quiet --quiet --lora "$data/sdxl_b.safetensors:0.3"
check "--quiet prints nothing" test ! -s "$tmp/quiet.err"

gen "$sd" sd15 --lora "$data/sd15_kohya.safetensors:0.8" --lora "$data/sd15_attn_old.safetensors:0.5"
check "SD1.5: kohya and old diffusers names" grep -q "sd15_attn_old.safetensors: strength 0.5, 80 weights (unet 80), rank 4, 0 of 160 keys" "$tmp/sd15.err"

gen "$xl" wrong --lora "$data/sd15_peft.safetensors:0.8"
rc=$?
check "an SD1.5 LoRA on SDXL exits 1" test "$rc" = 1
check "  ... saying why" grep -q "is the LoRA for another architecture" "$tmp/wrong.err"
check "  ... and writes nothing" test ! -e "$tmp/wrong.png"
gen "$xl" absent --lora "$tmp/absent.safetensors:0.5"
rc=$?
check "a missing LoRA file exits 1 naming it" bash -c "test $rc = 1 && grep -q absent.safetensors '$tmp/absent.err'"
gen "$xl" spec --lora "$data/sdxl_b.safetensors:0.5x"
rc=$?
check "a bad strength is a usage error (exit 2)" bash -c "test $rc = 2 && grep -q -- '--lora' '$tmp/spec.err'"
gen "$xl" nan --lora "$data/sdxl_b.safetensors:nan"
rc=$?
check "a strength that is not finite is a usage error" test "$rc" = 2
"$VF_CLI" generate --help >"$tmp/help.txt"
check "--help documents --lora" grep -q -- "--lora PATH\[:STRENGTH\]" "$tmp/help.txt"

finish
