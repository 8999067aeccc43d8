#!/usr/bin/env bash
# nbdkit-qed: install what is missing, build, and run the whole test
# suite.  Exits non-zero when any test fails.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
#   scripts/test.sh [TARGET...]
#
# TARGETs are make targets run in the build directory; the default is
# "check".  Others: check-valgrind, distcheck.  The build always has
# --enable-werror (as CI wants); set CONFIGURE_FLAGS for more (e.g.
# --enable-sanitizers) and BUILD_DIR to build another way.
#
# In CI (CI=true), or with TEST_PACKAGE=yes, "check" also builds the
# Debian package, lints, installs, checks and purges it
# (scripts/package.sh, needs root or sudo), counted as one more test.
# Its build does not run the suite again (DEB_BUILD_OPTIONS=nocheck).

set -e -u -o pipefail

export CONFIGURE_FLAGS="--enable-werror${CONFIGURE_FLAGS:+ $CONFIGURE_FLAGS}"

# shellcheck source=scripts/setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
qed_setup

# nbdsh runs "python3 -m nbd": the module is in Debian's python3, which
# another python3 earlier on PATH may not have.
export PATH=/usr/bin:$PATH

[ $# -gt 0 ] || set -- check
logs=("$builddir"/tests/unit/test-suite.log "$builddir"/tests/nbd/test-suite.log)
rm -f "${logs[@]}"
status=0
make -C "$builddir" --no-print-directory -j"$(nproc 2>/dev/null || echo 2)" \
    "$@" || status=$?

# The Debian package, its log shown only when it fails.
package=
if [ "$*" = check ] &&
   { [ "${CI:-}" = true ] || [ "${TEST_PACKAGE:-}" = yes ]; }; then
    package_log=$builddir/package.log
    if DEB_BUILD_OPTIONS="nocheck${DEB_BUILD_OPTIONS:+ $DEB_BUILD_OPTIONS}" \
       BUILD_DIR=$builddir "$srcdir/scripts/package.sh" \
       > "$package_log" 2>&1; then
        package=pass
        echo "PASS: scripts/package.sh (log: $package_log)"
    else
        package=fail
        status=1
        echo "==================== $package_log ===================="
        cat "$package_log"
        echo "FAIL: scripts/package.sh"
    fi
fi

# A summary line from automake's logs, and the logs of failed tests.
ran=0 pass=0 skip=0 fail=0
for log in "${logs[@]}"; do
    [ -f "$log" ] || continue
    count () {
        local n
        n=$(sed -n "s/^# $1: *\([0-9][0-9]*\)$/\1/p" "$log" | head -n1)
        echo "${n:-0}"
    }
    failed=$(( $(count FAIL) + $(count XPASS) + $(count ERROR) ))
    ran=1
    pass=$(( pass + $(count PASS) ))
    skip=$(( skip + $(count SKIP) ))
    fail=$(( fail + failed ))
    if [ "$failed" -gt 0 ]; then
        echo "==================== $log ===================="
        cat "$log"
    fi
done
case $package in
    pass) ran=1; pass=$(( pass + 1 )) ;;
    fail) ran=1; fail=$(( fail + 1 )) ;;
esac
[ $ran = 0 ] || echo "tests: $pass passed, $fail failed, $skip skipped"
exit "$status"
