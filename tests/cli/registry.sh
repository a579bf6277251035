#!/usr/bin/env bash
# vramfit generate --registry FILE --model ID: the id is looked up in a model
# registry (JSON, paths relative to the file) and opened by a model pool on the
# run's device; the picture is the one --model PATH gives, on the CPU and on the
# simulated device. Unknown ids, a missing registry, and --registry without
# --model are errors that say so, and write nothing.
set -u
: "${VF_CLI:?set VF_CLI to the vramfit binary}"

. "$(dirname "$0")/check.bash"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

mkdir -p "$tmp/models"
"$VF_CLI" synth --arch sd15 --preset tiny --output "$tmp/models/tiny" >/dev/null 2>&1
check "synth a tiny model" test -f "$tmp/models/tiny/model_index.json"
cat >"$tmp/registry.json" <<JSON
{"models": {"tiny": "models/tiny", "tiny-too": {"path": "models/tiny", "kind": "checkpoint"}}}
JSON
args=(--prompt "a red circle" --seed 3 --steps 2 --quiet)

"$VF_CLI" generate --model "$tmp/models/tiny" "${args[@]}" --output "$tmp/want.png" 2>/dev/null
check "the reference picture, by path" test -s "$tmp/want.png"

"$VF_CLI" generate --registry "$tmp/registry.json" --model tiny "${args[@]}" --output "$tmp/cpu.png" 2>"$tmp/err"
check "--registry with an id draws on the cpu" test $? -eq 0 -a -s "$tmp/cpu.png"
check "  ... the same PNG as by path (pixels and parameters)" cmp -s "$tmp/cpu.png" "$tmp/want.png"

"$VF_CLI" generate --registry "$tmp/registry.json" --model tiny --device sim "${args[@]}" \
    --output "$tmp/sim.png" 2>"$tmp/err"
check "--registry on the simulated device" test $? -eq 0 -a -s "$tmp/sim.png"
check "  ... the same PNG (the simulated device computes as the cpu does)" cmp -s "$tmp/sim.png" "$tmp/want.png"

"$VF_CLI" generate --registry "$tmp/registry.json" --model nope "${args[@]}" --output "$tmp/x.png" 2>"$tmp/err"
check "an unknown id exits 1" test $? -eq 1
check "  ... naming the id" grep -q "'nope'" "$tmp/err"
check "  ... and writes nothing" test ! -e "$tmp/x.png"

"$VF_CLI" generate --registry "$tmp/none.json" --model tiny "${args[@]}" --output "$tmp/y.png" 2>"$tmp/err"
check "a missing registry exits 1 naming it" sh -c "test $? -eq 1 && grep -q none.json '$tmp/err'"

"$VF_CLI" generate --registry "$tmp/registry.json" "${args[@]}" --output "$tmp/z.png" 2>"$tmp/err"
check "--registry without --model is bad usage (exit 2)" test $? -eq 2
check "  ... and says --model ID" grep -q -- "--model ID" "$tmp/err"

finish
