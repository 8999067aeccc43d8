#!/usr/bin/env bash
# nbdkit-qed: install what is missing, build, and run the whole test
# suite.  Exits non-zero when any test fails.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
#   scripts/test.sh [TARGET...]
#
# TARGETs are make targets run in the build directory; the default is
# "check".  Others: check-valgrind, distcheck.  Set CONFIGURE_FLAGS
# (e.g. --enable-sanitizers) and BUILD_DIR to build another way.

set -e -u -o pipefail

# shellcheck source=scripts/setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
qed_setup

# nbdsh runs "python3 -m nbd": the module is in Debian's python3, which
# another python3 earlier on PATH may not have.
export PATH=/usr/bin:$PATH

[ $# -gt 0 ] || set -- check
log=$builddir/tests/test-suite.log
rm -f "$log"
status=0
make -C "$builddir" --no-print-directory -j"$(nproc 2>/dev/null || echo 2)" \
    "$@" || status=$?

# A summary line from automake's log, and the logs of failed tests.
if [ -f "$log" ]; then
    count () {
        local n
        n=$(sed -n "s/^# $1: *\([0-9][0-9]*\)$/\1/p" "$log" | head -n1)
        echo "${n:-0}"
    }
    pass=$(count PASS) skip=$(count SKIP)
    fail=$(( $(count FAIL) + $(count XPASS) + $(count ERROR) ))
    if [ "$fail" -gt 0 ]; then
        echo "==================== $log ===================="
        cat "$log"
    fi
    echo "tests: $pass passed, $fail failed, $skip skipped"
fi
exit "$status"
