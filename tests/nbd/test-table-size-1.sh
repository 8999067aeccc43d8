#!/usr/bin/env bash
# nbdkit-qed tests: images with table_size 1.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# qemu-img create makes them, but QEMU 7.2 will not open them, so the
# reference is built by hand: the same writes, zeros and trims are made
# to a raw file, and a small independent QED reader (below) decodes the
# image file itself and checks its layout.  Everything must still hold
# after the server is restarted and more is written.

source ./functions.sh
set -e -u -x

requires nbdkit --version
requires nbdsh --version
requires nbdcopy --version
requires qemu-img --version
requires /usr/bin/python3 --version

# Decode IMG with nothing but the format notes; check that every table
# and data cluster is cluster aligned, after the header, inside the
# file and referenced once, that nothing leaks, and that the disk it
# describes equals the raw file REF.
cat > "$tmpdir/qedread.py" <<'EOF'
import struct, sys
img, ref = open(sys.argv[1], "rb"), open(sys.argv[2], "rb")
h = img.read(64)
(magic, cs, ts, hs, feat, compat, autoclear, l1, size, bfo, bfs) = \
    struct.unpack("<IIIIQQQQQII", h)
assert magic == 0x00444551, hex(magic)
assert ts == 1 and hs == 1 and feat == 0 and autoclear == 0, (ts, hs, feat)
img.seek(0, 2)
fsize = img.tell()
assert fsize % cs == 0, "file size %d" % fsize
nelems = ts * cs // 8
used = {}
def ref_cluster(i):
    assert 0 <= i < fsize // cs and i >= hs, "bad cluster %d" % i
    assert i not in used, "cluster %d referenced twice" % i
    used[i] = True
