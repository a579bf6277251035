#!/usr/bin/env bash
# What users touch on the command line (issue 7): --help for every subcommand,
# usage errors that exit 2 and name the fix, --prompt-syntax (a1111 windows vs
# diffusers' single window; the default is diffusers' bit for bit on a prompt
# without syntax), --preview (a PNG of the image's size), --json (one object
# on stdout, success or failure, 64-bit seed exact), progress lines (plain when
# not a terminal, a bar with it/s and ETA on one), and tokenizers found in a
# Hugging Face cache (HF_HOME) for a single-file checkpoint, or an error that
# lists where it looked. Files are read with python3's standard library.
set -u
: "${VF_CLI:?set VF_CLI to the vramfit binary}"
command -v python3 >/dev/null || { echo "SKIP: python3 not found"; exit 77; }

. "$(dirname "$0")/check.bash"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- help and usage (no model needed) ----------------------------------------
for c in info inspect tokenize encode generate synth plan; do
    "$VF_CLI" "$c" --help >"$tmp/help" 2>"$tmp/err"
    check "$c --help exits 0" test $? -eq 0
    check "  ... prints its usage on stdout" grep -q "^usage: vramfit $c" "$tmp/help"
    check "  ... and nothing on stderr" test ! -s "$tmp/err"
    "$VF_CLI" "$c" --no-such-option >/dev/null 2>"$tmp/err"
    check "$c --no-such-option exits 2" test $? -eq 2
    check "  ... naming the option" grep -q -- "--no-such-option" "$tmp/err"
done
"$VF_CLI" --help >"$tmp/help"
check "vramfit --help exits 0" test $? -eq 0
for c in info inspect tokenize encode generate synth plan; do
    check "  ... lists $c" grep -q "^  $c " "$tmp/help"
done
"$VF_CLI" >/dev/null 2>&1
check "vramfit without a command exits 2" test $? -eq 2
"$VF_CLI" frobnicate >/dev/null 2>&1
check "an unknown command exits 2" test $? -eq 2
"$VF_CLI" generate --help | grep -q -- "--prompt-syntax S"
check "generate --help documents --prompt-syntax" test $? -eq 0
"$VF_CLI" generate --help | grep -q -- "--preview N"
check "generate --help documents --preview" test $? -eq 0

g=(generate --model "$tmp/none" --prompt x)
"$VF_CLI" "${g[@]}" --output "$tmp/a.png" --prompt-syntax compel >/dev/null 2>"$tmp/err"
check "--prompt-syntax compel exits 2" test $? -eq 2
check "  ... and lists the syntaxes" grep -q "a1111, plain or diffusers" "$tmp/err"
"$VF_CLI" "${g[@]}" --output "$tmp/a.png" --preview 0 >/dev/null 2>"$tmp/err"
check "--preview 0 exits 2" test $? -eq 2
"$VF_CLI" "${g[@]}" --output "$tmp/a.png" --preview-output "$tmp/p.png" >/dev/null 2>"$tmp/err"
check "--preview-output without --preview exits 2" test $? -eq 2
"$VF_CLI" "${g[@]}" --output "$tmp/a.png" --preview 1 --preview-output "$tmp/a.png" >/dev/null 2>"$tmp/err"
check "a preview over the output exits 2" test $? -eq 2
"$VF_CLI" "${g[@]}" --output "$tmp/no/such/dir/a.png" >/dev/null 2>"$tmp/err"
check "an output folder that does not exist exits 1" test $? -eq 1
check "  ... before any work, saying to create it" grep -q "create it first" "$tmp/err"
"$VF_CLI" "${g[@]}" --output "$tmp/a.png" --json >"$tmp/out" 2>"$tmp/err"
check "--json on a missing model exits 1" test $? -eq 1
check "  ... with ok false, the status and exit code on stdout" python3 - "$tmp/out" <<'PY'
import json, sys
o = json.load(open(sys.argv[1]))
assert o["ok"] is False and o["exit_code"] == 1 and o["status"] and "none" in o["message"], o
PY

ref=${VF_SHARED:-}/reference
if ! { [ -n "${VF_SHARED:-}" ] && [ -f "$ref/tiny-sd15/reference.safetensors" ]; }; then
    echo "note: ../shared/reference not found (set VF_SHARED); model checks not run"
    finish
    exit
fi

cat >"$tmp/lib.py" <<'PY'
import json, struct

def st_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)), f.read()

