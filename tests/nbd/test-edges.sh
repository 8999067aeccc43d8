#!/usr/bin/env bash
# nbdkit-qed tests: NBD requests at every edge, many in flight.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# edge-io (a libnbd program, see edge-io.c) sends requests at the end
# of the disk, zero-length and maximum-size ones, unaligned requests
# around cluster, L2-slice and L2-table boundaries, then 8 connections
# with 64 requests in flight each, all checked against a raw reference
# file.  Three geometries put those boundaries in different places:
#   64K clusters, table_size 4 (QEMU's default): slices every 32 MiB,
#     an L2 table every 2 GiB, a disk just over 2 GiB;
#   64K clusters, table_size 1: an L2 table every 512 MiB;
#   4K clusters, table_size 1: slices and L2 tables every 2 MiB.
# Afterwards the export reads as the reference (nbdcopy + compare), the
# engine's check is clean and so is qemu-img check (which cannot open
# table_size 1 images: see the format notes).

source ./functions.sh
set -e -u -x

requires test -x ./edge-io
requires nbdcopy --version
requires qemu-img --version

qedcheck=$abs_builddir/qedcheck
cd "$tmpdir"

seed=${EDGE_SEED:-$RANDOM}
echo "seed $seed (EDGE_SEED=$seed reproduces this run)"

for geometry in 65536:4:$(( (2048 + 40) * 1024 * 1024 + 1536 )) \
                65536:1:$(( (512 + 200) * 1024 * 1024 + 512 )) \
                4096:1:$(( 170 * 1024 * 1024 + 3584 )); do
    IFS=: read -r cs ts size <<< "$geometry"
    img=disk-$cs-$ts.qed
    qemu-img create -q -f qed -o cluster_size=$cs,table_size=$ts "$img" $size
    rm -f ref.raw
    truncate -s $size ref.raw

    start_nbdkit srv "$plugin" "$img"
    "$abs_builddir/edge-io" "$uri_srv" ref.raw $cs $ts $seed
    # The export reads as the reference (both copies are sparse, and
    # qemu-img compare skips the holes).
    nbdcopy --connections=4 "$uri_srv" out.raw
    qemu-img compare -f raw -F raw out.raw ref.raw
    rm -f out.raw
    stop_nbdkit srv

    "$qedcheck" "$img"
    test "$(header_field "$img" 16 8)" = 0     # NEED_CHECK clear
    if [ $ts != 1 ]; then
        qemu-img check -f qed "$img"
        qemu-img compare -f qed -F raw "$img" ref.raw
    fi
    rm -f "$img" ref.raw
done
