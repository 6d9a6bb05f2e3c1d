#!/usr/bin/env bash
# Installs the build into a temporary prefix, then builds tests/install/consumer.c against it twice:
# with CMake's find_package(tpcomm) and with pkg-config. Runs the results.
set -euo pipefail
build_dir=$1 src_dir=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build_dir" --prefix "$tmp/prefix" >/dev/null
cmake -S "$src_dir/tests/install" -B "$tmp/cmake-build" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/cmake-build" >/dev/null
"$tmp/cmake-build/consumer"
libdir=$(ls -d "$tmp/prefix"/lib*/pkgconfig | head -1)
cc "$src_dir/tests/install/consumer.c" -o "$tmp/consumer-pc" $(PKG_CONFIG_PATH="$libdir" pkg-config --cflags --libs tpcomm)
"$tmp/consumer-pc"
echo "1 passed, 0 failed"
