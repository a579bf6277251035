#!/usr/bin/env bash
# vramfit synth: tiny SD1.5 and SDXL folders that `vramfit inspect` reads back
# with the expected architecture and parameter counts and that `vramfit
# generate` turns into a PNG; the same seed gives the same bytes; an occupied
# output folder is refused (exit 1) unless --force and it is a model; a write
# failure (file size limit) names the file and leaves nothing behind; bad usage
# exits 2.
set -u
: "${VF_CLI:?set VF_CLI to the vramfit binary}"

. "$(dirname "$0")/check.bash"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$VF_CLI" synth --help >"$tmp/help"
check "synth --help exits 0" test $? -eq 0
check "synth --help shows the usage" grep -q -- "--output DIR" "$tmp/help"

"$VF_CLI" synth >/dev/null 2>&1
check "synth without arguments exits 2" test $? -eq 2
"$VF_CLI" synth --arch sdxl >/dev/null 2>&1
check "synth without --output exits 2" test $? -eq 2
"$VF_CLI" synth --arch sd3 --output "$tmp/x" >/dev/null 2>&1
check "synth with an unknown arch exits 2" test $? -eq 2
"$VF_CLI" synth --arch sdxl --dtype q4 --output "$tmp/x" >/dev/null 2>&1
check "synth with an unknown dtype exits 2" test $? -eq 2
"$VF_CLI" synth --arch sdxl --seed -3 --output "$tmp/x" >/dev/null 2>&1
check "synth with a negative seed exits 2" test $? -eq 2
"$VF_CLI" synth --arch sdxl --preset huge --output "$tmp/x" >/dev/null 2>&1
check "synth with an unknown preset exits 2" test $? -eq 2
check "  ... and writes nothing" test ! -e "$tmp/x"

for arch in sd15 sdxl; do
    "$VF_CLI" synth --arch $arch --preset tiny --output "$tmp/$arch" >"$tmp/out" 2>"$tmp/err"
    check "synth $arch tiny exits 0" test $? -eq 0
    "$VF_CLI" inspect "$tmp/$arch" >"$tmp/inspect" 2>&1
    check "inspect $arch exits 0" test $? -eq 0
    want=$(echo $arch | tr a-z A-Z)
    check "  ... architecture $want" grep -q "architecture: *$want" "$tmp/inspect"
    # The unet's parameters as synth reported them, as inspect reads them.
    n=$(awk '$1 == "unet" { print $2 }' "$tmp/out")
    m=$(awk '$1 == "unet" { gsub(",", "", $2); print $2 }' "$tmp/inspect")
    check "  ... unet parameters agree ($n, $m)" test -n "$n" -a "$n" = "$m"
    "$VF_CLI" generate --model "$tmp/$arch" --prompt "a red circle" --steps 2 --seed 1 --quiet \
        --output "$tmp/$arch.png" >/dev/null 2>"$tmp/err"
    check "generate from the $arch tiny model exits 0" test $? -eq 0
    check "  ... and writes a PNG" sh -c "head -c 8 '$tmp/$arch.png' | od -An -c | grep -q 'P   N   G'"
done
check "sdxl has tokenizer_2 padding with \"!\"" grep -q '"pad_token":.*"!"' "$tmp/sdxl/tokenizer_2/tokenizer_config.json"
check "no temporaries are left" test "$(ls "$tmp" | grep -c tmp-)" -eq 0

"$VF_CLI" synth --arch sdxl --preset tiny --seed 5 --output "$tmp/again" >/dev/null 2>&1
"$VF_CLI" synth --arch sdxl --preset tiny --seed 5 --output "$tmp/again2" >/dev/null 2>&1
check "the same seed gives the same unet bytes" cmp -s "$tmp/again/unet/diffusion_pytorch_model.safetensors" \
    "$tmp/again2/unet/diffusion_pytorch_model.safetensors"
check "a different seed gives other bytes" sh -c "! cmp -s '$tmp/again/unet/diffusion_pytorch_model.safetensors' \
    '$tmp/sdxl/unet/diffusion_pytorch_model.safetensors'"

"$VF_CLI" synth --arch sdxl --preset tiny --output "$tmp/sdxl" >/dev/null 2>"$tmp/err"
check "synth into a non-empty folder exits 1" test $? -eq 1
check "  ... and says --force" grep -q -- "--force" "$tmp/err"
"$VF_CLI" synth --arch sd15 --preset tiny --force --output "$tmp/sdxl" >/dev/null 2>"$tmp/err"
check "synth --force over a model exits 0" test $? -eq 0
check "  ... and replaces it whole" test ! -e "$tmp/sdxl/text_encoder_2"
mkdir "$tmp/docs" && echo keep >"$tmp/docs/notes.txt"
"$VF_CLI" synth --arch sd15 --preset tiny --force --output "$tmp/docs" >/dev/null 2>"$tmp/err"
check "synth --force over a non-model folder exits 1" test $? -eq 1
check "  ... and leaves it alone" test -f "$tmp/docs/notes.txt"

# A disk that fills up: a 1 MB file size limit stops the 4 MB unet.
(ulimit -f 1024; trap '' XFSZ; "$VF_CLI" synth --arch sdxl --preset tiny --output "$tmp/full") >/dev/null 2>"$tmp/err"
check "synth with a failing write exits 1" test $? -eq 1
check "  ... and names the file" grep -q "unet/diffusion_pytorch_model.safetensors" "$tmp/err"
check "  ... and leaves nothing behind" test "$(ls "$tmp" | grep -c full)" -eq 0

finish
