#!/usr/bin/env bash
# nbdkit-qed tests: every refusal at start names its cause (the
# parameter or the file), and sizes have upper bounds.
# SPDX-License-Identifier: LGPL-2.1-or-later

source ./functions.sh
set -e -u -x -o pipefail

requires nbdkit --version
requires nbdinfo --version
requires qemu-img --version

cd "$tmpdir"
qemu-img create -q -f qed disk.qed 16M

#----------------------------------------------------------------------
# Parameters: each refusal names the parameter.

# Sizes have an upper bound (1P once ended the server without a word).
for size in 1P 500T 1E; do
    must_refuse_start "l2-cache-size=$size: more than this machine's memory" \
        disk.qed l2-cache-size=$size
done
must_refuse_start "l2-cache-size=garbage: not a size" \
    disk.qed l2-cache-size=garbage
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
