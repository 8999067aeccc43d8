#!/usr/bin/env bash
# nbdkit-qed tests: the fuzzers, briefly, and what they found before.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Replays every reproducer in fuzz/regressions/ (each on its own: it
# must run through without a report) and the seed corpus with the
# harnesses as this build compiled them (fuzz/fuzz-open, fuzz/fuzz-ops:
# its compiler and sanitizers, and valgrind in "make check-valgrind").
# Then, with the libFuzzer builds (ASan and UBSan), it replays the
# reproducers again and fuzzes each harness for 10 seconds from its
# seed corpus; without a clang that has libFuzzer, that part is
# skipped (exit 77, after the replay).  Long runs: "make fuzz".
# (libFuzzer's own exit status for a crash is 77, which would read as
# a skip here: hence -error_exitcode=1.)

source ./functions.sh
set -e -u -x

fuzz=$abs_top_srcdir/fuzz
bin=$abs_top_builddir/fuzz
replay=()
if [ "${NBDKIT_VALGRIND:-}" = 1 ]; then
    replay=(valgrind --quiet --error-exitcode=119
            --leak-check=full --errors-for-leak-kinds=definite
            --suppressions=$abs_top_srcdir/tests/valgrind.supp)
fi

failures=0
for h in open ops; do
    # One at a time, so that each one that fails is named.
    for reg in $(find "$fuzz/regressions/$h" -type f 2>/dev/null | sort); do
        if ! "${replay[@]}" "$bin/fuzz-$h" "$reg"; then
            echo "$0: FAIL: $reg: its bug is not fixed (or is back)"
            failures=$((failures + 1))
        fi
    done
    if ! "${replay[@]}" "$bin/fuzz-$h" "$fuzz/corpus/$h"; then
        echo "$0: FAIL: fuzz-$h fails on its seed corpus"
        failures=$((failures + 1))
    fi
done

if [ "${HAVE_LIBFUZZER:-}" != yes ]; then
    test $failures = 0
    echo "$0: fuzzing skipped: configure found no clang with libFuzzer"
    exit 77
fi

seconds=${FUZZ_SECONDS:-10}
for h in open ops; do
    for reg in $(find "$fuzz/regressions/$h" -type f 2>/dev/null | sort); do
        if ! "$bin/libfuzzer/fuzz-$h" -error_exitcode=1 -timeout=10 \
             -rss_limit_mb=1024 "$reg"; then
            echo "$0: FAIL: $reg: its bug is not fixed (or is back)"
            failures=$((failures + 1))
        fi
    done

    mkdir "$tmpdir/corpus-$h"
    case $h in open) max_len=65536 ;; ops) max_len=1024 ;; esac
    "$bin/libfuzzer/fuzz-$h" "$tmpdir/corpus-$h" "$fuzz/corpus/$h" \
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
