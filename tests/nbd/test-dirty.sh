#!/usr/bin/env bash
# nbdkit-qed tests: NEED_CHECK through nbdkit, with the real idle time.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# An allocating write sets the bit on disk; five seconds later the
# running server has cleared it; stopping the server clears it too.
# The image has no backing file, so its features are exactly NEED_CHECK
# (2) while dirty and 0 once clean.

source ./functions.sh
set -e -u -x

requires qemu-img --version
requires nbdsh --version

cd "$tmpdir"
features () { header_field disk.qed 16 8; }
idle_msg='idle: flushed and cleared NEED_CHECK'

qemu-img create -q -f qed disk.qed 64M
test "$(features)" = 0
start_nbdkit srv "$plugin" disk.qed
nbdsh -u "$uri_srv" -c 'h.pwrite(b"1" * 4096, 1 << 20)'
test "$(features)" = 2

# Idle: the server, still running, clears the bit (after 5 s; it looks
# every 1.25 s).  Wait up to 30 s.
for (( i=0; i < 300; i++ )); do
    [ "$(features)" = 0 ] && break
    sleep 0.1
done
test "$(features)" = 0
kill -0 "$(cat srv.pid)"
test "$(grep -c -- "$idle_msg" srv.log)" = 1

# Written again and stopped at once: closing the image clears it.
nbdsh -u "$uri_srv" -c 'h.pwrite(b"2" * 4096, 2 << 20)'
test "$(features)" = 2
stop_nbdkit srv
test "$(features)" = 0
# (The idle timer did not get there first.)
test "$(grep -c -- "$idle_msg" srv.log)" = 1
qemu-img check disk.qed
