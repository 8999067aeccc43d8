#!/usr/bin/env bash
# nbdkit-qed tests: qed-img resize, against raw files resized the same
# way by qemu-img.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Images QEMU made, without and with backing files (raw longer than the
# image, QED shorter), with 4 KiB and 64 KiB clusters and data around
# the cuts (written last-first, so that the clusters past a cut lie in
# the file before those it keeps), are grown and shrunk: each then
# reads as a raw file written and resized the same way (qemu-img
# compare), has the size qemu-img info expects, and neither qemu-img
# check nor qed-img check finds a corruption or a leaked cluster.  (QEMU
# 7.2 shrinks no QED image, and grows no overlay over a longer backing
# file; it cannot open table_size 1, which the unit tests cover.)
# Refusals -- no --shrink, past the largest size, bad sizes, -U, an
# image a server writes -- leave the file byte for byte as it was.

source ./functions.sh
set -e -u -x -o pipefail

requires qemu-img --version
requires qemu-io --version
requires jq --version
requires nbdsh --version

cd "$tmpdir"

qed_img resize --help | grep -F "Usage: qed-img resize "

K=1024 M=$(( 1024 * 1024 ))

# write_data IMAGE FORMAT SIZE: the same writes into either file: data
# at the end, around 3000k (where the tests cut), zeros at 1M, data at
# the start; last-first.
write_data ()
{
    local size=$3
    qemu-io -f "$2" -c "write -P 0x31 $(( size - 65536 )) 64k" \
        -c 'write -P 0x32 2900k 200k' -c 'write -z 1M 64k' \
        -c 'write -P 0x33 4k 100k' "$1" > /dev/null
}

