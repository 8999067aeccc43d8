#!/usr/bin/env bash
# nbdkit-qed tests: qed-img convert against qemu-img convert.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Raw and QED sources (a chain three deep, with zero clusters, holes
# and a base shorter than the top) into raw and QED images of several
# cluster and table sizes: the result reads as the source (qemu-img
# compare), qemu-img check calls it clean, raw output is byte for byte
# what qemu-img convert writes, and neither is larger than qemu-img
# convert's output, in size or on disk.  With -B only what differs from
# the backing file is written.  Bad arguments are refused before DST
# is touched.

source ./functions.sh
set -e -u -x -o pipefail

requires qemu-img --version
requires qemu-io --version
requires jq --version

cd "$tmpdir"

qed_img convert --help | grep -F "Usage: qed-img convert "

# same_as_qemu SRC ARGS...: qed-img convert ARGS... SRC reads as SRC,
# is clean, and is not larger than qemu-img convert ARGS... SRC; raw
# output (no -O qed in ARGS) is identical to it.
n=0
same_as_qemu ()
{
    local src=$1; shift
    n=$(( n + 1 ))
    qed_img convert "$@" "$src" ours.$n
    qemu-img convert "$@" "$src" theirs.$n
    qemu-img compare "$src" ours.$n
    not_larger ours.$n theirs.$n
    case " $* " in
        *" -O qed "*)
            qemu-img check ours.$n
            qemu-img info ours.$n | grep '^file format: qed$'
            ;;
        *)  cmp ours.$n theirs.$n ;;
    esac
}

# A raw source with random data, written zeros, holes, data in single
# 4 KiB blocks (next to zeros in the same cluster), and an end that is
# no cluster boundary.
truncate -s $(( 24 * 1024 * 1024 + 5 * 4096 )) src.raw
dd if=/dev/urandom of=src.raw bs=64k seek=0 count=20 conv=notrunc
dd if=/dev/zero of=src.raw bs=64k seek=40 count=16 conv=notrunc
dd if=/dev/urandom of=src.raw bs=4k seek=1000 count=1 conv=notrunc
dd if=/dev/urandom of=src.raw bs=4k seek=1002 count=1 conv=notrunc
dd if=/dev/urandom of=src.raw bs=1M seek=20 count=2 conv=notrunc
dd if=/dev/urandom of=src.raw bs=4k seek=$(( 6144 + 3 )) count=1 conv=notrunc
cp src.raw src.orig

same_as_qemu src.raw
same_as_qemu src.raw -O raw
same_as_qemu src.raw -O qed
same_as_qemu src.raw -O qed -o cluster_size=4k,table_size=16
same_as_qemu src.raw -f raw -O qed -o cluster_size=1M,table_size=2
# The source was only read.
cmp src.raw src.orig

# A chain: base.raw (16 MiB) <- mid.qed (20 MiB, 64 KiB clusters)
# <- top.qed (24 MiB, 4 KiB clusters), each with data, zero clusters
# over data below, and partial clusters.
head -c $(( 16 * 1024 * 1024 )) /dev/urandom > base.raw
qemu-img create -q -f qed -b base.raw -F raw mid.qed 20M
qemu-io -f qed -c 'write -P 0x11 1M 200k' -c 'write -z 4M 256k' \
    -c 'write -P 0x12 17M 100k' -c 'write -z 18M 64k' mid.qed
qemu-img create -q -f qed -b mid.qed -F qed -o cluster_size=4k top.qed 24M
qemu-io -f qed -c 'write -P 0x21 1100k 8k' -c 'write -z 2M 1M' \
    -c 'write -P 0x22 21M 10k' -c 'write -P 0x11 1M 4k' \
    -c 'write -z 5M 4k' top.qed
same_as_qemu top.qed
same_as_qemu top.qed -f qed -O qed
same_as_qemu top.qed -O qed -o cluster_size=4k
same_as_qemu mid.qed -O qed -o table_size=16

# Table size 1, which QEMU 7.2 cannot open: read back by qed-img
# itself, against qemu-img's raw copy of the source.
qed_img convert -O qed -o table_size=1,cluster_size=64k top.qed t1.qed
qed_img check t1.qed
qed_img convert t1.qed t1.raw
qemu-img convert top.qed top.raw
cmp t1.raw top.raw

# 64 MiB clusters (the largest), once; QEMU 7.2 can neither make nor
# open such images.  24 MiB of data fit in one cluster: the file is the
# header, the L1 table, one L2 table (4 clusters each) and that one.
qed_img convert -O qed -o cluster_size=64M top.qed c64m.qed
qed_img check c64m.qed
test "$(stat -c %s c64m.qed)" = $(( 10 * 64 * 1024 * 1024 ))
qed_img convert c64m.qed c64m.raw
cmp c64m.raw top.raw

