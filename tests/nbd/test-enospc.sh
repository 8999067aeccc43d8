#!/usr/bin/env bash
# nbdkit-qed tests: a full disk reaches the client as ENOSPC, leaves a
# consistent image, and writes work again once there is space.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# The image lives on a small tmpfs, mounted in a private mount
# namespace (so the test needs the right to create one).

if [ -z "${QED_IN_MOUNT_NS:-}" ] && unshare -m true 2>/dev/null; then
    exec unshare -m env QED_IN_MOUNT_NS=1 "$0" "$@"
fi

source ./functions.sh
set -e -u -x

requires test -n "${QED_IN_MOUNT_NS:-}"
requires qemu-img --version
requires nbdsh --version

small=$tmpdir/small
mkdir "$small"
mount -t tmpfs -o size=6M none "$small"
cleanup_fn umount "$small"

qemu-img create -q -f qed "$small/disk.qed" 64M
# Leave about 2 MiB free.
dd if=/dev/zero of="$small/filler" bs=1M count=3 2>/dev/null

# check_and_stop: the export reads as the reference; once the server
# has stopped, qemu-img check finds no corruption.
check_and_stop ()
{
    nbdsh -u "$uri_srv" -c '
import os
ref = open(os.environ["REF"], "rb").read()
assert h.pread(len(ref), 0) == ref
'
    stop_nbdkit srv
    qemu_check_no_corruption "$small/disk.qed"
}

start_nbdkit srv "$plugin" "$small/disk.qed"
export REF=$tmpdir/ref.raw
truncate -s 64M "$REF"
nbdsh -u "$uri_srv" -c '
import errno, os
ref = open(os.environ["REF"], "r+b")
def write(off, n, fill):
    data = bytes([fill]) * n
    h.pwrite(data, off)
    ref.seek(off); ref.write(data)

# Unaligned writes into new clusters until the disk is full.
off, fill, failed = 0, 1, None
while off < 16 << 20:
    try:
        write(off + 1000, 200000, fill)
        h.flush()
    except nbd.Error as e:
        assert e.errnum == errno.ENOSPC, e
        failed = off
        break
    off += 256 << 10
    fill += 1
assert failed is not None, "the disk never filled"
open(os.environ["REF"] + ".failed", "w").write("%d %d\n" % (failed, fill))
ref.close()
'

# Acknowledged data is intact and the image consistent while full.
read failed fill < "$REF.failed"
check_and_stop

# Space comes back: the failed write and more succeed.
rm "$small/filler"
start_nbdkit srv "$plugin" "$small/disk.qed"
FAILED=$failed FILL=$fill nbdsh -u "$uri_srv" -c '
import os
ref = open(os.environ["REF"], "r+b")
off, fill = int(os.environ["FAILED"]), int(os.environ["FILL"])
for i in range(4):
    data = bytes([fill + i]) * 200000
    h.pwrite(data, off + 1000)
    ref.seek(off + 1000); ref.write(data)
    off += 256 << 10
h.flush()
ref.close()
'
check_and_stop
qemu-img compare -f qed -F raw "$small/disk.qed" "$REF"
