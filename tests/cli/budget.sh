#!/usr/bin/env bash
# vramfit generate on the simulated device under VRAM budgets (tiny SDXL, diffusers
# folder): for budgets where everything fits, where AUTO falls below CPU_OFFLOAD,
# under SEQUENTIAL and under STREAM, --stats prints the plan and the measured peaks per stage
# (encode_prompt, denoise, decode) and overall, every device peak is within the
# budget, and the PNG is byte-identical to the CPU run's; the plan line's
# `vramfit plan` command reproduces the same plan; SEQUENTIAL's device peak is
# below FULL_GPU's; a budget below the minimum exits 1 saying what would fit;
# bad memory options exit 2 (syntax) or 1 (values the library refuses).
set -u
: "${VF_CLI:?set VF_CLI to the vramfit binary}"
command -v python3 >/dev/null || { echo "SKIP: python3 not found"; exit 77; }
model="${VF_SHARED:-}/reference/tiny-sdxl/diffusers"
[ -d "$model" ] || { echo "SKIP: $model not found (set VF_SHARED)"; exit 77; }

. "$(dirname "$0")/check.bash"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

gen() {  # gen NAME ARGS...: writes $tmp/NAME.png, .out, .err; returns the exit status
    local name=$1; shift
    "$VF_CLI" generate --model "$model" --prompt "a photo of a cat wearing a tiny hat" \
        --negative "blurry, low quality" --steps 4 --cfg 5 --seed 1234 --quiet \
        --output "$tmp/$name.png" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"
}

# The stats of run NAME: every peak within the budget, the three stages there, the
# plan named; prints the strategy and the overall device peak.
cat >"$tmp/stats.py" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
budget = int(sys.argv[2])
peak = re.search(r"^stats: peak device (\d+) bytes \(allocated (\d+)\), host (\d+) bytes; budget (\d+) bytes$",
                 text, re.M)
assert peak, "no peak line"
dev, alloc, host, b = map(int, peak.groups())
assert b == budget, (b, budget)
assert 0 < alloc <= dev <= budget, (alloc, dev, budget)
stages = re.findall(r"^stats: stage (\w+): device (\d+) bytes \(allocated (\d+)\), host (\d+) bytes", text, re.M)
assert [s[0] for s in stages] == ["encode_prompt", "denoise", "decode"], stages
for name, d, a, h in stages:
    assert int(a) <= int(d) <= dev, (name, d, a)
plan = re.search(r"^stats: plan (\S+) \(requested (\S+)\): ", text, re.M)
assert plan, "no plan line"
pred = re.search(r"^stats: plan predicted peak device (\d+) bytes", text, re.M)
assert pred and int(pred.group(1)) <= budget
print(plan.group(1), dev)
PY

gen cpu
check "the CPU run works" test $? -eq 0

MiB=1048576
# budget (bytes), offload, expected strategy (a regex: where AUTO lands below
# cpu-offload depends on the predicted link speed)
runs="20971520:auto:full-gpu 7340032:auto:sequential|stream 9437184:stream:stream 7340032:sequential:sequential"
for r in $runs; do
    budget=${r%%:*}; rest=${r#*:}; offload=${rest%%:*}; want=${rest#*:}
    name="b${budget}_$offload"
    gen "$name" --device sim:16G,context=1M --vram-budget "$budget" --offload "$offload" --stats
    check "$offload at $((budget / MiB)) MiB exits 0" test $? -eq 0
    got=$(python3 "$tmp/stats.py" "$tmp/$name.out" "$budget" 2>"$tmp/$name.py.err")
    check "$offload at $((budget / MiB)) MiB: --stats peaks within the budget" test -n "$got"
    [ -n "$got" ] || cat "$tmp/$name.py.err" "$tmp/$name.out" >&2
    check "$offload at $((budget / MiB)) MiB: plan $want" grep -q -x -E "$want" <<<"${got%% *}"
    echo "     $offload, budget $budget: ${got%% *}, device peak ${got#* }"
    check "$offload at $((budget / MiB)) MiB: image identical to the CPU's" cmp -s "$tmp/cpu.png" "$tmp/$name.png"
    echo "${got#* }" >"$tmp/$name.peak"
done
full=$(cat "$tmp/b20971520_auto.peak" 2>/dev/null || echo 0)
seq=$(cat "$tmp/b7340032_sequential.peak" 2>/dev/null || echo 0)
check "sequential's device peak is below full-gpu's" test "$seq" -gt 0 -a "$seq" -lt "$full"

# The plan --stats names is the one `vramfit plan` makes with the printed arguments.
cmdline=$(sed -n 's/^stats: plan command: vramfit plan //p' "$tmp/b9437184_stream.out")
check "--stats prints the equivalent plan command" test -n "$cmdline"
# shellcheck disable=SC2086
"$VF_CLI" plan $cmdline --json >"$tmp/plan.json" 2>"$tmp/plan.err"
check "... which runs" test $? -eq 0
check "... and gives the same strategy and predicted peak" python3 - "$tmp/plan.json" "$tmp/b9437184_stream.out" <<'PY'
import json, re, sys
p = json.load(open(sys.argv[1]))
text = open(sys.argv[2]).read()
strategy = re.search(r"^stats: plan (\S+) \(", text, re.M).group(1)
peak = int(re.search(r"^stats: plan predicted peak device (\d+) bytes", text, re.M).group(1))
assert p["strategy"] == strategy, (p["strategy"], strategy)
assert p["peak_device_bytes"] == peak, (p["peak_device_bytes"], peak)
PY

gen eager --device sim,context=1M --vram-budget 20M --loading eager --stats
check "--loading eager works" test $? -eq 0
check "... with the same image" cmp -s "$tmp/cpu.png" "$tmp/eager.png"

gen cpustats --stats
check "--stats on the cpu: no device memory" grep -q -E '^stats: peak device 0 bytes \(allocated 0\), host [1-9][0-9]* bytes$' "$tmp/cpustats.out"

gen small --device sim,context=1M --vram-budget 2M
check "a budget below the minimum exits 1" test $? -eq 1
check "... saying what would fit" grep -q 'needs at least' "$tmp/small.err"
check "... writing nothing" test ! -e "$tmp/small.png"

gen cpuseq --offload sequential
check "--offload sequential on the cpu exits 1" test $? -eq 1
check "... saying it needs a device" grep -q 'needs a device' "$tmp/cpuseq.err"
gen gpu --device gpu
check "an unknown device exits 1" test $? -eq 1
check "... naming it" grep -q "'gpu'" "$tmp/gpu.err"
gen cuda --device cuda
check "--device cuda (not built) exits 1" test $? -eq 1

usage_exit() { gen usage "$@"; test $? -eq 2; }
check "bad budget exits 2" usage_exit --device sim --vram-budget 6X
check "... naming it" grep -q "'6X'" "$tmp/usage.err"
check "zero budget exits 2" usage_exit --device sim --vram-budget 0
check "unknown offload exits 2" usage_exit --offload gpu
check "unknown loading exits 2" usage_exit --loading lazy
check "unknown dtype exits 2" usage_exit --dtype f12
check "--device without a value exits 2" usage_exit --device
"$VF_CLI" generate --help >"$tmp/help"
check "--help documents the memory options" \
    grep -q -- '--vram-budget SIZE' "$tmp/help" && grep -q -- '--stats' "$tmp/help" && grep -q 'sim\[:BANDWIDTH\]' "$tmp/help"

finish
