#!/bin/sh
# nbdkit-qed: run the fuzzers for a while.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
#   fuzz/run.sh [SECONDS]
#
# "make fuzz" runs it.  With the libFuzzer binaries in $FUZZ_BIN
# (default: build/fuzz/libfuzzer in the source tree, where
# scripts/setup.sh builds), it replays the reproducers of every bug
# found so far (fuzz/regressions/HARNESS/*), then fuzzes each harness
# for SECONDS (default 60) from its seed corpus (fuzz/corpus/HARNESS/).
# New inputs go to a scratch corpus in a temporary directory, not into
# the committed one; a crash, sanitizer report, leak, timeout or
# out-of-memory leaves its input in $FUZZ_ARTIFACTS (default: that
# directory, then kept) and makes the script exit non-zero.
#
# FUZZ_HARNESSES limits the run to some harnesses (e.g. "fuzz-ops").

set -e

srcdir=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-60}
harnesses=${FUZZ_HARNESSES:-fuzz-open fuzz-ops}
bin=${FUZZ_BIN:-$srcdir/build/fuzz/libfuzzer}

for h in $harnesses; do
    if [ ! -x "$bin/$h" ]; then
        echo "$bin/$h: not found (build it with make; configure needs a" \
             "clang with libFuzzer)" >&2
        exit 1
    fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/qedfuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
artifacts=${FUZZ_ARTIFACTS:-$work/artifacts}
mkdir -p "$artifacts"

# Inputs and limits per harness.
max_len ()
{
    case $1 in
        fuzz-open) echo 65536 ;;
        fuzz-ops) echo 1024 ;;
    esac
}

status=0
for h in $harnesses; do
    name=${h#fuzz-}
    # The regressions: each must run through without a report.
    failed=
    for reg in $(find "$srcdir/fuzz/regressions/$name" -type f 2>/dev/null |
                 sort); do
        if ! "$bin/$h" -error_exitcode=1 -timeout=10 -rss_limit_mb=1024 \
             "$reg" > "$artifacts/$h-regression.log" 2>&1; then
            echo "$h: $reg still fails:"
            grep -E '^fuzz-|^guardfile|ERROR|SUMMARY|runtime error' \
                 "$artifacts/$h-regression.log"
            failed=yes
        fi
    done
    if [ -n "$failed" ]; then
        status=1
        continue
    fi

    echo "== $h: fuzzing for $seconds seconds"
    scratch=$work/corpus-$name
    mkdir -p "$scratch"
    if ! "$bin/$h" "$scratch" "$srcdir/fuzz/corpus/$name" \
         -max_total_time="$seconds" -max_len="$(max_len "$h")" \
         -timeout=10 -rss_limit_mb=1024 -error_exitcode=1 \
         -print_final_stats=1 \
         -artifact_prefix="$artifacts/$h-" \
         > "$artifacts/$h.log" 2>&1; then
        echo "$h: the fuzzer found a problem; its input is in $artifacts:"
        ls "$artifacts"
        tail -60 "$artifacts/$h.log"
        status=1
        continue
    fi
    grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' \
         "$artifacts/$h.log" || true
done

if [ $status -ne 0 ] && [ -z "${FUZZ_ARTIFACTS:-}" ]; then
    # Keep what was found.
    trap - EXIT
    echo "the failing inputs and the logs are kept in $work"
fi
exit $status
