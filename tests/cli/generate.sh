#!/usr/bin/env bash
# vramfit generate: with each fixture's reference.json settings and seed, the PNG
# reproduces diffusers' image (../shared/reference/<name>/reference.safetensors
# "image", float [64,64,3]) within 1/255 per channel, from the diffusers folder
# (tiny-sdxl, tiny-sd15) and from the single file (tiny-sdxl); the "parameters"
# text chunk is AUTOMATIC1111's format; --dump writes the intermediates; plain
# progress lines when stderr is not a terminal, none with --quiet; bad usage
# exits 2, bad values exit 1 naming the option, SIGINT cancels with exit 130 and
# writes nothing. PNG and safetensors are read with python3's standard library.
set -u
: "${VF_CLI:?set VF_CLI to the vramfit binary}"
command -v python3 >/dev/null || { echo "SKIP: python3 not found"; exit 77; }
refroot=${VF_SHARED:-}/reference
[ -n "${VF_SHARED:-}" ] && [ -f "$refroot/tiny-sdxl/reference.safetensors" ] || {
    echo "SKIP: ../shared/reference not found (set VF_SHARED)"; exit 77; }

. "$(dirname "$0")/check.bash"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1/reference.json" "$2"; }

cat >"$tmp/lib.py" <<'PY'
import json, struct, zlib

