#!/usr/bin/env bash
# nbdkit-qed tests: nbdkit -r never writes the image; a writable
# server repairs NEED_CHECK images and clears unknown autoclear bits.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Three images: a clean one written by qemu-io; the same with NEED_CHECK
# set and an L2 entry pointing past the end of the file (what a crash
# can leave); the same as the first with an unknown autoclear bit.

source ./functions.sh
set -e -u -x

requires nbdkit --version
requires nbdcopy --version
requires nbdinfo --version
requires nbdsh --version
requires qemu-img --version
requires qemu-io --version
requires sha256sum --version
requires /usr/bin/python3 --version

cs=65536
size=$(( 16 * 1024 * 1024 ))
bad=$(( 100 * cs ))             # the cluster the bad entry maps

clean=$tmpdir/clean.qed
needcheck=$tmpdir/needcheck.qed
autoclear=$tmpdir/autoclear.qed

qemu-img create -q -f qed -o cluster_size=$cs "$clean" $size
qemu-io -f qed -c "write -P 0x11 0 100k" -c "write -z 1M 128k" \
    -c "write -P 0x22 $(( 3 * 1024 * 1024 + 7 )) 300k" \
    -c "write -P 0x33 $(( size - 4096 )) 4096" "$clean" > /dev/null
qemu-img check -q -f qed "$clean"

cp "$clean" "$needcheck"
/usr/bin/python3 - "$needcheck" $bad <<'EOF'
import struct, sys
f = open(sys.argv[1], "r+b")
h = f.read(64)
cs = struct.unpack_from("<I", h, 4)[0]
l1 = struct.unpack_from("<Q", h, 40)[0]
f.seek(0, 2)
end = f.tell()
f.seek(l1)
l2 = struct.unpack("<Q", f.read(8))[0]
assert l2 != 0
i = int(sys.argv[2]) // cs
f.seek(l2 + 8 * i)
assert struct.unpack("<Q", f.read(8))[0] == 0
f.seek(l2 + 8 * i)
f.write(struct.pack("<Q", end + 10 * cs))
EOF
printf '\x02' | dd of="$needcheck" bs=1 seek=16 conv=notrunc status=none
test "$(header_field "$needcheck" 16 8)" = 2
must_fail qemu-img check -q -f qed "$needcheck"

cp "$clean" "$autoclear"
printf '\x40' | dd of="$autoclear" bs=1 seek=32 conv=notrunc status=none
test "$(header_field "$autoclear" 32 8)" = 64

qemu-img convert -f qed -O raw "$clean" "$tmpdir/clean.raw"

#----------------------------------------------------------------------
# nbdkit -r: reads, block status, cache; writes refused.

for img in "$clean" "$needcheck" "$autoclear"; do
    sum=$(sha256sum < "$img")
    start_nbdkit ro -r "$plugin" "$img"
    nbdinfo --is read-only "$uri_ro"
    nbdinfo --map "$uri_ro"
    if [ "$img" != "$needcheck" ]; then
        nbdcopy "$uri_ro" "$tmpdir/out.raw"
        cmp "$tmpdir/clean.raw" "$tmpdir/out.raw"
    fi
    ref=$tmpdir/clean.raw bad=$bad cs=$cs nbdsh --base-allocation -u "$uri_ro" -c '
import errno, os
ref = open(os.environ["ref"], "rb").read()
bad = int(os.environ["bad"])
cs = int(os.environ["cs"])
size = h.get_size()
assert h.is_read_only()

# Everything but the cluster of the bad entry reads as the clean image.
for off, n in [(0, bad), (bad + cs, size - bad - cs)]:
    h.cache(n, off)
    assert h.pread(n, off) == ref[off:off + n]
h.block_status(size, 0, lambda *args: 0)

def expect_refused(what, f):
    try:
        f()
    except nbd.Error as e:
        assert e.errnum in (errno.EPERM, errno.EROFS), (what, e)
        return
    raise Exception("%s on a read-only export succeeded" % what)

# Not libnbd but the server must refuse.
h.set_strict_mode(0)
expect_refused("pwrite", lambda: h.pwrite(b"x" * 512, 0))
expect_refused("pwrite", lambda: h.pwrite(b"x", bad + 1))
expect_refused("zero", lambda: h.zero(cs, 0))
expect_refused("trim", lambda: h.trim(cs, 0))
h.flush()
'
    if [ "$img" = "$needcheck" ]; then
        # The bad entry fails, and is not read from past the end.
        must_fail nbdsh -u "$uri_ro" -c "h.pread(512, $bad)" \
            2> "$tmpdir/err"
        grep "Input/output error" "$tmpdir/err"
    fi
    stop_nbdkit ro
    test "$(sha256sum < "$img")" = "$sum"
done

#----------------------------------------------------------------------
# Writable: nothing is written before a writable connection; then
# NEED_CHECK images are repaired and unknown autoclear bits cleared.

sum=$(sha256sum < "$needcheck")
start_nbdkit rw "$plugin" "$needcheck"
test "$(sha256sum < "$needcheck")" = "$sum"
bad=$bad nbdsh -u "$uri_rw" -c '
import os
bad = int(os.environ["bad"])
assert not h.is_read_only()
assert h.pread(512, bad) == bytes(512)
'
test "$(header_field "$needcheck" 16 8)" = 0
grep "repaired the image: fixed 1 corruption$" "$tmpdir/rw.log"
nbdcopy "$uri_rw" "$tmpdir/out.raw"
cmp "$tmpdir/clean.raw" "$tmpdir/out.raw"
stop_nbdkit rw
test "$(header_field "$needcheck" 16 8)" = 0
qemu-img check -f qed "$needcheck"
qemu-img compare -f qed -F qed "$clean" "$needcheck"

sum=$(sha256sum < "$autoclear")
start_nbdkit rw "$plugin" "$autoclear"
test "$(sha256sum < "$autoclear")" = "$sum"
nbdsh -u "$uri_rw" -c 'assert not h.is_read_only()'
test "$(header_field "$autoclear" 32 8)" = 0
stop_nbdkit rw
test "$(header_field "$autoclear" 32 8)" = 0
test "$(header_field "$autoclear" 16 8)" = 0
qemu-img check -f qed "$autoclear"
qemu-img compare -f qed -F qed "$clean" "$autoclear"
