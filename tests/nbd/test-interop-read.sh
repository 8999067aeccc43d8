#!/usr/bin/env bash
# nbdkit-qed tests: images written by QEMU read back byte for byte.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# For cluster sizes 4K, 64K and 1M and table sizes 4 and 16, qemu-io
# fills an image (unaligned and cluster-spanning writes, aligned and
# unaligned write -z, writes across L2 tables and at the end of the
# disk); what the plugin serves must equal qemu-img convert -O raw,
# read whole with nbdcopy and in unaligned pieces with nbdsh.  Then a
# sparse 3 TiB disk, both ways, for offsets past 4 GiB.
# (table_size 1 is in test-table-size-1.sh: QEMU 7.2 cannot open it.)

source ./functions.sh
set -e -u -x

requires nbdkit --version
requires nbdcopy --version
requires nbdsh --version
requires qemu-img --version
requires qemu-io --version

# Not a multiple of any cluster size: the last cluster is partial.
size=$(( 32 * 1024 * 1024 + 1536 ))

# Random data for qemu-io write -s (the longest write below is 5M).
rnd=$tmpdir/random
head -c $(( 6 * 1024 * 1024 )) /dev/urandom > "$rnd"

for cs in 4096 65536 1048576; do
    for ts in 4 16; do
        img=$tmpdir/disk-$cs-$ts.qed
        ref=$tmpdir/ref-$cs-$ts.raw
        out=$tmpdir/out-$cs-$ts.raw
        qemu-img create -q -f qed -o cluster_size=$cs,table_size=$ts \
            "$img" $size

        # One L2 table covers nelems clusters.
        nelems=$(( ts * cs / 8 ))
        cmds=(
            "write -P 0x11 0 1"
            "write -s $rnd 1000 70000"
            "write -P 0x33 $(( cs - 5 )) 10"
            "write -s $rnd $(( 3 * cs + 17 )) $(( 5 * cs ))"
            "write -P 0x77 2000 100"
            "write -z $(( 10 * cs )) $(( 2 * cs ))"
            "write -z $(( 3 * cs )) $cs"
            "write -z $(( 4 * cs + 100 )) 300"
            "write -z $(( 14 * cs + 100 )) 5000"
            "write -P 0x44 $(( 15 * cs )) $cs"
            "write -z $(( 15 * cs + cs / 2 )) $cs"
            "write -s $rnd $(( 20 * cs - 4096 )) $(( 8192 + 512 ))"
            "write -P 0x55 $(( size - 2 * cs - 7 )) 4000"
            "write -s $rnd $(( size - 513 )) 513"
            "write -P 0x66 $(( size - 1 )) 1"
        )
        # Writes across the boundaries of L2 tables.
        for (( b = nelems * cs; b < size; b += nelems * cs )); do
            n=2000
            if [ $(( b + 1000 )) -gt $size ]; then n=1000; fi
            cmds+=("write -s $rnd $(( b - 1000 )) $n")
        done
        args=()
        for c in "${cmds[@]}"; do args+=(-c "$c"); done
        qemu-io -f qed "${args[@]}" "$img" > "$tmpdir/qemu-io.log"
        qemu-img check -q -f qed "$img"

        qemu-img convert -f qed -O raw "$img" "$ref"

        start_nbdkit srv "$plugin" "$img"
        nbdcopy "$uri_srv" "$out"
        cmp "$ref" "$out"

        # Unaligned pieces, small and across clusters.
        ref="$ref" cs=$cs size=$size nbdsh -u "$uri_srv" -c '
