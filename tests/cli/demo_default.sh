#!/usr/bin/env bash
# vramfit generate without --model runs the demo model: $VF_DEMO_MODEL when set
# (a synthesized tiny SD1.5 folder stands in for it here, so this runs without
# the trained weights), else <prefix>/share/vramfit/demo beside the command,
# else the source tree's models/demo. When none exists the command exits 1 and
# names every place it looked; a VF_DEMO_MODEL naming nothing is an error that
# says so; --help documents the lookup. Whether the trained model draws what
# it is asked is tests/unit/test_demo_model.c.
set -u
: "${VF_CLI:?set VF_CLI to the vramfit binary}"
src=$(cd "${VF_TESTDATA:-tests/data}/../.." && pwd)

. "$(dirname "$0")/check.bash"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$VF_CLI" generate --help >"$tmp/help"
check "--help says --model is optional" grep -q -- "\[--model PATH | --registry FILE --model ID\]" "$tmp/help"
check "--help names VF_DEMO_MODEL and models/demo" \
    sh -c "grep -q VF_DEMO_MODEL '$tmp/help' && grep -q 'models/demo' '$tmp/help' && grep -q 'share/vramfit/demo' '$tmp/help'"

"$VF_CLI" synth --arch sd15 --preset tiny --output "$tmp/stand-in" >/dev/null 2>&1
check "synth a stand-in model" test -f "$tmp/stand-in/model_index.json"

VF_DEMO_MODEL="$tmp/stand-in" "$VF_CLI" generate --prompt "a red circle" --seed 1 --steps 2 --quiet \
    --output "$tmp/a.png" 2>"$tmp/err"
check "VF_DEMO_MODEL is used without --model" test $? -eq 0 -a -s "$tmp/a.png"
check "  ... and the PNG records it as the model" grep -aq "Model: stand-in" "$tmp/a.png"

"$VF_CLI" generate --model "$tmp/stand-in" --prompt "a red circle" --seed 1 --steps 2 --quiet \
    --output "$tmp/b.png" 2>/dev/null
check "  ... the same picture as --model gives" cmp -s "$tmp/a.png" "$tmp/b.png"

VF_DEMO_MODEL="$tmp/nothing-here" "$VF_CLI" generate --prompt x --output "$tmp/c.png" 2>"$tmp/err"
check "VF_DEMO_MODEL naming nothing exits 1" test $? -eq 1
check "  ... and the message names VF_DEMO_MODEL and the path" \
    sh -c "grep -q VF_DEMO_MODEL '$tmp/err' && grep -q nothing-here '$tmp/err'"
check "  ... and no image was written" test ! -e "$tmp/c.png"

"$VF_CLI" generate --model "$tmp/stand-in" --output "$tmp/d.png" >/dev/null 2>&1
check "--prompt is still required (exit 2)" test $? -eq 2

# Without VF_DEMO_MODEL: the installed copy or the source tree's models/demo.
installed=$(dirname "$(readlink -f "$VF_CLI")")/../share/vramfit/demo
if [ -f "$src/models/demo/model_index.json" ] || [ -f "$installed/model_index.json" ]; then
    env -u VF_DEMO_MODEL "$VF_CLI" generate --prompt "a red circle on a blue background" --seed 1 --quiet \
        --output "$tmp/e.png" 2>"$tmp/err"
    check "no --model: the demo model draws" test $? -eq 0 -a -s "$tmp/e.png"
else
    env -u VF_DEMO_MODEL "$VF_CLI" generate --prompt x --output "$tmp/e.png" 2>"$tmp/err"
    check "no --model and no demo model exits 1" test $? -eq 1
    check "  ... and the message names models/demo, share/vramfit/demo and --model" \
        sh -c "grep -q '$src/models/demo' '$tmp/err' && grep -q 'share/vramfit/demo' '$tmp/err' && grep -q -- --model '$tmp/err'"
fi

finish
