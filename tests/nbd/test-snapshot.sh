#!/usr/bin/env bash
# nbdkit-qed tests: snapshot=true leaves the image byte for byte as it
# was, and no file behind in $TMPDIR, also after kill -9; as qemu-nbd
# --snapshot does.
# SPDX-License-Identifier: LGPL-2.1-or-later

source ./functions.sh
set -e -u -x

requires nbdsh --version
requires nbdinfo --version
requires qemu-img --version
requires qemu-io --version
requires qemu-nbd --version

cd "$tmpdir"
mkdir snap
head -c 2M /dev/urandom > base.raw
qemu-img create -q -f qed -b base.raw -F raw -o cluster_size=16k disk.qed 64M
qemu-io -f qed -c 'write -P 9 1M 1M' disk.qed > /dev/null
sha256sum disk.qed base.raw > sums

# What a client does: writes over data, over the backing file and over
# nothing, zeroes, trims, flushes; it sees its writes.
session='
import os
h.pwrite(b"z" * 100000, 1000)
h.pwrite(b"y" * 65536, (1 << 20) + 4096)
h.pwrite(b"x" * 70000, 32 << 20)
h.zero(1 << 20, 40 << 20)
h.trim(65536, 48 << 20)
h.flush()
assert h.pread(4, 1000) == b"zzzz"
assert h.pread(4, (1 << 20) + 4096) == b"yyyy"
assert h.pread(4, (1 << 20) + 4096 + 65536) == b"\x09" * 4
assert h.pread(4, 32 << 20) == b"xxxx"
assert h.pread(4, 100 << 10) == open("base.raw", "rb").read()[100 << 10:(100 << 10) + 4]
'

# unchanged: the image and its backing file are as they were, and
# nothing is left in the temporary directory.
unchanged ()
{
    sha256sum -c sums
    if [ -n "$(ls -A snap)" ]; then
        echo "$0: left in \$TMPDIR:"; ls -la snap
        return 1
    fi
}

for server in nbdkit qemu-nbd; do
    if [ $server = nbdkit ]; then
        TMPDIR=$tmpdir/snap start_nbdkit srv "$plugin" disk.qed snapshot=true
    else
        TMPDIR=$tmpdir/snap start_qemu_nbd srv -f qed --snapshot disk.qed
    fi
    nbdsh -u "$uri_srv" -c "$session"
    # The overlay has no name, and the image is open read-only ...
    ls -la snap
    if [ $server = nbdkit ]; then
        test -z "$(ls -A snap)"
        test $(( 0$(fd_flags srv disk.qed) & 3 )) = 0       # O_RDONLY
    fi
    # ... with a shared lock: QEMU can read it, not write it.
    qemu-img info disk.qed > /dev/null
    must_fail qemu-io -f qed -c 'write 0 512' disk.qed
    if [ $server = nbdkit ]; then stop_nbdkit srv; else stop_qemu_nbd srv; fi
    unchanged
done
grep -F 'snapshot: writes are discarded at exit' <(
    TMPDIR=$tmpdir/snap nbdkit -U - "$plugin" disk.qed snapshot=true \
        --run 'nbdinfo "$uri"')

# kill -9 in the middle of writing: still nothing left, nothing changed.
TMPDIR=$tmpdir/snap start_nbdkit k "$plugin" disk.qed snapshot=true
nbdsh -u "$uri_k" -c "$session"
nbdsh -u "$uri_k" -c 'h.pwrite(b"w" * (1 << 20), 8 << 20)'
kill -9 "$(server_pid k)"
wait "$(server_pid k)" || true
_nbdkit_pid_k=
unchanged
qemu-img check disk.qed

# Options that would change the image below the overlay are refused.
must_refuse_start "snapshot=true cannot be used with backing=" \
    disk.qed snapshot=true backing=base.raw
# A $TMPDIR that does not exist is named (not under valgrind, which
# needs $TMPDIR itself).
if [ "${NBDKIT_VALGRIND:-}" != 1 ]; then
    TMPDIR=$tmpdir/nowhere must_refuse_start \
        "snapshot: cannot make a temporary file in $tmpdir/nowhere" \
        disk.qed snapshot=true
fi