import os, random
ref = open(os.environ["ref"], "rb").read()
cs = int(os.environ["cs"])
size = int(os.environ["size"])
assert h.get_size() == size == len(ref)
ranges = [(0, 1), (999, 70002), (cs - 7, 14), (3 * cs + 16, 5 * cs + 2),
          (4 * cs + 99, 302), (15 * cs + cs // 2 - 1, cs + 2),
          (size - 513, 513), (size - 1, 1), (size - 3 * cs + 5, 3 * cs - 5)]
rng = random.Random(cs)
for i in range(60):
    n = rng.randint(1, min(3 * cs, 4 << 20))
    off = rng.randint(0, size - n)
    ranges.append((off, n))
for off, n in ranges:
    if h.pread(n, off) != ref[off:off + n]:
        raise Exception("mismatch in %d bytes at %d" % (n, off))
'
        stop_nbdkit srv

        # Serving it did not spoil it for QEMU.
        qemu-img check -q -f qed "$img"
        qemu-img compare -q -f qed -F raw "$img" "$ref"
        rm -f "$img" "$ref" "$out"
    done
done

# A sparse 3 TiB disk: offsets past 4 GiB and L2 tables far apart
# (64K clusters, table_size 4: one L2 table covers 2 GiB).  Windows
# around QEMU's writes, taken out with qemu-img dd, must equal what
# the plugin reads there; what the plugin writes, qemu-io must read.
G=$(( 1024 * 1024 * 1024 ))
size=$(( 3 * 1024 * G + 512 ))
img=$tmpdir/big.qed
qemu-img create -q -f qed -o cluster_size=65536 "$img" $size
qemu-io -f qed \
    -c "write -s $rnd $(( 4 * G - 1000 )) 3000" \
    -c "write -z $(( 2 * G - 65536 )) 131072" \
    -c "write -P 0x33 $(( 2048 * G - 1 )) 2" \
    -c "write -s $rnd $(( 1024 * G + 12345 )) 200000" \
    -c "write -s $rnd $(( size - 70000 )) 70000" \
    "$img" > "$tmpdir/qemu-io.log"
windows=(
    $(( 4 * G / 65536 - 2 )):4
    $(( 2 * G / 65536 - 2 )):4
    $(( 2048 * G / 65536 - 1 )):2
    $(( 1024 * G / 65536 )):5
    $(( size / 65536 - 2 )):3
)
for w in "${windows[@]}"; do
    skip=${w%:*} n=${w#*:}
    # qemu-img dd counts the skipped blocks in count.
    qemu-img dd -f qed -O raw bs=65536 skip=$skip count=$(( skip + n )) \
        if="$img" of="$tmpdir/w-$skip.raw"
done
start_nbdkit srv "$plugin" "$img"
windows="${windows[*]}" tmpdir=$tmpdir nbdsh -u "$uri_srv" -c '
import os
for w in os.environ["windows"].split():
    skip, n = map(int, w.split(":"))
    want = open("%s/w-%d.raw" % (os.environ["tmpdir"], skip), "rb").read()
    off = skip * 65536
    n = min(n * 65536, h.get_size() - off)
    assert len(want) == n, (w, len(want), n)
    if h.pread(n, off) != want:
        raise Exception("window %s differs" % w)
G = 1 << 30
h.pwrite(b"\x44" * 5000, 5 * G - 2500)
h.pwrite(b"\x55" * 100, h.get_size() - 100)
h.zero(131072, 3 * G)
h.pwrite(b"\x66" * 200000, 2048 * G - 100000)
h.trim(65536 * 2, 2048 * G)
'
stop_nbdkit srv
qemu-img check -q -f qed "$img"
qemu-io -f qed -r \
    -c "read -P 0x44 $(( 5 * G - 2500 )) 5000" \
    -c "read -P 0 $(( 5 * G - 65536 )) $(( 65536 - 2500 ))" \
    -c "read -P 0x55 $(( size - 100 )) 100" \
    -c "read -P 0x66 $(( 2048 * G - 100000 )) 100000" \
    -c "read -P 0 $(( 2048 * G )) 131072" \
    -c "read -P 0 $(( 3 * G )) 131072" \
    "$img" > "$tmpdir/qemu-io.log"