# make_pair IMAGE CLUSTER SIZE [BACKING FORMAT]: a QED image made by
# qemu-img, and IMAGE.raw, a raw file that reads the same (SIZE in
# bytes).
make_pair ()
{
    local image=$1 cluster=$2 size=$3
    if [ $# -gt 3 ]; then
        qemu-img create -q -f qed -o cluster_size="$cluster" \
            -b "$4" -F "$5" "$image" "$size"
        qemu-img convert -O raw "$image" "$image.raw"
    else
        qemu-img create -q -f qed -o cluster_size="$cluster" "$image" "$size"
        qemu-img create -q -f raw "$image.raw" "$size"
    fi
    write_data "$image" qed "$size"
    write_data "$image.raw" raw "$size"
    qemu-img compare -f qed -F raw "$image" "$image.raw"
}

# clean IMAGE: qemu-img check and qed-img check both exit 0: no
# corruption, no leaked cluster.
clean ()
{
    qemu-img check "$1"
    qed_img check "$1"
}

virtual_size ()
{
    qemu-img info --output=json "$1" | jq '."virtual-size"'
}

# resize_like_raw IMAGE ARGS...: qed-img resize ARGS IMAGE SIZE and
# qemu-img resize ARGS IMAGE.raw SIZE (SIZE last in ARGS, in bytes,
# rounded up to 512 for the raw file as qed-img rounds it): the image
# reads as the raw file, has its size and is clean.
resize_like_raw ()
{
    local image=$1 size=${*: -1} rounded
    local args=("${@:2:$#-2}")
    rounded=$(( (size + 511) / 512 * 512 ))
    qed_img resize "${args[@]}" "$image" "$size" > out
    grep -Fx "Image resized." out
    qemu-img resize -q -f raw "${args[@]}" "$image.raw" "$rounded"
    test "$(virtual_size "$image")" = "$rounded"
    qemu-img compare -f qed -F raw "$image" "$image.raw"
    clean "$image"
}

for cluster in 64k 4k; do
    #------------------------------------------------------------------
    # No backing file.
    make_pair plain.qed $cluster $(( 8 * M ))
    # Growing from a size that is a multiple of the cluster size changes
    # only the size in the header: the file is qemu-img resize's.
    cp plain.qed theirs.qed
    qemu-img resize -q theirs.qed 12M
    resize_like_raw plain.qed $(( 12 * M ))
    cmp plain.qed theirs.qed
    # Shrinking inside a cluster, in the data written around the cut.
    before=$(stat -c %s plain.qed)
    resize_like_raw plain.qed --shrink $(( 3000 * K ))
    test "$(stat -c %s plain.qed)" -lt "$before"
    # Growing back: the stale end of the cut cluster, and what lay past
    # the cut, read as zeros.
    resize_like_raw plain.qed $(( 9 * M ))
    # Relative sizes; -SIZE needs no --.
    qed_img resize -q --shrink plain.qed -1M > out
    test ! -s out
    qemu-img resize -q -f raw --shrink plain.qed.raw -- -1M
    qemu-img compare -f qed -F raw plain.qed plain.qed.raw
    qed_img resize plain.qed +2M
    qemu-img resize -q -f raw plain.qed.raw +2M
    qemu-img compare -f qed -F raw plain.qed plain.qed.raw
    test "$(virtual_size plain.qed)" = $(( 10 * M ))
    clean plain.qed

    #------------------------------------------------------------------
    # A raw backing file longer than the image: growing must not show it.
    head -c 16M /dev/urandom > base.raw
    make_pair over.qed $cluster $(( 6 * M )) base.raw raw
    resize_like_raw over.qed $(( 14 * M + 1536 ))
    resize_like_raw over.qed --shrink $(( 3000 * K ))
    resize_like_raw over.qed $(( 15 * M ))

    #------------------------------------------------------------------
    # A QED backing file shorter than the image.
    qemu-img create -q -f qed -o cluster_size=$cluster base.qed 4M
    qemu-io -f qed -c 'write -P 0x44 0 4M' base.qed > /dev/null
    make_pair short.qed $cluster $(( 8 * M )) base.qed qed
    resize_like_raw short.qed --shrink $(( 3000 * K + 100 ))
    resize_like_raw short.qed $(( 10 * M ))
done

# The size rounds up to 512 bytes, as qemu-img create rounds it.
qemu-img create -q -f qed round.qed 512K
qed_img resize -q round.qed 1000001
test "$(virtual_size round.qed)" = 1000448
qed_img resize -q round.qed 1000448
test "$(virtual_size round.qed)" = 1000448
clean round.qed

#----------------------------------------------------------------------
# Refusals change nothing.  4 KiB clusters and 4-cluster tables map at
# most 16 GiB.
make_pair r.qed 4k $(( 8 * M ))
cp r.qed r.qed.orig
unchanged ()
{
    cmp r.qed r.qed.orig
}
qed_img_refuses "--shrink" resize r.qed 1M
unchanged
qed_img_refuses "--shrink" resize r.qed -- -1M
unchanged
qed_img_refuses "--shrink" resize r.qed -512
unchanged
qed_img_refuses "17179869184 bytes" resize r.qed $(( 16 * 1024 * M + 1 ))
unchanged
qed_img_refuses "17179869184 bytes" resize r.qed 17G
unchanged
qed_img_refuses "17179869184 bytes" resize --shrink r.qed +16G
unchanged
for size in abc +abc 1.5x 12Q '' + 16E 99999999999999999999; do
    qed_img_refuses "not a valid size" resize r.qed "$size"
    unchanged
done
qed_img_refuses "must be positive" resize --shrink r.qed 0
unchanged
qed_img_refuses "must be positive" resize --shrink r.qed -- -8M
unchanged
qed_img_refuses "must be positive" resize --shrink r.qed -100M
unchanged
qed_img_refuses "too large" resize r.qed +18446744073709000000
unchanged
qed_img_refuses "-U cannot be used" resize -U r.qed 9M
unchanged
qed_img_refuses "must be a QED image" resize -f raw r.qed 9M
unchanged
qed_img_refuses "expected FILE and SIZE" resize r.qed
unchanged
qed_img_refuses "unknown option" resize --preallocation=full r.qed 9M
unchanged

# A server writing the image keeps qed-img from resizing it.
start_nbdkit w "$plugin" r.qed
nbdsh -u "$uri_w" -c 'h.pwrite(b"x" * 512, 0)'
stop_nbdkit w
cp r.qed r.qed.orig
start_nbdkit w "$plugin" r.qed
qed_img_refuses "in use" resize r.qed 9M
qed_img_refuses "in use" resize --shrink r.qed 1M
stop_nbdkit w
unchanged
qed_img resize --shrink r.qed 1M
clean r.qed
