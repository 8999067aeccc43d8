#!/usr/bin/env bash
# nbdkit-qed tests: cache=writeback|writethrough|none|unsafe, with the
# same checks against qemu-nbd --cache where they apply.
# SPDX-License-Identifier: LGPL-2.1-or-later

source ./functions.sh
set -e -u -x

requires nbdsh --version
requires nbdcopy --version
requires qemu-img --version
requires qemu-io --version
requires qemu-nbd --version
requires strace -V
requires /usr/bin/python3 -c 'import os; os.O_DIRECT'
requires test -x ./random-io

cd "$tmpdir"
O_DIRECT=$(/usr/bin/python3 -c 'import os; print(os.O_DIRECT)')

# has_direct NAME FILE: server NAME has FILE open with O_DIRECT.
has_direct ()
{
    local flags
    flags=$(fd_flags "$1" "$2") || return 1
    echo "$1: $2: flags $flags"
    [ $(( 0$flags & O_DIRECT )) -ne 0 ]
}

# serve SERVER MODE IMAGE: start server "srv" (nbdkit or qemu-nbd) on
# IMAGE with cache=MODE; sets $uri.
serve ()
{
    if [ "$1" = nbdkit ]; then
        start_nbdkit srv "$plugin" "$3" cache="$2"
    else
        start_qemu_nbd srv -f qed --cache="$2" "$3"
    fi
    uri=$uri_srv
}
unserve ()
{
    if [ "$1" = nbdkit ]; then stop_nbdkit srv; else stop_qemu_nbd srv; fi
}

# 1. cache=none opens the image and its backing file with O_DIRECT, as
# qemu-nbd --cache=none does; writeback does not.
head -c 4M /dev/urandom > base.raw
qemu-img create -q -f qed -b base.raw -F raw -o cluster_size=4k over.qed 16M
for server in nbdkit qemu-nbd; do
    serve $server none over.qed
    has_direct srv over.qed
    has_direct srv base.raw
    unserve $server
    serve $server writeback over.qed
    if has_direct srv over.qed; then
        echo "$0: $server cache=writeback opened the image with O_DIRECT"
        exit 1
    fi
    unserve $server
done

# 2. cache=none serves every byte range, aligned or not: reads of the
# backing file and copy-on-write at odd offsets ...
start_nbdkit srv "$plugin" over.qed cache=none
nbdsh -u "$uri_srv" -c '
base = open("base.raw", "rb").read()
for off, n in [(1, 1), (4095, 2), (12345, 70000), (4194000, 1000)]:
    got = h.pread(n, off)
    want = (base + bytes(16 << 20))[off:off + n]
    assert got == want, (off, n)
h.pwrite(b"x" * 3, 4097)
assert h.pread(8, 4094) == base[4094:4097] + b"xxx" + base[4100:4102]
'
stop_nbdkit srv
qemu-io -f qed -c 'read -P 0x78 4097 3' over.qed | grep -F 'read 3/3'
qemu-img convert -f qed -O raw over.qed out.raw
cmp -n 4097 base.raw out.raw
cmp -i 4100 -n $(( 4 * 1024 * 1024 - 4100 )) base.raw out.raw
rm out.raw

# ... and random concurrent requests from four connections, unaligned
# ones sharing blocks, against a reference.
for cs in 4096 65536; do
    qemu-img create -q -f qed -o cluster_size=$cs disk.qed 64M
    qemu-io -f qed -c 'write -P 7 1000 3M' disk.qed > /dev/null
    qemu-img convert -f qed -O raw disk.qed ref.raw
    start_nbdkit srv "$plugin" disk.qed cache=none
    has_direct srv disk.qed
    "$abs_builddir/random-io" "$uri_srv" ref.raw $((64 * 1024 * 1024)) $cs 1 2000
    nbdcopy "$uri_srv" out.raw
    cmp ref.raw out.raw
    stop_nbdkit srv
    qemu_check_no_corruption disk.qed
    qemu-img compare -f qed -F raw disk.qed ref.raw
    rm -f disk.qed ref.raw out.raw
done

# 3. Where the file system cannot do direct I/O (ramfs), cache=none
# refuses to start and says why.
mkdir ramfs
if mount -t ramfs ramfs ramfs 2>/dev/null; then
    cleanup_fn umount "$tmpdir/ramfs"
    qemu-img create -q -f qed ramfs/disk.qed 1M
    must_refuse_start "O_DIRECT" ramfs/disk.qed cache=none
    nbdkit "$plugin" ramfs/disk.qed cache=writeback --run true
else
    echo "$0: cannot mount ramfs here: the refusal is not tested"
fi

# 4. Flushes of the image per acknowledged write: writethrough makes
# each write durable (one fdatasync or more each), writeback leaves
# it to the client's flushes, as qemu-nbd does.  In-place writes, so
# that no allocation flushes on its own.
writes=20
qemu-img create -q -f qed disk.qed 16M
qemu-io -f qed -c 'write -P 1 0 1M' disk.qed > /dev/null
# count_flushes SERVER MODE PYTHON: flushes while PYTHON runs in nbdsh.
count_flushes ()
{
    local n
    serve $1 $2 disk.qed
    trace_server srv fdatasync,fsync
    nbdsh -u "$uri" -c "$3"
    untrace_server srv
    unserve $1
    n=$(grep -cE '(fdatasync|fsync)\(' srv.strace || true)
    echo "$1 cache=$2: $n flushes" >&2
    echo $n
}
write_each="
for i in range($writes):
    h.pwrite(b'%c' % (65 + i) * 4096, i * 4096)
"
for server in nbdkit qemu-nbd; do
    test "$(count_flushes $server writethrough "$write_each")" -ge $writes
    test "$(count_flushes $server writeback "$write_each")" -lt $writes
done

# 5. cache=unsafe ignores flushes and FUA (qemu-nbd's too); writeback
# honours them.
flush_each="
for i in range($writes):
    h.pwrite(b'%c' % (97 + i) * 4096, i * 4096, nbd.CMD_FLAG_FUA)
    h.flush()
"
for server in nbdkit qemu-nbd; do
    test "$(count_flushes $server unsafe "$flush_each")" = 0
    test "$(count_flushes $server writeback "$flush_each")" -ge $writes
done
# The data is there all the same.
qemu-io -f qed -c "read -P 0x74 $(( 19 * 4096 )) 4096" disk.qed |
    grep -F 'read 4096/4096'

# A bad value is refused at start.
must_refuse_start "cache must be writeback, writethrough, none or unsafe" \
    disk.qed cache=directsync
