#!/bin/sh
# nbdkit-qed: build the fuzzers with libFuzzer, ASan and UBSan.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
#   fuzz/build.sh [OUTDIR]
#
# Builds OUTDIR/fuzz-open and OUTDIR/fuzz-ops (OUTDIR defaults to
# fuzz/build in the source tree, which git ignores) straight from the
# sources, without configure: a tiny config.h is written into OUTDIR.
# Needs clang with libFuzzer (on Debian: clang and
# libclang-rt-<version>-dev).  CC overrides clang; EXTRA_CFLAGS adds
# flags (e.g. -O2).
#
# Each binary runs inputs given as files (replay), or fuzzes corpus
# directories: see fuzz/run.sh.

set -e

srcdir=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$srcdir/fuzz/build}
CC=${CC:-clang}
mkdir -p "$out"
out=$(cd "$out" && pwd)

cat > "$out/config.h" <<'EOF'
/* Written by fuzz/build.sh. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#define PACKAGE_VERSION "fuzz"
EOF

sanitize="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
cflags="-g -O1 -fno-omit-frame-pointer -pthread -Wall -Wno-unused-parameter
        $sanitize ${EXTRA_CFLAGS:-}"
includes="-I$out -I$srcdir/include -I$srcdir/engine -I$srcdir/tests/unit -I$srcdir/fuzz"

# The engine is instrumented for coverage (fuzzer-no-link: without
# libFuzzer's main); the harnesses and the file layers under the engine
# are not, so that coverage steers the fuzzer through lib/ only.
objs=
for src in "$srcdir"/engine/*.c "$srcdir"/files/*.c; do
    obj=$out/$(basename "$src" .c).o
    # shellcheck disable=SC2086
    $CC $cflags -fsanitize=fuzzer-no-link $includes -c "$src" -o "$obj"
    objs="$objs $obj"
done
for src in "$srcdir/tests/unit/memfile.c" "$srcdir/fuzz/guardfile.c"; do
    obj=$out/$(basename "$src" .c).o
    # shellcheck disable=SC2086
    $CC $cflags $includes -c "$src" -o "$obj"
    objs="$objs $obj"
done

for harness in fuzz-open fuzz-ops; do
    # shellcheck disable=SC2086
    $CC $cflags $includes -c "$srcdir/fuzz/$harness.c" -o "$out/$harness.o"
    # shellcheck disable=SC2086
    $CC $cflags -fsanitize=fuzzer "$out/$harness.o" $objs -o "$out/$harness"
done
echo "built $out/fuzz-open $out/fuzz-ops"
