#!/usr/bin/env bash
# nbdkit-qed tests: write zeroes and fast zero through NBD.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# A zero request completes whatever its size (nbdkit 1.32's own
# fallback would stop after 64 MiB); a fast zero succeeds where it is
# cheap -- whole clusters, or what already reads as zeros -- and fails
# at once with ENOTSUP elsewhere, changing nothing.

source ./functions.sh
set -e -u -x

requires qemu-img --version
requires qemu-io --version
requires nbdsh --version

cd "$tmpdir"
qemu-img create -q -f qed disk.qed 512M
# Data from 16 MiB to 240 MiB, QEMU's own writes.
qemu-io -f qed -c 'write -P 0x7e 16M 224M' disk.qed > /dev/null

start_nbdkit srv "$plugin" disk.qed
nbdsh -u "$uri_srv" -c '
import errno
M = 1 << 20
C = 65536

def is_zero(off, n):
    step = 32 * M
    return all(h.pread(min(step, n - i), off + i) == bytes(min(step, n - i))
               for i in range(0, n, step))

def fast_zero_refused(off, n, flags=0):
    before = h.pread(n, off)
    try:
        h.zero(n, off, nbd.CMD_FLAG_FAST_ZERO | flags)
    except nbd.Error as e:
        assert e.errnum == errno.ENOTSUP, e
        assert h.pread(n, off) == before     # nothing changed
        return True
    return False

# 200 MiB of data zeroed in one request, unaligned at both ends.
h.zero(200 * M + 1234, 20 * M + 100)
assert is_zero(20 * M + 100, 200 * M + 1234)
assert h.pread(100, 20 * M) == b"\x7e" * 100
assert h.pread(100, 220 * M + 1334) == b"\x7e" * 100

# Fast zero: unallocated and zeroed ranges are cheap...
assert not fast_zero_refused(300 * M + 7, 5 * M)
assert not fast_zero_refused(50 * M, 10 * M)
# ... so are whole data clusters when holes are allowed ...
assert not fast_zero_refused(224 * M, 4 * C)
assert is_zero(224 * M, 4 * C)
# ... but not a part of a data cluster, nor data without holes.
assert fast_zero_refused(230 * M + 100, 1000)
assert fast_zero_refused(232 * M, 4 * C, nbd.CMD_FLAG_NO_HOLE)
assert fast_zero_refused(235 * M, 4 * C + 1)

# Without FAST_ZERO the same requests just work.
h.zero(1000, 230 * M + 100)
h.zero(4 * C, 232 * M, nbd.CMD_FLAG_NO_HOLE)
assert is_zero(230 * M + 100, 1000) and is_zero(232 * M, 4 * C)
assert h.pread(100, 230 * M) == b"\x7e" * 100
h.flush()
'
stop_nbdkit srv
qemu-img check disk.qed
qemu-io -f qed -c 'read -P 0 21M 199M' -c 'read -P 0x7e 236M 4M' disk.qed
