#!/usr/bin/env bash
# Installs this build into a temporary prefix and uses it as a user would:
# the files are where `cmake --install` promises (library with its soname links,
# header, command, pkg-config file, Python package), a small C program builds
# with `pkg-config --cflags --libs vramfit` and runs, and the installed Python
# package imports and finds the installed library with only PYTHONPATH set.
# Env: VF_BUILD (the build folder), VF_PYTHON (python3), CC, VF_SANITIZE (ON/OFF).
set -u
build=${VF_BUILD:?VF_BUILD is the build folder}
python=${VF_PYTHON:-python3}
cc=${CC:-cc}
prefix=$(mktemp -d "${TMPDIR:-/tmp}/vramfit-install.XXXXXX")
trap 'rm -rf "$prefix"' EXIT
pass=0 fail=0
ok()  { pass=$((pass + 1)); echo "ok: $1"; }
bad() { fail=$((fail + 1)); echo "FAIL: $1"; }
check() { if eval "$2"; then ok "$1"; else bad "$1"; fi; }

finish() { echo "$pass passed, $fail failed"; [ "$fail" -eq 0 ]; exit $?; }

if ! cmake --install "$build" --prefix "$prefix" > "$prefix.log" 2>&1; then
  cat "$prefix.log"; rm -f "$prefix.log"
  bad "cmake --install $build --prefix $prefix"
  finish
fi
rm -f "$prefix.log"
ok "cmake --install"

export PKG_CONFIG_PATH="$(dirname "$(find "$prefix" -name vramfit.pc | head -1)")"
check "vramfit.pc installed" '[ -f "$PKG_CONFIG_PATH/vramfit.pc" ]'
libdir=$(pkg-config --variable=libdir vramfit 2>/dev/null)
includedir=$(pkg-config --variable=includedir vramfit 2>/dev/null)
version=$(pkg-config --modversion vramfit 2>/dev/null)
check "pkg-config libdir inside the prefix ($libdir)" '[ "${libdir#$prefix/}" != "$libdir" ]'
check "libvramfit.so -> .so.0 -> .so.$version" \
  '[ -L "$libdir/libvramfit.so" ] && [ -L "$libdir/libvramfit.so.0" ] && [ -f "$libdir/libvramfit.so.$version" ]'
check "soname libvramfit.so.0" 'readelf -d "$libdir/libvramfit.so.$version" | grep -q "SONAME.*libvramfit.so.0"'
check "include/vramfit.h" '[ -f "$includedir/vramfit.h" ]'
check "bin/vramfit runs" '"$prefix/bin/vramfit" --help > /dev/null 2>&1'
pkg="$prefix/lib/python3/dist-packages/vramfit"
check "python package and _installed.py" '[ -f "$pkg/__init__.py" ] && [ -f "$pkg/_installed.py" ]'

# A sanitized library needs the sanitizer runtime loaded before it.
san_cflags="" san_env=""
if readelf -d "$libdir/libvramfit.so.0" | grep -q "libasan"; then
  san_cflags="-fsanitize=address,undefined"
  san_env="LD_PRELOAD=$($cc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0"
fi

cat > "$prefix/hello.c" <<'C'
#include <stdio.h>
#include <vramfit.h>

int main(void)
{
    vf_resources r;
    if (vf_detect_resources(&r) != VF_OK) {
        fprintf(stderr, "vf_detect_resources: %s\n", vf_last_error());
        return 1;
    }
    printf("vramfit %s: %d cores, %d GPUs\n", vf_version(), r.cpu_cores, r.device_count);
    return r.cpu_cores > 0 ? 0 : 1;
}
C
if $cc -std=c11 -Wall -Werror $san_cflags "$prefix/hello.c" $(pkg-config --cflags --libs vramfit) \
     -Wl,-rpath,"$libdir" -o "$prefix/hello"; then
  ok "a C program builds with pkg-config --cflags --libs vramfit"
  out=$("$prefix/hello"); rc=$?
  check "it runs: $out" '[ $rc -eq 0 ] && [ "${out#vramfit $version: }" != "$out" ]'
  check "it uses the installed library" 'ldd "$prefix/hello" | grep -q "$libdir/libvramfit.so.0"'
else
  bad "a C program builds with pkg-config --cflags --libs vramfit"
fi

# The README's examples ("Using the library"), run against the installed tree and a
# tiny model made by the installed command.
readme="$(dirname "$0")/../../README.md"
block() { awk -v lang="$1" '$0 == "```" lang {on = 1; next} on && $0 == "```" {exit} on {print}' "$readme"; }
block c > "$prefix/demo.c"
"$prefix/bin/vramfit" synth --arch sd15 --preset tiny --output "$prefix/tiny-sd15" > /dev/null 2>&1
check "README C example found" '[ -s "$prefix/demo.c" ]'
if $cc -std=c11 -Wall -Werror $san_cflags "$prefix/demo.c" $(pkg-config --cflags --libs vramfit) \
     -Wl,-rpath,"$libdir" -o "$prefix/demo"; then
  ok "README C example builds"
  "$prefix/demo" "$prefix/tiny-sd15" "$prefix/demo.png"; rc=$?
  check "README C example writes a PNG" '[ $rc -eq 0 ] && [ "$(head -c 4 "$prefix/demo.png" | tail -c 3)" = PNG ]'
  "$prefix/demo" "$prefix/no-model" "$prefix/x.png" 2> "$prefix/err"; rc=$?
  check "and reports errors: $(cat "$prefix/err")" '[ $rc -ne 0 ] && grep -q "no-model" "$prefix/err"'
else
  bad "README C example builds"
fi

if command -v "$python" > /dev/null; then
  out=$(cd "$prefix" && env -u VRAMFIT_LIB $san_env PYTHONPATH="$prefix/lib/python3/dist-packages" \
        PYTHONDONTWRITEBYTECODE=1 "$python" -c '
import vramfit
print(vramfit.__file__)
print(vramfit.LIBRARY_PATH)
print(vramfit.__version__, vramfit.MemoryManager().detect_resources()["cpu_cores"])' 2>&1)
  echo "$out"
  lines=($out)
  check "python imports the installed package" '[ "${lines[0]}" = "$pkg/__init__.py" ]'
  check "which loads the installed library" \
    '[ "$(readlink -f "${lines[1]}")" = "$(readlink -f "$libdir/libvramfit.so.0")" ]'
  check "and calls it" '[ "${lines[2]:-}" = "$version" ] && [ "${lines[3]:-0}" -gt 0 ]'
  block python | sed "s#models/demo#$prefix/tiny-sd15#g" > "$prefix/example.py"
  check "README Python example found" '[ -s "$prefix/example.py" ]'
  (cd "$prefix" && env -u VRAMFIT_LIB $san_env PYTHONPATH="$prefix/lib/python3/dist-packages" \
     PYTHONDONTWRITEBYTECODE=1 "$python" example.py > example.log 2>&1); rc=$?
  tail -3 "$prefix/example.log"
  check "README Python example runs and saves out.png" '[ $rc -eq 0 ] && [ -s "$prefix/out.png" ]'
else
  echo "skip: no $python for the Python part"
fi
finish
