#!/usr/bin/env bash
# nbdkit-qed tests: entries pointing past the end of the file are
# cleared when the file first grows, not when writes are enabled.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Enabling writes used to read every L2 table to find such entries,
# so the first writable connection to a large image cost a read of
# all of it.  Now (see "Entries past the end" in engine/internal.h):
# - a writable connection that reads and writes in place reads no more
#   tables than it touches;
# - the first write that grows the file clears the entries first, so
#   the new clusters never alias one, even when the entry sits in a
#   table that nothing read before.

source ./functions.sh
set -e -u -x -o pipefail

requires qemu-img --version
requires qemu-io --version
requires strace -V
requires /usr/bin/python3 --version
qed_allocated=$abs_top_builddir/bench/qed-allocated
requires test -x "$qed_allocated"
qedcheck=$abs_builddir/qedcheck
cd "$tmpdir"

#----------------------------------------------------------------------
# 1. The open for writing does not read the L2 tables.
#
# 1 GiB of 4 KiB clusters, every one allocated: 512 L2 tables of one
# cluster each.  The connection reads the first cluster and rewrites
# it in place; the server may read the header, the L1 table and the
# table it touches, not all 512.
"$qed_allocated" -c 4096 $((1 << 30)) many.qed
start_nbdkit many "$plugin" many.qed
trace_server many pread64
nbdsh -u "$uri_many" -c '
assert not h.is_read_only()
assert h.pread(4096, 0) == bytes(4096)
h.pwrite(b"\x5a" * 4096, 0)
h.flush()
assert h.pread(4096, 0) == b"\x5a" * 4096
'
untrace_server many
stop_nbdkit many
n=$(grep -c 'pread64(' many.strace || true)
echo "preads at the writable open: $n"
test "$n" -lt 16
if grep -F "past the end" many.log; then
    echo "$0: the open looked for entries past the end"
    exit 1
fi
"$qedcheck" many.qed

#----------------------------------------------------------------------
# 2. An entry past the end, in a table nothing reads, where the file
# will grow to: the first allocating write clears it before growing.
#
# 64 KiB clusters, 16 MiB disk, so one L2 table.  Data at 0; the bad
# entry is virtual cluster 100 (in a slice of the table no request
# reads), pointing one cluster past the end, right where the second
# new cluster goes.
qemu-img create -q -f qed -o cluster_size=65536 bad.qed 16M
qemu-io -f qed -c 'write -P 0x11 0 64k' bad.qed > /dev/null
entry_past_end bad.qed 1
cp bad.qed bad.before

start_nbdkit bad "$plugin" bad.qed
nbdsh -u "$uri_bad" -c '
import errno
assert not h.is_read_only()
# Reads and in-place writes: the entry is not looked for yet.
assert h.pread(65536, 0) == b"\x11" * 65536
h.pwrite(b"\x22" * 4096, 0)
h.flush()
'
if grep -F "past the end" bad.log; then
    echo "$0: cleared before anything grew the file"
    exit 1
fi
nbdsh -u "$uri_bad" -c '
import errno
# Two new clusters: the second lands where the entry points.
h.pwrite(b"\x33" * 65536, 1 * 65536)
h.pwrite(b"\x44" * 65536, 2 * 65536)
h.flush()
assert h.pread(65536, 65536) == b"\x33" * 65536
assert h.pread(65536, 2 * 65536) == b"\x44" * 65536
# The bad entry was cleared: it reads as zeros, not as 0x44.
assert h.pread(65536, 100 * 65536) == bytes(65536)
'
stop_nbdkit bad
grep -F "bad.qed: 1 table entry points past the end of the file; cleared before the file grows" bad.log

# Clean, nothing shared, and QEMU reads what was written.
"$qedcheck" bad.qed
qemu-img check bad.qed
qemu-io -f qed -c 'read -P 0x22 0 4k' -c 'read -P 0x11 4k 60k' \
    -c 'read -P 0x33 64k 64k' -c 'read -P 0x44 128k 64k' \
    -c 'read -P 0 6400k 64k' bad.qed
