# Sourced by the command-line tests (tests/cli/*.sh; this file is not one):
# `check NAME COMMAND...` counts COMMAND's success as a pass, and `finish`
# prints the summary line ctest shows and fails the script if any check failed.
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1" >&2; }
check() { local name=$1; shift; if "$@"; then ok "$name"; else bad "$name"; fi; }
finish() { echo "$pass passed, $fail failed"; [ "$fail" -eq 0 ]; }
