#!/usr/bin/env bash
# nbdkit-qed tests: qed-img commit against qemu-img commit.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Raw and QED backing files, a chain three deep, backing files shorter
# than the image, 4 KiB and 64 KiB clusters, table sizes 1 and 16:
# afterwards the backing file alone reads as the image did, and the
# image still does.  A raw backing file is byte for byte what qemu-img
# commit leaves, a QED one reads the same as qemu-img's, is clean and
# not larger.  Without -d the image is emptied (QEMU 7.2 cannot empty
# a QED image); with -d it is not touched.  Bad arguments change
# nothing.

source ./functions.sh
set -e -u -x -o pipefail

requires qemu-img --version
requires qemu-io --version
requires jq --version

cd "$tmpdir"

qed_img commit --help | grep -F "Usage: qed-img commit "

# emptied IMAGE: the image holds nothing itself, and its file is the
# header and the L1 table.
emptied ()
{
    local info
    info=$(qed_img info --output=json "$1")
    qemu-img map --output=json "$1" |
        jq -e 'all(.[]; .depth > 0 or .present == false)'
    test "$(stat -c %s "$1")" = \
         $(( $(jq '."cluster-size" * (1 + ."table-size")' <<< "$info") ))
}

# commit_like_qemu "ARGS" IMAGE BASE [FILE...]: qed-img commit ARGS
# IMAGE in one copy of the chain IMAGE BASE FILE... (ours/), qemu-img
# commit in another (theirs/).  Afterwards ours/BASE reads as IMAGE
# read before, and ours/IMAGE too; ours/IMAGE is emptied unless -d is
# in ARGS, and untouched with it; the FILEs below BASE are untouched.
commit_like_qemu ()
{
    local args=$1 image=$2 base=$3 file; shift 3
    rm -rf ours theirs
    mkdir ours theirs
    cp "$image" "$base" "$@" ours/
    cp "$image" "$base" "$@" theirs/
    qemu-img convert "$image" before.raw
    qed_img commit $args ours/"$image" > out
    cat out
    grep -Fx 'Image committed.' out
    qemu-img commit $args theirs/"$image"
    qemu-img compare -F raw ours/"$base" before.raw
    qemu-img compare -F raw ours/"$image" before.raw
    case " $args " in
        *" -d "*) cmp ours/"$image" "$image" ;;
        *) emptied ours/"$image"
           qemu-img check ours/"$image" ;;
    esac
    if [[ $base == *.raw ]]; then
        cmp ours/"$base" theirs/"$base"
    else
        qemu-img check ours/"$base"
        not_larger ours/"$base" theirs/"$base"
    fi
    for file in "$@"; do
        cmp ours/"$file" "$file"
    done
}

# A raw base, shorter than the overlay: data, zeros over data, data
# past the end of the base, a partial cluster.
head -c 4M /dev/urandom > base.raw
qemu-img create -q -f qed -b base.raw -F raw over-raw.qed 6M
qemu-io -f qed -c 'write -P 0x11 64k 128k' -c 'write -z 1M 128k' \
    -c 'write -P 0x12 5M 4k' -c 'write -z 4M 64k' over-raw.qed
commit_like_qemu -d over-raw.qed base.raw
commit_like_qemu "" over-raw.qed base.raw
test "$(stat -c %s ours/base.raw)" = $(( 6 * 1024 * 1024 ))

# A QED base with data and zero clusters of its own, 4 KiB clusters
# on top of 64 KiB ones, and table size 16 below 4 KiB clusters.
qemu-img convert -O qed base.raw base.qed
qemu-io -f qed -c 'write -z 2M 192k' base.qed
qemu-img create -q -f qed -b base.qed -F qed -o cluster_size=4k \
    over-qed.qed 6M
qemu-io -f qed -c 'write -P 0x21 64k 68k' -c 'write -z 1M 128k' \
    -c 'write -P 0x22 5M 4k' -c 'write -z 4M 64k' -c 'write -P 0x23 2M 4k' \
    over-qed.qed
commit_like_qemu -d over-qed.qed base.qed
commit_like_qemu -p over-qed.qed base.qed
qemu-img info --output=json ours/base.qed | jq -e '."virtual-size" == 6291456'
# Zeros past the old end of the base are a zero cluster, not data.
map_at ours/base.qed $(( 4 * 1024 * 1024 )) '.depth == 0 and .zero'
qemu-img convert -O qed -o cluster_size=4k,table_size=16 base.raw base16.qed
qemu-img create -q -f qed -b base16.qed -F qed over16.qed 4M
qemu-io -f qed -c 'write -P 0x31 100k 300k' -c 'write -z 3M 64k' over16.qed
commit_like_qemu "" over16.qed base16.qed

