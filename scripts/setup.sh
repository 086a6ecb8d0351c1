#!/bin/sh
# Installs the Debian packages Qwick needs to build and test, only when missing.
# Used by `make`, `make demo` and `make test`; safe to run repeatedly.
set -eu

# libclang-rt-dev: the sanitizer and libFuzzer runtimes for clang (the TSan
# build of `make test`, `make fuzz`); clang only recommends it, and recommends
# are not installed here.
PKGS="build-essential pkg-config meson ninja-build clang libclang-rt-dev openssl curl python3 python3-cryptography
libssl-dev libcurl4-openssl-dev libmicrohttpd-dev libjansson-dev
libsqlite3-dev libsodium-dev libcmocka-dev
osslsigncode sbsigntool gcc-mingw-w64-x86-64 gcc-mingw-w64-i686 lld-14
sqlite3 wrk postgresql libpq-dev tzdata"

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        missing="$missing $p"
    fi
done

[ -z "$missing" ] && exit 0

echo "setup: installing missing Debian packages:$missing" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "setup: need root (or sudo) to install:$missing" >&2; exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
