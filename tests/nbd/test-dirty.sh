#!/usr/bin/env bash
# nbdkit-qed tests: NEED_CHECK through nbdkit, with the real idle time.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# An allocating write sets the bit on disk; five seconds later the
# running server has cleared it; stopping the server clears it too.

source ./functions.sh
set -e -u -x

requires qemu-img --version
requires nbdsh --version

cd "$tmpdir"
need_check () { test "$(( $(od -An -tu1 -j16 -N1 disk.qed) & 2 ))" = 2; }

qemu-img create -q -f qed disk.qed 64M
start_nbdkit srv "$plugin" disk.qed
nbdsh -u "$uri_srv" -c 'h.pwrite(b"1" * 4096, 1 << 20)'
need_check
sleep 7
! need_check
nbdsh -u "$uri_srv" -c 'h.pwrite(b"2" * 4096, 2 << 20)'
need_check
stop_nbdkit srv
! need_check
qemu-img check disk.qed
