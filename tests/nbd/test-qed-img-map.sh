#!/usr/bin/env bash
# nbdkit-qed tests: qed-img map prints what qemu-img map prints, byte
# for byte, JSON and human, on images and chains QEMU made (and the
# plugin wrote).
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# What QEMU 7.2 shows, and each case below checks that it does (so that
# a case cannot pass by showing nothing interesting):
# - depth: the file the bytes come from (0 the image); where no file
#   holds them (present false, zero true), the image whose chain ends
#   there: the bottom one, or the one whose backing file is shorter;
# - a raw backing file is present everywhere, its holes (SEEK_HOLE)
#   zero, with offsets; its size counts in whole 512-byte sectors;
# - offset: the host offset in the file at that depth;
# - adjacent entries agreeing in all but length, offsets continuing,
#   are one; the human output lists the data entries alone.

source ./functions.sh
set -e -u -x -o pipefail

requires qemu-img --version
requires qemu-io --version
requires jq --version

cd "$tmpdir"

# same_map IMAGE [QED-IMG OPTIONS]: both maps, both formats, equal.
# Leaves QEMU's JSON in q.json for the checks that follow.
same_map ()
{
    local img=$1; shift
    qemu-img map --output=json -f qed "$img" > q.json
    qed_img map "$@" --output=json "$img" > ours.json
    diff -u q.json ours.json
    qemu-img map -f qed "$img" > q.txt
    qed_img map "$@" "$img" > ours.txt
    diff -u q.txt ours.txt
    cat q.txt
}

# has COUNT JQ-FILTER: exactly (or, as ">=N", at least) that many
# entries of q.json match the filter.
has ()
{
    local want=$1 filter=$2 n
    n=$(jq "[.[] | select($filter)] | length" q.json)
    case $want in
        ">="*) [ "$n" -ge "${want#>=}" ] ;;
        *) [ "$n" -eq "$want" ] ;;
    esac || {
        echo "$0: $n entries match $filter, expected $want"; cat q.json
        return 1
    }
}

# A sparse raw file: data at some places, holes elsewhere.
# sparse_raw FILE SIZE OFFSET...: a few bytes at each OFFSET.
sparse_raw ()
{
    local file=$1 size=$2 off; shift 2
    rm -f "$file"
    truncate -s "$size" "$file"
    for off; do
        printf 'data' | dd of="$file" bs=1 seek="$off" conv=notrunc \
                           status=none
    done
}

#----------------------------------------------------------------------
# 1. An overlay over a sparse raw file: its own data and zeros, the
# raw file's data and holes.
sparse_raw base.raw 10M 400000 1600000
qemu-img create -q -f qed -b base.raw -F raw ov.qed 10M
qemu-io -f qed -c 'write -P 1 0 512k' -c 'write -P 2 512k 1M' \
    -c 'write -z 4M 64k' ov.qed > /dev/null
same_map ov.qed
has ">=2" '.depth == 1 and .present and .zero and (.data | not) and
           has("offset")'                                # raw holes
has ">=1" '.depth == 1 and .data and .offset == .start'  # raw data
has 1 '.depth == 0 and .zero and .present and (has("offset") | not)'
# The same through other names and options: the file column follows.
same_map ./ov.qed -f qed
same_map "$tmpdir/ov.qed" -U
grep -F "$tmpdir/base.raw" q.txt

#----------------------------------------------------------------------
# 2. A raw backing file shorter than the overlay, of a size that is no
# whole number of sectors, with data up to its end: its last sector is
# the raw file's (present zeros), what follows the overlay's own zeros.
sparse_raw short.raw 3000000 600000 2999996
qemu-img create -q -f qed -b short.raw -F raw ov-short.qed 8M
qemu-io -f qed -c 'write -P 1 64k 64k' -c 'write -z 1M 64k' \
    -c 'write -P 3 6M 64k' ov-short.qed > /dev/null
same_map ov-short.qed
has 1 '.depth == 1 and .start == 3000000 and .length == 320 and .zero and
       .present'
has ">=1" '.depth == 0 and (.present | not) and .zero and
           .start == 3000320'
has 1 '.depth == 1 and .data and .start + .length == 3000000'

