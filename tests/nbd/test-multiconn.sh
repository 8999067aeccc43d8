#!/usr/bin/env bash
# nbdkit-qed tests: nbdcopy with 4 connections into the export.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# nbdcopy copies a raw file with random data and zero runs (which it
# turns into zero requests) into a fresh image over 4 connections,
# then a second such file over the first; the export, and the image as
# QEMU sees it, must equal the last file, and qemu-img check must be
# clean.

source ./functions.sh
set -e -u -x

requires nbdkit --version
requires nbdcopy --version
requires qemu-img --version
requires /usr/bin/python3 --version

size=$(( 40 * 1024 * 1024 + 512 ))

# make_raw FILE SEED: random data with zero runs of all sizes.
make_raw ()
{
    /usr/bin/python3 - "$1" $size "$2" <<'EOF'
import random, sys
name, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
with open(name, "wb") as f:
    off = 0
    while off < size:
        n = min(size - off, rng.choice([512, 4096, 65536, 300000, 2 << 20])
                + rng.randint(-511, 511))
        n = max(n, 1)
        f.write(bytes(n) if rng.random() < 0.4 else rng.randbytes(n))
        off += n
EOF
}
make_raw "$tmpdir/a.raw" 1
make_raw "$tmpdir/b.raw" 2

for cs in 65536 16384; do
    img=$tmpdir/disk-$cs.qed
    qemu-img create -q -f qed -o cluster_size=$cs "$img" $size
    start_nbdkit srv "$plugin" "$img"
    for src in a b; do
        nbdcopy --connections=4 --flush "$tmpdir/$src.raw" "$uri_srv"
        nbdcopy --connections=4 "$uri_srv" "$tmpdir/out.raw"
        cmp "$tmpdir/$src.raw" "$tmpdir/out.raw"
    done
    stop_nbdkit srv
    qemu-img check -f qed "$img"
    qemu-img compare -f qed -F raw "$img" "$tmpdir/b.raw"
    rm -f "$img" "$tmpdir/out.raw"
done