def read_png(path):
    """8-bit RGB PNG -> (width, height, bytes of h*w*3, {text key: value})."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, text, ihdr = 8, b"", {}, None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        assert zlib.crc32(kind + body) == struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0], "bad CRC"
        pos += 12 + n
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"tEXt":
            k, v = body.split(b"\0", 1)
            text[k.decode("latin-1")] = v.decode("latin-1")
        elif kind == b"iTXt":
            k, rest = body.split(b"\0", 1)
            comp, rest = rest[0], rest[2:]
            _lang, _tk, v = rest.split(b"\0", 2)
            text[k.decode("latin-1")] = (zlib.decompress(v) if comp else v).decode("utf-8")
        elif kind == b"IEND":
            break
    w, h, depth, color, _, _, interlace = ihdr
    assert depth == 8 and color == 2 and interlace == 0, ihdr
    raw, stride, bpp = zlib.decompress(idat), w * 3, 3
    out, prev = bytearray(), bytearray(stride)
    for y in range(h):
        ft, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if ft == 1: line[i] = (line[i] + a) & 255
            elif ft == 2: line[i] = (line[i] + b) & 255
            elif ft == 3: line[i] = (line[i] + (a + b) // 2) & 255
            elif ft == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
            else: assert ft == 0, ft
        out += line
        prev = line
    return w, h, bytes(out), text

def read_st(path):
    """safetensors (F32 only) -> {name: (shape, tuple of floats)}."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", (k, v["dtype"])
        a, b = v["data_offsets"]
        out[k] = (v["shape"], struct.unpack("<%df" % ((b - a) // 4), data[a:b]))
    return out
PY

# compare_png PNG REFDIR EXPECTED_PARAMETERS: pixels within 1/255 of the reference image.
compare_png() {
    PYTHONPATH=$tmp python3 - "$1" "$2/reference.safetensors" "$3" <<'PY'
import sys
from lib import read_png, read_st
w, h, px, text = read_png(sys.argv[1])
shape, ref = read_st(sys.argv[2])["image"]
assert [h, w, 3] == shape, ([h, w, 3], shape)
err = max(abs(p / 255.0 - r) for p, r in zip(px, ref))
print("  max |png/255 - reference| = %.3g (%.2f/255)" % (err, err * 255))
assert err <= 1.0 / 255 + 1e-6, err
want = sys.argv[3].replace("\\n", "\n")
got = text.get("parameters")
assert got == want, "parameters chunk:\n%r\nwanted:\n%r" % (got, want)
PY
}

# compare_dump DUMP REFDIR: init_latents bit-exact, the rest within 1e-4.
compare_dump() {
    PYTHONPATH=$tmp python3 - "$1" "$2/reference.safetensors" <<'PY'
import sys
from lib import read_st
got, want = read_st(sys.argv[1]), read_st(sys.argv[2])
keys = [k for k in want if k in ("init_latents", "prompt_embeds", "unet0_out", "vae_decoded", "image")
        or k.startswith("latents_after_step")]
assert "latents_after_step3" in keys and "image" in keys, keys
for k in keys:
    (gs, g), (ws, w) = got[k], want[k]
    assert gs == ws, (k, gs, ws)
    if k == "init_latents":
        assert g == w, "init_latents differ"
        continue
    err = max(abs(x - y) for x, y in zip(g, w)) / max(abs(y) for y in w)
    assert err <= 1e-4, (k, err)
print("  %d tensors match" % len(keys))
PY
}

# --- usage ------------------------------------------------------------------
"$VF_CLI" generate --help >"$tmp/help"
check "generate --help exits 0" test $? -eq 0
check "generate --help shows the usage" grep -q -- "--output FILE.png" "$tmp/help"
"$VF_CLI" generate >/dev/null 2>&1
check "generate without arguments exits 2" test $? -eq 2
x=$refroot/tiny-sdxl/diffusers
"$VF_CLI" generate --model "$x" --prompt x >/dev/null 2>&1
check "generate without --output exits 2" test $? -eq 2
"$VF_CLI" generate --model "$x" --prompt x --output "$tmp/u.png" --bogus 1 >/dev/null 2>&1
check "generate with an unknown option exits 2" test $? -eq 2
"$VF_CLI" generate --model "$x" --prompt x --output "$tmp/u.png" --steps four >/dev/null 2>&1
check "generate --steps four exits 2" test $? -eq 2
"$VF_CLI" generate --model "$x" --prompt x --output "$tmp/u.png" --sampler heun >/dev/null 2>&1
check "generate --sampler heun exits 2" test $? -eq 2
"$VF_CLI" generate --model "$x" --prompt x --output "$tmp/u.png" --seed -5 >/dev/null 2>&1
check "generate --seed -5 exits 2" test $? -eq 2
"$VF_CLI" generate --model "$x" --prompt x --output "$tmp/u.png" --width 63 >/dev/null 2>"$tmp/err"
check "generate --width 63 exits 1" test $? -eq 1
check "  ... and the message names width" grep -q "width 63" "$tmp/err"
"$VF_CLI" generate --model "$x" --prompt x --output "$tmp/u.png" --steps 0 >/dev/null 2>"$tmp/err"
check "generate --steps 0 exits 1" test $? -eq 1
check "  ... and the message names steps" grep -q "steps" "$tmp/err"
"$VF_CLI" generate --model "$x" --prompt x --output "$tmp/u.png" --cfg nan >/dev/null 2>"$tmp/err"
check "generate --cfg nan exits 1" test $? -eq 1
check "  ... and the message names guidance" grep -q "guidance" "$tmp/err"
check "  ... and no image was written" test ! -e "$tmp/u.png"

# --- parity with the reference image ------------------------------------------
# run NAME LAYOUT OUT [extra args]: generate with the fixture's reference settings.
run() {
    local name=$1 layout=$2 out=$3 ref=$refroot/$1
    shift 3
    local model=(--model "$ref/diffusers")
    [ "$layout" = single ] && model=(--model "$ref/$name.safetensors" --tokenizer "$ref/diffusers" --config "$ref/diffusers")
    "$VF_CLI" generate "${model[@]}" --prompt "$(field "$ref" prompt)" --negative "$(field "$ref" negative_prompt)" \
        --steps "$(field "$ref" steps)" --cfg "$(field "$ref" guidance_scale)" --width "$(field "$ref" width)" \
        --height "$(field "$ref" height)" --seed "$(field "$ref" seed)" --output "$out" "$@"
}
params() { # NAME SAMPLER MODEL: the expected "parameters" text, \n for newlines
    local ref=$refroot/$1
    printf '%s\\nNegative prompt: %s\\nSteps: %s, Sampler: %s, CFG scale: %s, Seed: %s, Size: %sx%s, Model: %s' \
        "$(field "$ref" prompt)" "$(field "$ref" negative_prompt)" "$(field "$ref" steps)" "$2" \
        "$(python3 -c "print('%g' % float('$(field "$ref" guidance_scale)'))")" "$(field "$ref" seed)" \
        "$(field "$ref" width)" "$(field "$ref" height)" "$3"
}

run tiny-sdxl diffusers "$tmp/xl.png" --dump "$tmp/xl.safetensors" >"$tmp/out" 2>"$tmp/err"
check "generate tiny-sdxl (diffusers folder) exits 0" test $? -eq 0
check "  ... the PNG matches the reference image and parameters" \
    compare_png "$tmp/xl.png" "$refroot/tiny-sdxl" "$(params tiny-sdxl Euler diffusers)"
check "  ... --dump matches the reference intermediates" compare_dump "$tmp/xl.safetensors" "$refroot/tiny-sdxl"
check "  ... progress lines on a non-terminal stderr" grep -q "^denoise 4/4" "$tmp/err"
check "  ... no terminal control characters in them" test -z "$(tr -d '\n' <"$tmp/err" | tr -d '[:print:]')"
check "  ... a summary on stdout" grep -q "64x64, 4 steps, Euler" "$tmp/out"

run tiny-sdxl single "$tmp/xl1.png" --quiet >"$tmp/out" 2>"$tmp/err"
check "generate tiny-sdxl (single file, --quiet) exits 0" test $? -eq 0
check "  ... the PNG matches the reference image and parameters" \
    compare_png "$tmp/xl1.png" "$refroot/tiny-sdxl" "$(params tiny-sdxl Euler tiny-sdxl)"
check "  ... --quiet prints nothing" test ! -s "$tmp/out" -a ! -s "$tmp/err"

run tiny-sd15 diffusers "$tmp/sd15.png" >"$tmp/out" 2>"$tmp/err"
check "generate tiny-sd15 (diffusers folder, DDIM) exits 0" test $? -eq 0
check "  ... the PNG matches the reference image and parameters" \
    compare_png "$tmp/sd15.png" "$refroot/tiny-sd15" "$(params tiny-sd15 DDIM diffusers)"

# --- Ctrl-C ------------------------------------------------------------------
# Job control on, so the background run gets SIGINT like a foreground one would.
# Its stderr goes to a file of its own, emptied before the start: the child
# truncates its redirection only after the fork, so a file an earlier run
# filled could show "denoise 1/" to the loop below before the handler exists.
: >"$tmp/int.err"
set -m
"$VF_CLI" generate --model "$x" --prompt "a cat" --steps 1000 --width 256 --height 256 \
    --output "$tmp/int.png" >"$tmp/out" 2>"$tmp/int.err" &
pid=$!
seen=0
for _ in $(seq 600); do grep -q "^denoise 1/" "$tmp/int.err" && seen=1 && break; sleep 0.1; done
kill -INT "$pid"
wait "$pid"
rc=$?
set +m
check "denoising started within 60 s" test "$seen" -eq 1
check "SIGINT during denoising exits 130" test "$rc" -eq 130
check "  ... says it was cancelled" grep -q "cancelled" "$tmp/int.err"
check "  ... and writes no image" test ! -e "$tmp/int.png" -a ! -e "$tmp/int.png.tmp"

finish
