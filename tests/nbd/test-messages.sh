#!/usr/bin/env bash
# nbdkit-qed tests: every refusal at start names its cause (the
# parameter or the file), sizes have upper bounds, and check, repair
# and read-only fallbacks are notices that say what happens next, with
# counts in good English.
# SPDX-License-Identifier: LGPL-2.1-or-later

source ./functions.sh
set -e -u -x -o pipefail

requires nbdkit --version
requires nbdinfo --version
requires nbdsh --version
requires qemu-img --version
requires qemu-io --version
requires /usr/bin/python3 --version

cd "$tmpdir"
qemu-img create -q -f qed disk.qed 16M

# no_errors LOG: nothing in LOG is logged as an error.
no_errors ()
{
    if grep -F "error:" "$1"; then
        echo "$0: $1 has errors, where notices were expected"
        return 1
    fi
    return 0
}

#----------------------------------------------------------------------
# Parameters: each refusal names the parameter.

# Sizes have an upper bound (1P once ended the server without a word).
for size in 1P 500T 1E; do
    must_refuse_start "l2-cache-size=$size: more than this machine's memory" \
        disk.qed l2-cache-size=$size
done
must_refuse_start "l2-cache-size=garbage: not a size" \
    disk.qed l2-cache-size=garbage
must_refuse_start "backing-cache-size=garbage: not a size" \
    disk.qed backing-cache-size=garbage
must_refuse_start "l2-cache-size=1K: less than the minimum, 64K" \
    disk.qed l2-cache-size=1K
for key in allow-backing locking snapshot; do
    must_refuse_start "$key=maybe: not a boolean" disk.qed $key=maybe
done
must_refuse_start "backing=nope.raw: No such file or directory" \
    disk.qed backing=nope.raw
must_refuse_start "file=nope.qed: No such file or directory" nope.qed
mkdir d1 d2
must_refuse_start "dir=d2: only one directory can be served" dir=d1 dir=d2

#----------------------------------------------------------------------
# Files: the message says which file is what.

# Another format is named, with what serves it.
qemu-img create -q -f qcow2 disk.qcow2 16M
must_refuse_start "disk.qcow2: this is a qcow2 (or qcow) image, not a QED image" \
    disk.qcow2
must_refuse_start "serve it with qemu-nbd" disk.qcow2
qemu-img create -q -f vmdk disk.vmdk 16M
must_refuse_start "disk.vmdk: this is a vmdk image, not a QED image" disk.vmdk

# A raw backing file said to be QED: the backing file is named as such.
truncate -s 16M base.raw
qemu-img create -q -f qed -b base.raw -F raw overlay.qed
must_refuse_start "the backing file $tmpdir/base.raw is not a QED image" \
    overlay.qed backing-format=qed

#----------------------------------------------------------------------
# Check and repair: notices that say what happens next.

# bad.qed: an L2 entry points past the end of the file (1 corruption).
qemu-img create -q -f qed -o cluster_size=65536 bad.qed 16M
qemu-io -f qed -c 'write -P 0x11 0 100k' bad.qed > /dev/null
entry_past_end bad.qed 10
cp bad.qed bad.qed.orig

# check=always on a writable server: found at start, repaired by the
# first writable connection.
start_nbdkit always "$plugin" bad.qed check=always
grep -F "qed: notice: $tmpdir/bad.qed: the check found 1 corruption;" \
    always.log
grep -F "; the image will be repaired before the first write" always.log
nbdsh -u "$uri_always" -c 'assert not h.is_read_only()'
stop_nbdkit always
grep -F "qed: notice: $tmpdir/bad.qed: repaired the image: fixed 1 corruption" \
    always.log
if grep -F "corruptions" always.log; then
    echo "$0: '1 corruptions'"
    exit 1
fi
no_errors always.log

# NEED_CHECK with nbdkit -r: served read-only without repair, as the
# log says.
cp bad.qed.orig dirty.qed
printf '\x02' | dd of=dirty.qed bs=1 seek=16 conv=notrunc status=none
start_nbdkit ro -r "$plugin" dirty.qed
nbdinfo --size "$uri_ro"
stop_nbdkit ro
grep -F "qed: notice: $tmpdir/dirty.qed: the image was not closed cleanly" \
    ro.log
grep -F "and is served read-only, without checking or repairing it" \
    ro.log
no_errors ro.log
test "$(header_field dirty.qed 16 8)" = 2

# A reader elsewhere (qemu-io -r) keeps writes off: the connection is
# served read-only, which is a notice.
qemu-io -r -f qed -c 'sleep 60000' disk.qed &
qemu_pid=$!
cleanup_fn kill $qemu_pid
for (( i=0; i < 100; i++ )); do
    grep -q qed "/proc/$qemu_pid/cmdline" &&
        ls -l "/proc/$qemu_pid/fd" | grep -qF disk.qed && break
    sleep 0.1
done
start_nbdkit held "$plugin" disk.qed
nbdsh -u "$uri_held" -c 'assert h.is_read_only()'
stop_nbdkit held
grep -F "qed: notice: $tmpdir/disk.qed: image is in use: qemu-io (pid $qemu_pid)" \
    held.log
grep -F "qed: notice: $tmpdir/disk.qed: serving this connection read-only" \
    held.log
no_errors held.log