# And one longer than the overlay, and an empty one.
sparse_raw long.raw 20M 100 15000000
qemu-img create -q -f qed -b long.raw -F raw ov-long.qed 16M
same_map ov-long.qed
has ">=1" '.depth == 1 and .data'
[ "$(jq 'map(.length) | add' q.json)" = $((16 << 20)) ]
: > empty.raw
qemu-img create -q -f qed -b empty.raw -F raw ov-empty.qed 1M
same_map ov-empty.qed
has 1 '.depth == 0 and (.present | not) and .length == 1048576'

#----------------------------------------------------------------------
# 3. QED backing files: data at their own offsets, zero clusters,
# unallocated at the bottom of the chain, shorter than the overlay.
qemu-img create -q -f qed -o cluster_size=4k base.qed 3M
qemu-io -f qed -c 'write -P 3 0 8k' -c 'write -P 3 100k 4k' \
    -c 'write -z 200k 8k' base.qed > /dev/null
qemu-img create -q -f qed -b base.qed -F qed mid.qed 5M
qemu-io -f qed -c 'write -P 2 4k 8k' -c 'write -P 2 4M 64k' \
    -c 'write -z 2M 128k' mid.qed > /dev/null
qemu-img create -q -f qed -b mid.qed -F qed top.qed 8M
qemu-io -f qed -c 'write -P 1 8k 8k' -c 'write -z 100k 4k' \
    top.qed > /dev/null
same_map top.qed
has ">=1" '.depth == 2 and .present and .zero'           # base's zeros
has ">=1" '.depth == 2 and (.present | not)'             # the bottom
has 1 '.depth == 1 and (.present | not) and .start == 3145728' # past base
has 1 '.depth == 0 and (.present | not) and .start == 5242880' # past mid
has 1 '.depth == 1 and .data and .offset != .start'
grep -F 'mid.qed' q.txt
same_map mid.qed
same_map base.qed

#----------------------------------------------------------------------
# 4. Chains of three over raw, names relative to subdirectories.
mkdir -p sub/deeper
sparse_raw sub/chain.raw 6M 70000 3000000 5000000
qemu-img create -q -f qed -b chain.raw -F raw sub/c1.qed 6M
qemu-io -f qed -c 'write -P 4 1M 192k' -c 'write -z 2M 64k' \
    sub/c1.qed > /dev/null
qemu-img create -q -f qed -b ../c1.qed -F qed sub/deeper/c2.qed 7M
qemu-io -f qed -c 'write -P 5 1088k 64k' -c 'write -P 6 5M 4k' \
    sub/deeper/c2.qed > /dev/null
same_map sub/deeper/c2.qed
has ">=2" '.depth == 2 and .data'
has ">=2" '.depth == 2 and .zero and .present'
has ">=2" '.depth == 1 and .data'                        # split by depth 0
grep -F 'sub/deeper/../chain.raw' q.txt
(cd sub/deeper && same_map c2.qed)

#----------------------------------------------------------------------
# 5. Cluster and table sizes: 4K (table sizes 4 and 16) and 4M (the
# largest QEMU 7.2 opens: it refuses every size of 16M and up, and
# table size 1); runs of contiguous clusters, clusters written out of
# order, zero clusters, unaligned zeros (which are data).
for geometry in cluster_size=4k cluster_size=4k,table_size=16 \
                cluster_size=64k,table_size=2 cluster_size=4M,table_size=2; do
    case $geometry in
        *4M*) cs=$((4 << 20)); size=1G ;;
        *64k*) cs=65536; size=100M ;;
        *) cs=4096; size=20M ;;
    esac
    rm -f geo.qed
    qemu-img create -q -f qed -o "$geometry" geo.qed $size
    qemu-io -f qed \
        -c "write -P 1 0 $((2 * cs))" \
        -c "write -P 2 $((6 * cs)) $cs" \
        -c "write -P 2 $((5 * cs)) $cs" \
        -c "write -z $((8 * cs)) $((2 * cs))" \
        -c "write -z $((11 * cs + 100)) 100" \
        -c "write -P 3 $((14 * cs - 10)) 20" \
        geo.qed > /dev/null
    same_map geo.qed
    has 1 ".depth == 0 and .data and .start == 0 and .length == $((2 * cs))"
    has 1 ".start == $((5 * cs)) and .length == $cs"     # not merged
    has 1 ".zero and .present and .start == $((8 * cs)) and
           .length == $((2 * cs))"
    has 1 ".data and .start == $((11 * cs))"
    has 1 ".data and .start == $((13 * cs)) and .length == $((2 * cs))"