def table(off):
    assert off % cs == 0, off
    for i in range(ts):
        ref_cluster(off // cs + i)
    img.seek(off)
    return struct.unpack("<%dQ" % nelems, img.read(ts * cs))
zero = bytes(cs)
ndata = nzero = 0
for i1, l2 in enumerate(table(l1)):
    if i1 * nelems * cs >= size:
        assert l2 == 0, "L1 entry %d beyond the disk" % i1
        continue
    entries = table(l2) if l2 else [0] * nelems
    for i2, e in enumerate(entries):
        vo = (i1 * nelems + i2) * cs
        if vo >= size:
            assert e == 0, "L2 entry beyond the disk at %d" % vo
            continue
        n = min(cs, size - vo)
        ref.seek(vo)
        want = ref.read(n)
        if e in (0, 1):
            got = zero[:n]
            nzero += e
        else:
            assert e % cs == 0, "unaligned data offset %x" % e
            ref_cluster(e // cs)
            img.seek(e)
            got = img.read(n)
            ndata += 1
        assert got == want, "disk differs in cluster at %d" % vo
leaks = [i for i in range(hs, fsize // cs) if i not in used]
assert not leaks, "leaked clusters %s" % leaks[:10]
print("qedread: %d data clusters, %d zero clusters, %d tables" %
      (ndata, nzero, len(used) - ndata))
EOF

# Writes, zeros and trims made to the export and to the raw reference.
# Env: ref (raw file), cs, size, round (changes the data).
cat > "$tmpdir/ops.py" <<'EOF'
import os, random
ref_name = os.environ["ref"]
cs = int(os.environ["cs"])
size = int(os.environ["size"])
rnd = int(os.environ["round"])
nelems = cs // 8                # one cluster per table
span = nelems * cs              # disk covered by one L2 table
rng = random.Random(cs * 10 + rnd)
ref = open(ref_name, "r+b")
assert h.get_size() == size

def write(off, n):
    buf = rng.randbytes(n)
    h.pwrite(buf, off)
    ref.seek(off)
    ref.write(buf)

def zero(off, n, flags=0):
    h.zero(n, off, flags)
    ref.seek(off)
    ref.write(bytes(n))

def trim(off, n):
    h.trim(n, off)
    a = (off + cs - 1) // cs * cs
    b = (off + n) // cs * cs
    if a < b:
        ref.seek(a)
        ref.write(bytes(b - a))

touched = []
for o, n in [(0, 1), (1000 + rnd, 3 * cs), (cs - 5, 10), (span - 700, 1400),
             (2 * span - cs, 2 * cs), (2 * span + cs + 17, cs + 1),
             (size - 513, 513), (size - 2 * cs - 3, cs)]:
    write(o, n)
    touched.append((o, n))
zero(2 * span - cs // 2, cs)                 # unaligned, across tables
zero(4 * cs, 2 * cs)                         # aligned, unallocated
zero(1000 + rnd + cs, cs)                    # aligned or not, on data
zero(cs + 100, 200, nbd.CMD_FLAG_NO_HOLE)
trim(span - cs, 2 * cs)                      # whole clusters of data
trim(2 * span + cs + 5, cs)                  # no whole cluster
for o in range(0, min(size, 8 * span) - 6 * cs - 8192, span // 2):
    write(o + rnd * 4096, 5 * cs + 1)
    touched.append((o + rnd * 4096, 5 * cs + 1))
h.flush()
ref.close()

f = open(ref_name, "rb")
for i in range(50):
    touched.append((rng.randrange(0, size - 3 * cs), rng.randint(1, 3 * cs)))
for o, n in touched:
    f.seek(o)
    if h.pread(n, o) != f.read(n):
        raise Exception("mismatch in %d bytes at %d" % (n, o))
EOF

# table_size and features from the header.
table_size () { header_field "$1" 8 4; }
features () { header_field "$1" 16 8; }

# An L2 table covers 2M with 4K clusters, 32M with 16K clusters.
for cs in 4096 16384; do
    if [ $cs = 4096 ]; then
        size=$(( 24 * 1024 * 1024 + 512 ))
    else
        size=$(( 80 * 1024 * 1024 + 512 ))
    fi
    img=$tmpdir/disk-$cs.qed
    ref=$tmpdir/ref-$cs.raw
    out=$tmpdir/out.raw
    qemu-img create -q -f qed -o cluster_size=$cs,table_size=1 "$img" $size
    test "$(table_size "$img")" = 1
    truncate -s $size "$ref"

    start_nbdkit srv "$plugin" "$img"
    ref="$ref" cs=$cs size=$size round=0 nbdsh -u "$uri_srv" \
        -c "exec(open('$tmpdir/ops.py').read())"
    nbdcopy "$uri_srv" "$out"
    cmp "$ref" "$out"
    stop_nbdkit srv
    test "$(table_size "$img")" = 1
    test "$(features "$img")" = 0
    /usr/bin/python3 "$tmpdir/qedread.py" "$img" "$ref"

    # Restart: what was written is there, the check finds nothing, and
    # more writes (now into existing tables) land right too.
    start_nbdkit srv "$plugin" "$img" check=always
    nbdcopy "$uri_srv" "$out"
    cmp "$ref" "$out"
    ref="$ref" cs=$cs size=$size round=1 nbdsh -u "$uri_srv" \
        -c "exec(open('$tmpdir/ops.py').read())"
    nbdcopy "$uri_srv" "$out"
    cmp "$ref" "$out"
    stop_nbdkit srv
    grep "check found the image consistent" "$tmpdir/srv.log"
    must_fail grep -E "repaired|corruptions" "$tmpdir/srv.log"
    /usr/bin/python3 "$tmpdir/qedread.py" "$img" "$ref"

    # Should QEMU ever open these, it must agree too.
    if qemu-img info -f qed "$img" > /dev/null 2>&1; then
        qemu-img compare -f qed -F raw "$img" "$ref"
        qemu-img check -f qed "$img"
    fi
    rm -f "$img" "$ref" "$out"
done
