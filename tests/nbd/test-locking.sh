#!/usr/bin/env bash
# nbdkit-qed tests: QEMU-compatible image locking, against qemu-nbd,
# qemu-io and qemu-img on the other side.
# SPDX-License-Identifier: LGPL-2.1-or-later

source ./functions.sh
set -e -u -x

requires qemu-img --version
requires qemu-io --version
requires qemu-nbd --version
requires nbdinfo --version
requires nbdsh --version

cd "$tmpdir"
qemu-img create -q -f qed disk.qed 16M
head -c 16M /dev/urandom > base.raw
qemu-img create -q -f qed -b base.raw -F raw overlay.qed 16M

# 1. qemu-nbd has the image open for writing: we refuse it at start and
# name the holder.
start_qemu_nbd q -f qed disk.qed
must_refuse_start "in use" disk.qed
must_refuse_start "qemu-nbd (pid $_qemu_pid_q)" disk.qed
must_refuse_start "in use" -r disk.qed
# ... unless locking is turned off.
start_nbdkit unlocked "$plugin" disk.qed locking=false
nbdinfo "$uri_unlocked" > /dev/null
stop_nbdkit unlocked
stop_qemu_nbd q

# 2. Our writable server: QEMU's writers and default readers are
# refused, force-share (-U) readers coexist.
start_nbdkit w "$plugin" disk.qed
nbdsh -u "$uri_w" -c 'h.pwrite(b"x" * 512, 0)'   # writes are now on
must_fail qemu-io -f qed -c 'write 0 512' disk.qed 2> err
grep -i 'lock' err
must_fail qemu-img info disk.qed 2> err
grep -i 'lock' err
qemu-img info -U disk.qed
qemu-io -r -U -f qed -c 'read -P 0x78 0 512' disk.qed
stop_nbdkit w

# 3. Before any writable connection, and with nbdkit -r: readers
# coexist, writers are refused.
start_nbdkit r "$plugin" -r disk.qed
must_fail qemu-io -f qed -c 'write 0 512' disk.qed
start_qemu_nbd qr -r -f qed disk.qed
nbdinfo "nbd+unix:///?socket=$tmpdir/qr.sock" > /dev/null
nbdinfo "$uri_r" > /dev/null
stop_qemu_nbd qr
stop_nbdkit r

# 4. A read-only qemu-nbd refuses writers: our server starts (it only
# reads so far) but the first writable connection is refused, naming
# qemu-nbd; once qemu-nbd is gone, writes work.
start_qemu_nbd qr -r -f qed disk.qed
start_nbdkit w2 "$plugin" disk.qed
must_fail nbdsh -u "$uri_w2" -c 'h.pwrite(b"y" * 512, 0)'
grep "qemu-nbd (pid $_qemu_pid_qr)" "$tmpdir/w2.log"
stop_qemu_nbd qr
nbdsh -u "$uri_w2" -c 'h.pwrite(b"y" * 512, 0)'
stop_nbdkit w2
qemu-io -f qed -c 'read -P 0x79 0 512' disk.qed

# 5. Backing files are locked for reading: nobody may write the base
# under a served overlay, though readers may look at it.
start_nbdkit o "$plugin" overlay.qed
nbdsh -u "$uri_o" -c 'h.pwrite(b"z" * 512, 4096)'
must_fail qemu-io -f raw -c 'write 0 512' base.raw 2> err
grep -i 'lock' err
qemu-io -r -f raw -c 'read 0 512' base.raw
stop_nbdkit o

# 6. Our writable server refuses a second writable server, naming it.
start_nbdkit first "$plugin" disk.qed
nbdsh -u "$uri_first" -c 'h.pwrite(b"a" * 512, 0)'
must_refuse_start "in use" disk.qed
pid=$(cat "$tmpdir/first.pid")
must_refuse_start "(pid $pid)" disk.qed
stop_nbdkit first