# A chain three deep: top.qed into mid.qed; base.raw is not touched.
qemu-img create -q -f qed -b base.raw -F raw mid.qed 6M
qemu-io -f qed -c 'write -P 0x41 1M 64k' -c 'write -z 3M 64k' mid.qed
qemu-img create -q -f qed -b mid.qed -F qed top.qed 6M
qemu-io -f qed -c 'write -P 0x42 1M 4k' -c 'write -z 512k 64k' \
    -c 'write -P 0x43 3M 64k' top.qed
commit_like_qemu "" top.qed mid.qed base.raw
# Zeros over what mid.qed does not hold are a zero cluster there.
map_at ours/mid.qed $(( 512 * 1024 )) '.depth == 0 and .zero'
commit_like_qemu -d top.qed mid.qed base.raw

# -p draws the progress before the last line; -q prints nothing.
cp over-raw.qed p.qed
cp base.raw p-base.raw
qemu-img rebase -u -b p-base.raw -F raw p.qed
qed_img commit -p -d p.qed > out
grep -F '    (100.00/100%)' out
qed_img commit -q -p p.qed > out
test ! -s out

# Table size 1, which QEMU 7.2 cannot open: through qed-img convert.
qed_img convert -f raw -O qed -o table_size=1,cluster_size=4k base.raw \
    base1.qed
qed_img convert -O qed -o table_size=1 -B base1.qed -F qed over-raw.qed \
    over1.qed
qed_img convert over1.qed t1-before.raw
qemu-img convert over-raw.qed over-raw.raw
cmp t1-before.raw over-raw.raw
qed_img commit over1.qed
qed_img check base1.qed
qed_img check over1.qed
qed_img convert base1.qed t1-base.raw
cmp t1-base.raw over-raw.raw
qed_img convert over1.qed t1-after.raw
cmp t1-after.raw over-raw.raw

# Refusals name the cause and change nothing.
qemu-img create -q -f qed alone.qed 1M
cp alone.qed alone.orig
cp over-raw.qed over-raw.orig
cp base.raw base.orig
qed_img_refuses 'No such file or directory' commit missing.qed
qed_img_refuses 'not a QED image' commit base.raw
qed_img_refuses '-f raw' commit -f raw over-raw.qed
qed_img_refuses 'no backing file' commit alone.qed
qemu-img create -q -f qed -b gone.raw -F raw -u orphan.qed 1M
qed_img_refuses 'gone.raw' commit orphan.qed
cmp alone.qed alone.orig
cmp over-raw.qed over-raw.orig
cmp base.raw base.orig

# A QED base with an L2 entry pointing past the end of its file, in the
# slice the commit copies into: the entry is cleared before the base
# grows (and before the image's own view of the base reads it), so the
# commit succeeds, the base is clean and the entry reads as zeros.
qemu-img create -q -f qed -o cluster_size=65536 pe-base.qed 16M
qemu-img create -q -f qed -b pe-base.qed -F qed -o cluster_size=65536 \
    pe-over.qed 16M
qemu-io -f qed -c 'write -P 0x33 0 64k' pe-base.qed > /dev/null
qemu-io -f qed -c 'write -P 0x22 1M 64k' pe-over.qed > /dev/null
/usr/bin/python3 - pe-base.qed <<'PYEOF'
import struct, sys
f = open(sys.argv[1], "r+b")
l1 = struct.unpack_from("<Q", f.read(64), 40)[0]
end = f.seek(0, 2)
f.seek(l1)
l2 = struct.unpack("<Q", f.read(8))[0]
f.seek(l2 + 8 * 100)
f.write(struct.pack("<Q", end))
PYEOF
qed_img commit pe-over.qed 2> pe.err || { cat pe.err; exit 1; }
cat pe.err
grep -F "1 table entry points past the end of the file; cleared" pe.err
qemu-img check pe-base.qed
qemu-io -f qed -c 'read -P 0x33 0 64k' -c 'read -P 0x22 1M 64k' \
    -c 'read -P 0 6400k 64k' pe-base.qed
