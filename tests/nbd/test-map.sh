#!/usr/bin/env bash
# nbdkit-qed tests: block status agrees with qemu-img map.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Both maps are reduced to (start, length, kind) with kind "data" or
# "zero", adjacent extents of one kind merged:
#   qemu-img map: data:true -> data; data:false, zero:true -> zero
#   NBD:          no HOLE bit -> data; HOLE|ZERO -> zero
# (anything else, such as data:false without zero or HOLE without
# ZERO, is a kind of its own and cannot match).

source ./functions.sh
set -e -u -x -o pipefail

requires nbdkit --version
requires nbdinfo --version
requires nbdsh --version
requires qemu-img --version
requires qemu-io --version
requires jq --version

cat > "$tmpdir/merge.jq" <<'EOF'
reduce .[] as $e ([];
  if length > 0 and .[-1].kind == $e.kind and
     .[-1].start + .[-1].length == $e.start
  then .[-1].length += $e.length
  else . + [$e] end)
| .[]
EOF

# qemu_map IMG > FILE, nbd_map URI > FILE: one extent a line.
qemu_map ()
{
    qemu-img map --output=json -f qed "$1" |
        jq -c '[.[] | {start, length,
                       kind: (if .data then "data"
                              elif .zero then "zero"
                              else "hole-not-zero" end)}]' |
        jq -c -f "$tmpdir/merge.jq"
}
nbd_map ()
{
    nbdinfo --map --json "$1" |
        jq -c '[.[] | {start: .offset, length,
                       kind: (if .type == 0 or .type == 2 then "data"
                              elif .type == 3 then "zero"
                              else "hole-not-zero" end)}]' |
        jq -c -f "$tmpdir/merge.jq"
}

# The maps are equal, cover the disk, and show both kinds.
compare_maps ()
{
    local a=$1 b=$2 size=$3
    cat "$a"
    diff -u "$a" "$b"
    test "$(jq -s 'map(.length) | add' "$a")" = $size
    grep -q '"kind":"data"' "$a"
    grep -q '"kind":"zero"' "$a"
    test "$(wc -l < "$a")" -ge 3
}

for cs in 4096 65536; do
    size=$(( 16 * 1024 * 1024 + 1024 ))

    # Written by QEMU: data, zero clusters, unallocated space, data
    # that happens to be zeros, runs across clusters.
    img=$tmpdir/qemu-$cs.qed
    qemu-img create -q -f qed -o cluster_size=$cs "$img" $size
    qemu-io -f qed \
        -c "write -P 0x11 0 $(( 3 * cs ))" \
        -c "write -z $cs $cs" \
        -c "write -P 0x22 $(( 5 * cs + 100 )) $(( 2 * cs ))" \
        -c "write -z $(( 10 * cs )) $(( 4 * cs ))" \
        -c "write -P 0 $(( 20 * cs )) $cs" \
        -c "write -z $(( 30 * cs + 7 )) 100" \
        -c "write -P 0x33 $(( 40 * cs )) $cs" \
        -c "write -P 0x33 $(( 42 * cs )) $cs" \
        -c "write -P 0x33 $(( 41 * cs )) $cs" \
        -c "write -z $(( 41 * cs )) $cs" \
        -c "write -P 0x44 $(( size - 100 )) 100" \
        "$img" > "$tmpdir/qemu-io.log"
    qemu_map "$img" > "$tmpdir/qemu.map"
    start_nbdkit srv "$plugin" -r "$img"
    nbd_map "$uri_srv" > "$tmpdir/nbd.map"
    stop_nbdkit srv
    compare_maps "$tmpdir/qemu.map" "$tmpdir/nbd.map" $size

    # Written through the plugin: QEMU must see what the plugin said.
    img=$tmpdir/plugin-$cs.qed
    qemu-img create -q -f qed -o cluster_size=$cs "$img" $size
    start_nbdkit srv "$plugin" "$img"
    cs=$cs size=$size nbdsh -u "$uri_srv" -c '
import os
cs = int(os.environ["cs"])
size = int(os.environ["size"])
h.pwrite(b"\x55" * (3 * cs), 0)
h.zero(cs, cs)                                       # zeros inside data
h.pwrite(b"\x66" * (2 * cs), 5 * cs + 100)
h.zero(4 * cs, 10 * cs)                              # on unallocated
h.zero(cs, 12 * cs, nbd.CMD_FLAG_NO_HOLE)
h.pwrite(bytes(cs), 20 * cs)                         # zeros as data
h.zero(100, 30 * cs + 7)                             # unaligned
for i in (40, 42, 41, 44, 43):
    h.pwrite(b"\x77" * cs, i * cs)
h.trim(cs, 41 * cs)                                  # a whole cluster
h.trim(cs, 43 * cs + 1)                              # no whole cluster
h.zero(2 * cs, 50 * cs)
h.pwrite(b"\x88" * 100, size - 100)
h.flush()
'
    nbd_map "$uri_srv" > "$tmpdir/nbd.map"
    stop_nbdkit srv
    qemu_map "$img" > "$tmpdir/qemu.map"
    compare_maps "$tmpdir/qemu.map" "$tmpdir/nbd.map" $size

    # And the plugin says the same after a restart.
    start_nbdkit srv "$plugin" -r "$img"
    nbd_map "$uri_srv" > "$tmpdir/nbd2.map"
    stop_nbdkit srv
    diff -u "$tmpdir/nbd.map" "$tmpdir/nbd2.map"
done

# Over a sparse raw backing file: its holes are holes and zeros, as
# qemu-img map reports them (SEEK_DATA/SEEK_HOLE), and its data is
# data; so is the range past its end (not a whole sector long).
size=$(( 8 * 1024 * 1024 ))
base=$tmpdir/sparse.raw
truncate -s $(( 5 * 1024 * 1024 + 100 )) "$base"
printf 'data' | dd of="$base" bs=1 seek=600000 conv=notrunc status=none
printf 'data' | dd of="$base" bs=1 seek=$(( 2 * 1024 * 1024 )) \
    conv=notrunc status=none
printf 'end' | dd of="$base" bs=1 seek=$(( 5 * 1024 * 1024 + 97 )) \
    conv=notrunc status=none
img=$tmpdir/over-sparse.qed
qemu-img create -q -f qed -b "$base" -F raw "$img" $size
qemu-io -f qed -c "write -P 0x11 0 64k" -c "write -z 1M 64k" \
    -c "write -P 0x22 3M 4k" "$img" > "$tmpdir/qemu-io.log"
qemu_map "$img" > "$tmpdir/qemu.map"
start_nbdkit srv "$plugin" -r "$img"
nbd_map "$uri_srv" > "$tmpdir/nbd.map"
stop_nbdkit srv
compare_maps "$tmpdir/qemu.map" "$tmpdir/nbd.map" $size
# The base's holes are zero extents (not one data extent up to 5M).
test "$(grep -c '"kind":"zero"' "$tmpdir/qemu.map")" -ge 4