done

# 64M clusters, which QEMU cannot open: the same layout written through
# the plugin, over a raw file that ends in the fourth cluster (not on a
# sector), and qed-img's map checked against what it must be (the rules
# above), the offsets by the bytes the file holds there.
if nbdkit --version > /dev/null 2>&1 && nbdsh --version > /dev/null 2>&1
then
    cs=$((64 << 20))
    rm -f base64.raw
    truncate -s $((3 * cs + 1000)) base64.raw
    head -c 65536 /dev/urandom |
        dd of=base64.raw seek=$((2 * cs)) oflag=seek_bytes conv=notrunc \
           status=none
    head -c 1000 /dev/urandom |
        dd of=base64.raw seek=$((3 * cs)) oflag=seek_bytes conv=notrunc \
           status=none
    qed_img create -q -o cluster_size=64M -b base64.raw -F raw big.qed 1G
    start_nbdkit srv "$plugin" big.qed
    nbdsh -u "$uri_srv" -c '
cs = 64 << 20
h.pwrite(b"\x11", 0)                          # allocates all of cluster 0,
h.pwrite(b"\x11", cs)                         # then 1, after it
h.pwrite(b"\x22", 6 * cs)
h.pwrite(b"\x22", 5 * cs)
h.zero(2 * cs, 8 * cs)
h.pwrite(b"\x33" * 20, 14 * cs - 10)
h.flush()
'
    stop_nbdkit srv
    qed_img map --output=json big.qed > ours.json
    cat ours.json
    jq -c '.[] | [.start, .length, .depth, .present, .zero, .data,
                  .offset]' ours.json > got
    cat > want <<EOF
[0,$((2 * cs)),0,true,false,true,$(jq '.[0].offset' ours.json)]
[$((2 * cs)),65536,1,true,false,true,$((2 * cs))]
[$((2 * cs + 65536)),$((cs - 65536)),1,true,true,false,$((2 * cs + 65536))]
[$((3 * cs)),1000,1,true,false,true,$((3 * cs))]
[$((3 * cs + 1000)),24,1,true,true,false,$((3 * cs + 1000))]
[$((3 * cs + 1024)),$((2 * cs - 1024)),0,false,true,false,null]
[$((5 * cs)),$cs,0,true,false,true,$(jq '.[6].offset' ours.json)]
[$((6 * cs)),$cs,0,true,false,true,$(jq '.[7].offset' ours.json)]
[$((7 * cs)),$cs,0,false,true,false,null]
[$((8 * cs)),$((2 * cs)),0,true,true,false,null]
[$((10 * cs)),$((3 * cs)),0,false,true,false,null]
[$((13 * cs)),$((2 * cs)),0,true,false,true,$(jq '.[11].offset' ours.json)]
[$((15 * cs)),$cs,0,false,true,false,null]
EOF
    diff -u want got
    # byte_at OFFSET: the byte of big.qed there, in hex.
    byte_at () { od -An -tx1 -j "$1" -N1 big.qed | tr -d ' '; }
    host () { jq ".[] | select(.start == $1) | .offset" ours.json; }
    [ "$(byte_at "$(host 0)")" = 11 ]
    [ "$(byte_at $(( $(host 0) + cs )))" = 11 ]
    [ "$(byte_at "$(host $((5 * cs)))")" = 22 ]
    [ "$(byte_at "$(host $((6 * cs)))")" = 22 ]
    [ "$(byte_at $(( $(host $((13 * cs))) + cs - 10 )))" = 33 ]
    [ "$(byte_at $(( $(host $((13 * cs))) + cs + 9 )))" = 33 ]
    # The human lines are the JSON's data entries.
    qed_img map big.qed > ours.txt
    cat ours.txt
    [ "$(wc -l < ours.txt)" = 7 ]
    grep -Ex "0x14000000 +0x4000000 +0x[0-9a-f]+ +big.qed" ours.txt
    grep -Ex "0xc000000 +0x3e8 +0xc000000 +base64.raw" ours.txt
