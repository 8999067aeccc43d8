#!/usr/bin/env bash
# nbdkit-qed tests: the fuzzers, briefly, and what they found before.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Builds fuzz/fuzz-open and fuzz/fuzz-ops with clang's libFuzzer, ASan
# and UBSan (fuzz/build.sh), replays every reproducer in
# fuzz/regressions/ (each once: it must run through without a report),
# then fuzzes each harness for 10 seconds from its seed corpus.  Long
# runs: fuzz/run.sh SECONDS, or "make fuzz".  (libFuzzer's own exit
# status for a crash is 77, which would read as a skip here: hence
# -error_exitcode=1.)

source ./functions.sh
set -e -u -x

requires clang --version
# libFuzzer is a separate package on Debian (libclang-rt-*-dev).
echo 'int LLVMFuzzerTestOneInput (const char *d, long n) { return 0; }' \
     > "$tmpdir/probe.c"
requires clang -fsanitize=fuzzer "$tmpdir/probe.c" -o "$tmpdir/probe"

fuzz=$abs_top_srcdir/fuzz
build=$tmpdir/build
"$fuzz/build.sh" "$build"

seconds=${FUZZ_SECONDS:-10}
failures=0
for h in open ops; do
    # One at a time, so that each one that fails is named.
    for reg in $(find "$fuzz/regressions/$h" -type f 2>/dev/null | sort); do
        if ! "$build/fuzz-$h" -error_exitcode=1 -timeout=10 \
             -rss_limit_mb=1024 "$reg"; then
            echo "$0: FAIL: $reg: its bug is not fixed (or is back)"
            failures=$((failures + 1))
        fi
    done

    mkdir "$tmpdir/corpus-$h"
    case $h in open) max_len=65536 ;; ops) max_len=1024 ;; esac
    "$build/fuzz-$h" "$tmpdir/corpus-$h" "$fuzz/corpus/$h" \
        -max_total_time=$seconds -max_len=$max_len -timeout=10 \
        -rss_limit_mb=1024 -error_exitcode=1 \
        -artifact_prefix="$tmpdir/crash-$h-" \
        -print_final_stats=1 2>&1 | tail -20
    status=${PIPESTATUS[0]}
    # Nothing found.
    if [ "$status" != 0 ] || ls "$tmpdir" | grep -q "^crash-$h-"; then
        echo "$0: FAIL: fuzz-$h found a problem"
        failures=$((failures + 1))
    fi
done
test $failures = 0
