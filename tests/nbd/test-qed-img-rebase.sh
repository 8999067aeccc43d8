#!/usr/bin/env bash
# nbdkit-qed tests: qed-img rebase against qemu-img rebase.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Raw and QED backing files, a chain three deep, backing files shorter
# than the image, 4 KiB and 64 KiB clusters, table sizes 1 and 16:
# after rebase the image reads exactly as before (qemu-img compare),
# is clean (qemu-img check), names the backing file qemu-img rebase
# names, and is not larger than qemu-img rebase leaves it; with -u the
# file is byte for byte qemu-img's.  Clusters that read the same
# through both backing files are not copied.  Bad arguments change
# nothing.

source ./functions.sh
set -e -u -x -o pipefail

requires qemu-img --version
requires qemu-io --version
requires jq --version

cd "$tmpdir"

qed_img rebase --help | grep -F "Usage: qed-img rebase "

# backing_of IMAGE: "NAME FORMAT" of its backing file, as qemu-img
# info says.
backing_of ()
{
    qemu-img info --output=json "$1" |
        jq -r '"\(."backing-filename" // "-") \(."backing-filename-format" // "-")"'
}

# rebase_like_qemu IMAGE ARGS...: qed-img rebase ARGS... on a copy of
# IMAGE (ours.qed) and qemu-img rebase on another (theirs.qed): ours
# reads as IMAGE did, is clean, is backed as theirs, and not larger.
rebase_like_qemu ()
{
    local image=$1; shift
    cp "$image" ours.qed
    cp "$image" theirs.qed
    qed_img rebase "$@" ours.qed
    qemu-img rebase "$@" theirs.qed
    qemu-img compare "$image" ours.qed
    qemu-img check ours.qed
    test "$(backing_of ours.qed)" = "$(backing_of theirs.qed)"
    not_larger ours.qed theirs.qed
}

# Random old and new backing files that differ in some clusters: new
# has other data at 1M, zeros at 2M, a hole at 3M (where old has
# data), and is longer.
head -c 4M /dev/urandom > old.raw
cp old.raw new.raw
truncate -s 6M new.raw
qemu-io -f raw -c 'write -P 0x44 1M 64k' -c 'write -z 2M 64k' \
    -c 'write -P 0x45 5M 64k' new.raw
fallocate --punch-hole -o 3M -l 64k new.raw
qemu-img convert -O qed new.raw new.qed

# The image: data over part of what differs, a zero cluster over old
# data, data past the end of old.
qemu-img create -q -f qed -b old.raw -F raw img.qed 6M
qemu-io -f qed -c 'write -P 0x22 1M 4k' -c 'write -z 192k 64k' \
    -c 'write -P 0x23 4100k 4k' img.qed
img_sum=$(sha256sum < img.qed)

rebase_like_qemu img.qed -b new.raw -F raw
# Only what differs was copied: 2M and 3M (not held, different), not
# 0 (the same in both).
map_at ours.qed $(( 2 * 1024 * 1024 )) '.depth == 0 and .data'
map_at ours.qed $(( 3 * 1024 * 1024 )) '.depth == 0 and .data'
map_at ours.qed 0 '.depth == 1'
# Past the end of old, new has data at 5M: zeros there are a zero
# cluster, not data.
map_at ours.qed $(( 5 * 1024 * 1024 )) '.depth == 0 and .zero'
# The zero cluster at 192k stays.
map_at ours.qed $(( 192 * 1024 )) '.depth == 0 and .zero'

rebase_like_qemu img.qed -b new.qed -F qed
cp img.qed p.qed
qed_img rebase -p -b new.qed -F qed p.qed > progress
grep -F '    (100.00/100%)' progress
qed_img rebase -b new.raw -F raw p.qed > progress
test ! -s progress
qed_img rebase -p -q -b new.qed -F qed p.qed > progress
test ! -s progress
# -b "": standalone; everything of old that is not zero is copied.
rebase_like_qemu img.qed -b ''
test "$(backing_of ours.qed)" = "- -"
# The image itself was never written.
test "$(sha256sum < img.qed)" = "$img_sum"

