#!/usr/bin/env bash
# vramfit tokenize: ids of shared tokenizer_cases.json texts from the diffusers
# folder and the .gz (default and --window, plain and --json), SDXL's tokenizer_2
# padding with 0, and the failures: bad usage exits 2, a missing tokenizer or
# invalid UTF-8 exits 1 naming the cause. Skips (77) without VF_SHARED.
set -u
: "${VF_CLI:?set VF_CLI to the vramfit binary}"
ref="${VF_SHARED:-}/reference"
if [ -z "${VF_SHARED:-}" ] || [ ! -f "$ref/tokenizer_cases.json" ]; then
    echo "SKIP: set VF_SHARED to the shared reference tree"
    exit 77
fi
command -v python3 >/dev/null || { echo "SKIP: python3 not found"; exit 77; }

. "$(dirname "$0")/check.bash"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sd15="$ref/tiny-sd15/diffusers/tokenizer"
gz="$ref/clip/bpe_simple_vocab_16e6.txt.gz"
tok2="$ref/tiny-sdxl/diffusers/tokenizer_2"

# Every shared case: the CLI's line must equal the JSON's ids, space-separated.
python3 - "$ref/tokenizer_cases.json" "$tmp/cases" <<'PY'
import json, sys
cases = json.load(open(sys.argv[1]))
with open(sys.argv[2], "w") as f:
    for i, c in enumerate(cases):
        open("%s.%d.text" % (sys.argv[2], i), "w").write(c["text"])
        f.write("%d\t%s\t%s\n" % (i, " ".join(map(str, c["ids_untruncated"])),
                                  " ".join(map(str, c["ids"]))))
PY
all_cases() {
    local tok=$1 flag=$2 col=$3 i untr win want got
    while IFS=$'\t' read -r i untr win; do
        want=$untr
        [ "$col" = win ] && want=$win
        got=$("$VF_CLI" tokenize --tokenizer "$tok" $flag -- "$(cat "$tmp/cases.$i.text")") || return 1
        if [ "$got" != "$want" ]; then
            echo "case $i: got '$got' want '$want'" >&2
            return 1
        fi
    done <"$tmp/cases"
}
check "all shared cases, untruncated, vocab.json folder" all_cases "$sd15" "" untr
check "all shared cases, --window, vocab.json folder" all_cases "$sd15" --window win
check "all shared cases, untruncated, .gz" all_cases "$gz" "" untr
check "all shared cases, --window, .gz" all_cases "$gz" --window win

out=$("$VF_CLI" tokenize --tokenizer "$sd15" "a photo of a cat")
check "a photo of a cat" test "$out" = "49406 320 1125 539 320 2368 49407"

"$VF_CLI" tokenize --tokenizer "$tok2" --window --json 'cat!!' >"$tmp/json"
check "--json --window with tokenizer_2 pads with 0 and splits on '!'" python3 - "$tmp/json" <<'PY'
import json, sys
ids = json.load(open(sys.argv[1]))
assert len(ids) == 77, len(ids)
assert ids[:5] == [49406, 2368, 0, 0, 49407], ids[:5]
assert all(i == 0 for i in ids[5:])
PY

"$VF_CLI" tokenize --help >"$tmp/help"
check "--help exits 0 and documents --window" grep -q -- '--window' "$tmp/help"
"$VF_CLI" tokenize "text" >/dev/null 2>&1
check "missing --tokenizer exits 2" test $? -eq 2
"$VF_CLI" tokenize --tokenizer "$sd15" >/dev/null 2>&1
check "missing TEXT exits 2" test $? -eq 2
"$VF_CLI" tokenize --tokenizer "$sd15" --bogus x >/dev/null 2>&1
check "unknown option exits 2" test $? -eq 2
"$VF_CLI" tokenize --tokenizer "$tmp/none" x >/dev/null 2>"$tmp/err"
rc=$?
check "missing tokenizer exits 1" test $rc -eq 1
check "... naming it" grep -q "$tmp/none" "$tmp/err"
"$VF_CLI" tokenize --tokenizer "$sd15" $'bad \xff' >/dev/null 2>"$tmp/err"
rc=$?
check "invalid UTF-8 exits 1" test $rc -eq 1
check "... naming the prompt" grep -q 'prompt: not valid UTF-8' "$tmp/err"

finish
