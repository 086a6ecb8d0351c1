#!/bin/sh
# Interim demo: digest a freshly cross-compiled PE. (Replaced by the full
# signing demo once qwickd lands.)
set -eu
BUILD=${1:-build}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '#include <stdio.h>\nint main(void){puts("hello from qwick");return 0;}\n' >"$tmp/hello.c"
x86_64-w64-mingw32-gcc -O2 -o "$tmp/hello.exe" "$tmp/hello.c"
"$BUILD/qwick" digest "$tmp/hello.exe"