def png_size(path):
    with open(path, "rb") as f:
        d = f.read(24)
    assert d[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", d[16:24])
PY

long="$(python3 -c 'print("a (red:1.3) fox, [snowy] forest, soft light, " * 9)')"
sd15=$ref/tiny-sd15

# --- encode: windows and the default's identity -----------------------------
shape() { python3 - "$1" "$2" <<PY
import sys; sys.path.insert(0, "$tmp"); from lib import st_header
h, _ = st_header(sys.argv[1]); print(h[sys.argv[2]]["shape"])
PY
}
"$VF_CLI" encode --model "$sd15/diffusers" --prompt "$long" --output "$tmp/long.st" >/dev/null 2>&1
check "encode of a long prompt exits 0" test $? -eq 0
check "  ... gives two windows, [1, 154, 16]" test "$(shape "$tmp/long.st" prompt_embeds)" = "[1, 154, 16]"
check "  ... the negative padded to match" test "$(shape "$tmp/long.st" negative_prompt_embeds)" = "[1, 154, 16]"
"$VF_CLI" encode --model "$sd15/diffusers" --prompt "$long" --prompt-syntax diffusers --output "$tmp/d.st" \
    >/dev/null 2>&1
check "encode --prompt-syntax diffusers cuts to [1, 77, 16]" test "$(shape "$tmp/d.st" prompt_embeds)" = "[1, 77, 16]"
p="a photo of a cat wearing a tiny hat"
"$VF_CLI" encode --model "$sd15/diffusers" --prompt "$p" --negative "blurry" --output "$tmp/a.st" >/dev/null 2>&1 &&
    "$VF_CLI" encode --model "$sd15/diffusers" --prompt "$p" --negative "blurry" --prompt-syntax diffusers \
        --output "$tmp/b.st" >/dev/null 2>&1
check "encode: the default syntax is diffusers' bytes for a plain prompt" python3 - "$tmp" <<'PY'
import sys; sys.path.insert(0, sys.argv[1]); from lib import st_header
(ha, da), (hb, db) = st_header(sys.argv[1] + "/a.st"), st_header(sys.argv[1] + "/b.st")
assert da == db and ha["prompt_embeds"] == hb["prompt_embeds"]
PY
"$VF_CLI" encode --model "$sd15/diffusers" --prompt "(a:1.2.3)" --output "$tmp/e.st" >/dev/null 2>"$tmp/err"
check "a weight that is not a number exits 1" test $? -eq 1
check "  ... naming it" grep -q "weight '1.2.3'" "$tmp/err"

# --- generate: preview, json, progress -----------------------------------------
seed=18446744073709551615
"$VF_CLI" generate --model "$sd15/diffusers" --prompt "$long" --negative "blurry" --steps 3 --seed $seed \
    --preview 2 --json --output "$tmp/g.png" >"$tmp/out" 2>"$tmp/err"
check "generate --preview 2 --json exits 0" test $? -eq 0
check "  ... writes the image and its preview beside it, same size" python3 - "$tmp" <<'PY'
import sys; sys.path.insert(0, sys.argv[1]); from lib import png_size
assert png_size(sys.argv[1] + "/g.png") == png_size(sys.argv[1] + "/g.preview.png") == (64, 64)
PY
check "  ... prints one JSON object with the run's facts" python3 - "$tmp/out" "$tmp/g.png" $seed <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
assert len(lines) == 1, lines
o = json.loads(lines[0])
assert o["ok"] is True and o["output"] == sys.argv[2] and o["seed"] == int(sys.argv[3]), o
assert o["steps"] == 3 and o["width"] == 64 and o["sampler"] == "ddim" and o["prompt_syntax"] == "a1111", o
assert o["preview"] == sys.argv[2][:-4] + ".preview.png", o
t = o["seconds"]
assert all(t[k] >= 0 for k in ("load", "encode_prompt", "denoise", "decode", "per_step", "total")), t
assert t["total"] >= t["denoise"] > 0, t
PY
check "  ... plain progress lines on a pipe" grep -q "^denoise 3/3 .* it/s" "$tmp/err"
check "  ... without terminal control characters" python3 - "$tmp/err" <<'PY'
import sys
d = open(sys.argv[1], "rb").read()
assert b"\r" not in d and b"\x1b" not in d
PY
if command -v script >/dev/null && script -qfec true /dev/null >/dev/null 2>&1; then
    script -qfec "$(printf '%q ' "$VF_CLI" generate --model "$sd15/diffusers" --prompt cat --steps 3 \
        --output "$tmp/t.png")" /dev/null >"$tmp/tty" 2>&1
    check "on a terminal: a redrawn bar with it/s and ETA" python3 - "$tmp/tty" <<'PY'
import sys
d = open(sys.argv[1], "rb").read()
assert b"\r" in d and b"denoise [" in d and b"it/s" in d and (b"ETA" in d or b"done in" in d), d[-400:]
PY
fi

# --- tokenizers from a Hugging Face cache ---------------------------------------
"$VF_CLI" synth --arch sd15 --preset tiny --output "$tmp/synth" >/dev/null 2>&1
snap=$tmp/hf/hub/models--stable-diffusion-v1-5--stable-diffusion-v1-5/snapshots/abc123
mkdir -p "$snap" && cp -r "$tmp/synth/tokenizer" "$snap/"
single=(encode --model "$sd15/tiny-sd15.safetensors" --config "$sd15/diffusers" --prompt "a cat")
HF_HOME=$tmp/hf "$VF_CLI" "${single[@]}" --output "$tmp/c.st" >/dev/null 2>"$tmp/err"
check "a single file finds its tokenizer in \$HF_HOME's cache" test $? -eq 0
HF_HOME=$tmp/empty "$VF_CLI" "${single[@]}" --output "$tmp/n.st" >/dev/null 2>"$tmp/err"
check "  ... and without one exits 1" test $? -eq 1
check "  ... listing where it looked and what to do" python3 - "$tmp/err" "$tmp/empty/hub" <<'PY'
import sys
m = open(sys.argv[1]).read()
for want in ("beside the file", sys.argv[2], "runwayml/stable-diffusion-v1-5/tokenizer",
             "openai/clip-vit-large-patch14", "--tokenizer", "huggingface-cli download"):
    assert want in m, (want, m)
PY

finish