fi

#----------------------------------------------------------------------
# 6. A sparse 1 TiB image, alone and over a raw file, and an overlay
# with nothing written, and an empty disk.
qemu-img create -q -f qed huge.qed 1T
qemu-io -f qed -c 'write -P 1 0 64k' -c 'write -P 2 512G 128k' \
    -c 'write -z 700G 64k' -c 'write -P 3 1099511562240 65536' \
    huge.qed > /dev/null
same_map huge.qed
has 1 '.start == 549755813888 and .data and .length == 131072'
has 1 '.start + .length == 1099511627776 and .data'
has 3 '(.present | not) and .zero'
qemu-img create -q -f qed -b base.raw -F raw huge-over.qed 1T
qemu-io -f qed -c 'write -P 1 300G 64k' huge-over.qed > /dev/null
same_map huge-over.qed
has 1 '.depth == 0 and (.present | not) and .start == 10485760'
qemu-img create -q -f qed -b top.qed -F qed blank.qed 8M
same_map blank.qed
has 0 '.depth == 0 and .present'
qemu-img create -q -f qed zero-size.qed 0
same_map zero-size.qed
has 1 '.length == 0'

#----------------------------------------------------------------------
# 7. Written through the plugin: zeros, trims (clusters whose host
# space is punched are still data to QEMU), partial clusters over a
# raw backing file.
if nbdkit --version > /dev/null 2>&1 && nbdsh --version > /dev/null 2>&1
then
    sparse_raw pbase.raw 4M 100000 3000000
    qemu-img create -q -f qed -b pbase.raw -F raw plugin.qed 6M
    start_nbdkit srv "$plugin" plugin.qed
    nbdsh -u "$uri_srv" -c '
c = 65536
h.pwrite(b"\x11" * (3 * c), 0)
h.zero(c, c)                                # a zero cluster inside data
h.pwrite(b"\x22" * 1000, 5 * c + 100)        # partial over the raw base
h.zero(4 * c, 10 * c)                       # zero clusters over the base
h.pwrite(b"\x33" * (2 * c), 20 * c)
h.trim(c, 20 * c)                           # punched, still mapped
h.pwrite(b"\x44" * c, 5 << 20)              # past the base
h.flush()
'
    # Held for writing: only -U reads it, for QEMU as for qed-img.
    must_fail qemu-img map -f qed plugin.qed
    must_fail qed_img map plugin.qed
    qemu-img map -U --output=json -f qed plugin.qed > q.json
    qed_img map -U --output=json plugin.qed > ours.json
    diff -u q.json ours.json
    stop_nbdkit srv
    same_map plugin.qed
    has ">=1" '.depth == 0 and .zero and .present'
    has ">=2" '.depth == 1 and .zero and .present'
    has 1 '.depth == 0 and .data and .start == 1310720 and
           .length == 131072'
else
    echo "$0: no nbdkit or nbdsh: the plugin-written image is skipped"
fi

#----------------------------------------------------------------------
# Failures: both refuse, with status 1.
status=0
qed_img map nothere.qed 2> err || status=$?
cat err
[ $status = 1 ]
grep -F "nothere.qed" err
# An invalid entry (the 6th L2 entry of a 4K image points far away).
qemu-img create -q -f qed -o cluster_size=4k bad.qed 1M
qemu-io -f qed -c 'write -P 3 0 8k' bad.qed > /dev/null
l2=$(header_field bad.qed 4096 8)
printf '\x00\x00\x00\x00\x01\x00\x00\x00' |
    dd of=bad.qed bs=1 seek=$((l2 + 5 * 8)) conv=notrunc status=none
must_fail qemu-img map -f qed bad.qed
status=0
qed_img map bad.qed 2> err || status=$?
cat err
[ $status = 1 ]
grep -F "invalid table entry maps virtual offset 20480" err
