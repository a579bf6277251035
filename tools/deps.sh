#!/usr/bin/env bash
# Installs the Debian packages vramfit builds and tests with (run as root, or with
# sudo available). Everything the build needs comes from here: no downloads.
set -euo pipefail
pkgs="cmake make gcc pkg-config libcjson-dev libutf8proc-dev libopenblas-dev libpng-dev zlib1g-dev python3 python3-pytest"
# tools/fuzz.sh: clang, libFuzzer and the sanitizer runtimes, llvm-symbolizer for its reports
pkgs="$pkgs clang-14 libclang-rt-14-dev llvm-14"
missing=""
for p in $pkgs; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends $missing