# -B: DST is backed by BACKING and holds only what differs from it.
# At 1M, top.qed holds a 4 KiB cluster with what mid.qed has there:
# qemu-img writes it, qed-img leaves it to the backing file.
qed_img convert -O qed -B mid.qed -F qed top.qed over-mid.qed
qemu-img convert -O qed -B mid.qed -F qed top.qed qemu-over-mid.qed
qemu-img compare top.qed over-mid.qed
qemu-img check over-mid.qed
qemu-img info over-mid.qed | grep '^backing file: mid.qed$'
not_larger over-mid.qed qemu-over-mid.qed
map_at qemu-over-mid.qed $(( 1024 * 1024 )) '.depth == 0'
map_at over-mid.qed $(( 1024 * 1024 )) '.depth == 1'
# What top.qed changed is there, zeros over data as zero clusters.
map_at over-mid.qed $(( 21 * 1024 * 1024 )) '.depth == 0 and .data'
map_at over-mid.qed $(( 2 * 1024 * 1024 )) '.depth == 0 and .zero'
# Over the raw base: mid.qed's changes are copied too; past the end of
# the base (16 MiB), zeros are left to read as zeros, also next to data
# (at 21 MiB).
qed_img convert -O qed -B base.raw -F raw -o cluster_size=4k top.qed \
    over-raw.qed
qemu-img compare top.qed over-raw.qed
qemu-img check over-raw.qed
qemu-img info over-raw.qed | grep '^backing file format: raw$'
map_at over-raw.qed $(( 20 * 1024 * 1024 )) '.present == false'
map_at over-raw.qed $(( 21 * 1024 * 1024 + 64 * 1024 )) '.present == false'

# A raw source whose size is no multiple of 512: rounded up, as
# qemu-img rounds it.
head -c 1000 /dev/urandom > odd.raw
same_as_qemu odd.raw
qed_img convert -O qed odd.raw odd.qed
qemu-img info --output=json odd.qed | jq -e '."virtual-size" == 1024'

# -f raw copies a QED file as it is.
qed_img convert -f raw mid.qed mid-bytes.raw
cmp mid.qed mid-bytes.raw

# -p draws qemu-img's progress; nothing without it, or with -q.
qed_img convert -p -O qed top.qed p.qed > progress
grep -F '    (100.00/100%)' progress
qed_img convert -O qed top.qed p.qed > progress
test ! -s progress
qed_img convert -p -q -O qed top.qed p.qed > progress
test ! -s progress

# Refusals name the cause and leave DST as it was (or absent).
cp src.raw dst.raw
cp src.raw dst.orig
qed_img_refuses 'No such file or directory' convert missing.raw dst.raw
qed_img_refuses 'not a QED image' convert -f qed src.raw dst.raw
qed_img_refuses 'format vmdk is not supported' convert -f vmdk src.raw dst.raw
qed_img_refuses '-O vmdk' convert -O vmdk src.raw dst.raw
qed_img_refuses "backing file's format is needed" \
    convert -O qed -B base.raw src.raw dst.raw
qed_img_refuses '-F vmdk' convert -O qed -B base.raw -F vmdk src.raw dst.raw
qed_img_refuses '-F raw without a backing file' \
    convert -O qed -F raw src.raw dst.raw
qed_img_refuses 'a raw image has no backing file' \
    convert -B base.raw -F raw src.raw dst.raw
qed_img_refuses 'a raw image has no options' \
    convert -o cluster_size=4k src.raw dst.raw
qed_img_refuses 'cluster size' \
    convert -O qed -o cluster_size=3k src.raw dst.raw
qed_img_refuses 'missing.raw' \
    convert -O qed -B missing.raw -F raw src.raw dst.raw
cmp dst.raw dst.orig
qed_img_refuses 'is the image being converted' convert dst.raw dst.raw
qed_img_refuses 'is the image being converted' convert dst.raw ./dst.raw
cmp dst.raw dst.orig
# DST among SRC's backing files, or BACKING's.
cp base.raw base.orig
qed_img_refuses 'one of its backing files' convert -O qed top.qed base.raw
qed_img_refuses 'would be its own backing file' \
    convert -O qed -B mid.qed -F qed src.raw base.raw
cmp base.raw base.orig
# A missing backing file creates nothing.
qed_img_refuses 'missing.raw' \
    convert -O qed -B missing.raw -F raw src.raw new.qed
test ! -e new.qed
