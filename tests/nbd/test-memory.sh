#!/usr/bin/env bash
# nbdkit-qed tests: memory stays bounded on huge sparse images.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# What grows with the image is held in memory only in bounded pieces:
# the L1 table (at most 16 MiB: 1 MiB clusters, table_size 16), the L2
# cache (4 MiB by default, 32 MiB with cache=none), the check's bitmap (32 MiB at most).  So:
# - a 64 TiB disk (the maximum for QEMU's default geometry) written
#   and read at random places all over, each write a new L2 table;
# - a 4 EiB disk whose header asks for the largest L1 table in use
#   (2^21 entries), written and read all over;
# - 16 copy-on-write writes in flight into 64 MiB clusters over a
#   backing file;
# keep nbdkit's peak resident memory (VmHWM) under 128 MiB, and
# - the check of an image whose file has a huge apparent size (a
#   sparse file: 16 TiB, and the most the filesystem allows) finishes
#   quickly in bounded memory.

source ./functions.sh
set -e -u -x

requires nbdsh --version
requires qemu-img --version
requires /usr/bin/python3 --version

qedcheck=$abs_builddir/qedcheck
cd "$tmpdir"

limit_kib=$(( 128 * 1024 ))
# Valgrind and the sanitizers add their own memory.
if [ "${NBDKIT_VALGRIND:-}" = 1 ] || [ ${#_nbdkit_wrapper[@]} -gt 0 ]; then
    limit_kib=$(( 4 * limit_kib ))
fi

# hwm NAME: peak resident memory (KiB) of the running nbdkit NAME.
hwm ()
{
    awk '$1 == "VmHWM:" { print $2 }' "/proc/$(cat "$tmpdir/$1.pid")/status"
}

# Every bound is checked, and the test fails at the end if any was
# exceeded.
failures=0
# within_limit WHAT KIB
within_limit ()
{
    echo "$1: nbdkit peak RSS $2 KiB (limit $limit_kib KiB)"
    # (Not a number -- no VmHWM read -- fails too.)
    if ! [ "$2" -lt $limit_kib ]; then
        echo "$0: FAIL: $1 exceeds the memory limit"
        failures=$((failures + 1))
    fi
}

# random_io URI SEED WRITES: random 4 KiB writes all over the disk
# (each read back), random reads and block status elsewhere.
random_io ()
{
    nbdsh --base-allocation -u "$1" -c "
import random
rng = random.Random($2)
size = h.get_size()
written = {}
for i in range($3):
    off = rng.randrange(size // 4096) * 4096
    data = rng.randbytes(4096)
    h.pwrite(data, off)
    written[off] = data
for off, data in list(written.items())[::7]:
    assert h.pread(4096, off) == data, off
for i in range($3):
    off = rng.randrange(size - 65536)
    buf = h.pread(65536, off)
    if not any(o in written
               for o in range(off // 4096 * 4096, off + 65536, 4096)):
        assert buf == bytes(65536), off
    h.block_status(min(size - off, (1 << 32) - 1), off, lambda *a: 0)
h.flush()
"
}

#----------------------------------------------------------------------
# A 64 TiB disk, 64 KiB clusters, table_size 4: 32768 L2 tables of
# 256 KiB could be made; 2000 random writes make about 2000 of them.
qemu-img create -q -f qed big.qed 64T
start_nbdkit big "$plugin" big.qed
random_io "$uri_big" 1 2000
peak=$(hwm big)
stop_nbdkit big
within_limit "64 TiB disk" $peak
"$qedcheck" big.qed

# The same with a small L2 cache: slices are evicted, not piled up.
start_nbdkit small "$plugin" big.qed l2-cache-size=64K
random_io "$uri_small" 2 1000
peak=$(hwm small)
stop_nbdkit small
within_limit "64 TiB disk, 64K L2 cache" $peak
"$qedcheck" big.qed
rm -f big.qed

#----------------------------------------------------------------------
# The largest L1 table the format lets an image use: 1 MiB clusters and
# table_size 16 make 2^21-entry tables, and 4 EiB (the maximum) needs
# all of the L1 table: 16 MiB in memory.  Each write makes a 16 MiB L2
# table (sparse in the file).
qemu-img create -q -f qed -o cluster_size=1M,table_size=16 l1.qed 4E
start_nbdkit l1 "$plugin" l1.qed
random_io "$uri_l1" 3 200
peak=$(hwm l1)
stop_nbdkit l1
within_limit "4 EiB disk, 16 MiB L1 table" $peak
"$qedcheck" l1.qed
rm -f l1.qed

#----------------------------------------------------------------------
# Copy-on-write from a backing file into 64 MiB clusters: 16 one-byte
# writes in flight at once, each to a cluster of its own.  The parts of
# the clusters the writes do not cover come from the backing file;
# holding each of them in memory whole would take 16 x 64 MiB.  (QEMU
# cannot create this geometry, so the header is written here.)
truncate -s 2G base.raw
/usr/bin/python3 - <<'EOF2'
import struct
C = 64 << 20
name = b"base.raw"
with open("cow.qed", "wb") as f:
    f.write(struct.pack("<IIIIQQQQQII", 0x00444551, C, 1, 1, 0x5, 0, 0, C,
                        2 << 30, 64, len(name)) + name)
    f.truncate(2 * C)
EOF2
start_nbdkit cow "$plugin" cow.qed
nbdsh -u "$uri_cow" -c '
cookies = [h.aio_pwrite(b"\x77", c * (64 << 20) + 12345) for c in range(16)]
while h.aio_in_flight() > 0:
    h.poll(-1)
for c in cookies:
    assert h.aio_command_completed(c)
for c in range(16):
    assert h.pread(3, c * (64 << 20) + 12344) == b"\0\x77\0"
'
peak=$(hwm cow)
stop_nbdkit cow
rm -f cow.qed base.raw
within_limit "64 MiB clusters, 16 copy-on-write writes in flight" $peak

#----------------------------------------------------------------------
# The check walks the tables, and counts every cluster of the file
# nothing references as leaked: it must not take time or memory in
# proportion to the file's apparent size.  A small image, made sparse
# and huge by truncate: the most the filesystem here allows (16 TiB on
# ext4), and 2^63 - 4 KiB where that is possible (tmpfs, XFS, btrfs).

# check_huge FILE SECONDS: qedcheck FILE finishes in time, in less than
# 64 MiB, and counts the clusters past the tables as leaks.
check_huge ()
{
    /usr/bin/python3 - "$qedcheck" "$1" "$2" <<'EOF'
import resource, subprocess, sys, time
qedcheck, image, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = time.time()
try:
    p = subprocess.run([qedcheck, image], capture_output=True, text=True,
                       timeout=seconds)
except subprocess.TimeoutExpired:
    sys.exit("qedcheck %s: still running after %d s" % (image, seconds))
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(p.stdout, "%.1f s, %d KiB" % (time.time() - t, rss))
assert p.returncode == 3, p.returncode           # leaks only
assert rss < 64 * 1024, rss
EOF
}

qemu-img create -q -f qed -o cluster_size=4k,table_size=4 sparse.qed 1G
largest=
for size in $(( (1 << 63) - 4096 )) $(( (1 << 44) - 4096 )); do
    if truncate -s $size sparse.qed 2>/dev/null; then
        largest=$size
        break
    fi
done
if [ -n "$largest" ] && ! check_huge sparse.qed 20; then
    failures=$((failures + 1))
fi
rm -f sparse.qed

if [ "$largest" != $(( (1 << 63) - 4096 )) ] &&
       [ -d /dev/shm ] && [ -w /dev/shm ]; then
    shm=$(mktemp -d /dev/shm/qedtest.XXXXXX)
    cleanup_fn rm -rf "$shm"
    qemu-img create -q -f qed -o cluster_size=4k,table_size=4 \
        "$shm/sparse.qed" 1G
    if truncate -s $(( (1 << 63) - 4096 )) "$shm/sparse.qed" &&
       ! check_huge "$shm/sparse.qed" 20; then
        failures=$((failures + 1))
    fi
fi

test $failures = 0