# -u: only the header, byte for byte qemu-img's, also when the old
# backing file is missing (here: a name that was never a file).
rebase_like_unsafe ()
{
    local image=$1; shift
    cp "$image" ours.qed
    cp "$image" theirs.qed
    qed_img rebase -u "$@" ours.qed
    qemu-img rebase -u "$@" theirs.qed
    cmp ours.qed theirs.qed
}
rebase_like_unsafe img.qed -b new.qed -F qed
rebase_like_unsafe img.qed -b new.raw -F raw
rebase_like_unsafe img.qed -b ''
qemu-img create -q -f qed -b gone.raw -F raw -u orphan.qed 6M
rebase_like_unsafe orphan.qed -b old.raw -F raw
rebase_like_unsafe orphan.qed -b a-much-longer-name-than-before.qed -F qed

# A chain three deep, 4 KiB clusters on top: old.raw <- mid.qed <-
# top.qed, rebased onto old.raw, skipping mid.qed (its data and zero
# clusters must be copied), and onto a shorter file.
qemu-img create -q -f qed -b old.raw -F raw mid.qed 6M
qemu-io -f qed -c 'write -P 0x31 512k 128k' -c 'write -z 3M 64k' \
    -c 'write -P 0x32 4M 100k' mid.qed
qemu-img create -q -f qed -b mid.qed -F qed -o cluster_size=4k top.qed 6M
qemu-io -f qed -c 'write -P 0x41 520k 4k' -c 'write -z 1M 8k' top.qed
rebase_like_qemu top.qed -b old.raw -F raw
map_at ours.qed $(( 3 * 1024 * 1024 )) '.depth == 0 and .zero'
map_at ours.qed $(( 600 * 1024 )) '.depth == 0 and .data'
head -c 1M /dev/urandom > short.raw
rebase_like_qemu top.qed -b short.raw -F raw
# 64 KiB clusters over the same chain, table size 16.
qemu-img create -q -f qed -b mid.qed -F qed -o table_size=16 top16.qed 6M
qemu-io -f qed -c 'write -P 0x51 3M 64k' top16.qed
rebase_like_qemu top16.qed -b new.raw -F raw

# Table size 1, which QEMU 7.2 cannot open: what the image reads,
# before and after, through qed-img convert.
qed_img convert -O qed -o table_size=1,cluster_size=4k -B mid.qed -F qed \
    top.qed t1.qed
qed_img convert t1.qed t1-before.raw
qemu-img convert top.qed top.raw
cmp t1-before.raw top.raw
qed_img rebase -b short.raw -F raw t1.qed
qed_img check t1.qed
qed_img convert t1.qed t1-after.raw
cmp t1-after.raw top.raw
qed_img info t1.qed | grep '^backing file: short.raw$'

# Refusals name the cause and change nothing.
cp img.qed img.orig
qed_img_refuses 'No such file or directory' rebase -b new.raw -F raw missing.qed
qed_img_refuses 'not a QED image' rebase -b new.qed -F qed old.raw
qed_img_refuses "backing file's format is needed" rebase -b new.raw img.qed
qed_img_refuses "backing file's format is needed" rebase -u -b new.raw img.qed
qed_img_refuses '-F vmdk' rebase -b new.raw -F vmdk img.qed
qed_img_refuses '-b BACKING is needed' rebase img.qed
qed_img_refuses 'could not open the new backing file missing.raw' \
    rebase -b missing.raw -F raw img.qed
qed_img_refuses 'would be its own backing file' rebase -b img.qed -F qed img.qed
qed_img_refuses 'with -u, only the header' rebase -b new.raw -F raw orphan.qed
cmp img.qed img.orig
# An image backed by img.qed cannot become img.qed's backing file.
qemu-img create -q -f qed -b img.qed -F qed child.qed
qed_img_refuses 'would be its own backing file' \
    rebase -b child.qed -F qed img.qed
cmp img.qed img.orig
