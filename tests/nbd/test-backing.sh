#!/usr/bin/env bash
# nbdkit-qed tests: backing files made by QEMU, served and written
# through the plugin.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# For a raw base, a QED base and a chain three images deep: the
# overlay read through the plugin equals qemu-img convert of it;
# writes through the plugin (partial clusters over backing data, zeros
# over unallocated clusters) leave an image that qemu-img check calls
# clean and qemu-img compare finds equal to a reference, and the base
# files are never written; nbdinfo --map agrees with qemu-img map.

source ./functions.sh
set -e -u -x -o pipefail

requires qemu-img --version
requires qemu-io --version
requires nbdcopy --version
requires nbdinfo --version
requires nbdsh --version
requires jq --version

d=$tmpdir
cd "$d"

# Normalized maps: "start length kind" lines, adjacent kinds merged,
# kind data (may hold data) or zero (reads as zeros).
qemu_map ()
{
    qemu-img map --output=json "$1" |
        jq -r '.[] | "\(.start) \(.length) \(if .data then "data" else "zero" end)"' |
        merge_map
}
nbd_map ()
{
    nbdinfo --map --json "$1" |
        jq -r '.[] | "\(.offset) \(.length) \(if (.type / 2 | floor) % 2 == 1 then "zero" else "data" end)"' |
        merge_map
}
merge_map ()
{
    awk '{ if (n && $3 == k && $1 == s + l) { l += $2 } else { if (n) print s, l, k; s = $1; l = $2; k = $3; n = 1 } }
         END { if (n) print s, l, k }'
}

# serve_and_check IMAGE: the export equals qemu-img convert, and the
# maps agree.
serve_and_check ()
{
    local img=$1
    qemu-img convert -O raw "$img" expected.raw
    qemu_map "$img" > qemu.map
    start_nbdkit srv "$plugin" "$img"
    nbdcopy "$uri_srv" actual.raw
    cmp expected.raw actual.raw
    nbd_map "$uri_srv" > nbd.map
    diff -u qemu.map nbd.map
    stop_nbdkit srv
}

# write_through IMAGE REFERENCE: partial-cluster writes over backing
# data and zeros over unallocated clusters, through the plugin and on
# a reference raw file.
write_through ()
{
    local img=$1 ref=$2
    start_nbdkit srv "$plugin" "$img"
    REF=$ref nbdsh -u "$uri_srv" -c '
import os
ref = open(os.environ["REF"], "r+b")
def both(off, data):
    h.pwrite(data, off)
    ref.seek(off); ref.write(data)
def zero(off, n):
    h.zero(n, off)
    ref.seek(off); ref.write(bytes(n))
both(70000, b"\x44" * 100)                  # inside one cluster
both(3 * 65536 - 10, b"\x55" * 20)          # across two clusters
both(5 << 20, b"\x66" * (3 * 65536 + 5))    # whole + partial
zero(8 << 20, 4 * 65536)                    # whole clusters
zero((9 << 20) + 1000, 3000)                # partial cluster
both(100 * 1024, b"\x77" * 512)             # over a QEMU-written cluster
h.flush()
ref.close()
'
    stop_nbdkit srv
    qemu-img check "$img"
    qemu-img compare -f qed -F raw "$img" "$ref"
}

# check_overlay IMAGE: serve it, write through it (the reference is
# QEMU's reading of it), serve it again.
check_overlay ()
{
    serve_and_check "$1"
    qemu-img convert -O raw "$1" ref.raw
    write_through "$1" ref.raw
    serve_and_check "$1"
}

# Random data in the base, so that lost backing bytes would show.
head -c $((32 << 20)) /dev/urandom > base.raw
base_sum=$(sha256sum < base.raw)

# 1. A raw base.
qemu-img create -q -f qed -b base.raw -F raw raw-overlay.qed 32M
qemu-io -f qed -c 'write -P 0x11 100k 200k' -c 'write -z 1M 64k' \
    raw-overlay.qed
check_overlay raw-overlay.qed

# 2. A QED base (itself with data and zero clusters), overlay larger
# than its base: reads past the base's end are zeros.
qemu-img convert -O qed base.raw base.qed
qemu-io -f qed -c 'write -z 2M 128k' base.qed
base_qed_sum=$(sha256sum < base.qed)
qemu-img create -q -f qed -b base.qed -F qed qed-overlay.qed 40M
qemu-io -f qed -c 'write -P 0x22 150k 10k' -c 'write -P 0x23 35M 64k' \
    qed-overlay.qed
check_overlay qed-overlay.qed

# 3. A chain three deep: base.raw <- mid.qed <- top.qed, names relative.
qemu-img create -q -f qed -b base.raw -F raw mid.qed 32M
qemu-io -f qed -c 'write -P 0x31 0 64k' -c 'write -z 4M 64k' mid.qed
mid_sum=$(sha256sum < mid.qed)
qemu-img create -q -f qed -b mid.qed -F qed top.qed 32M
qemu-io -f qed -c 'write -P 0x32 32k 64k' top.qed
check_overlay top.qed

# Block status over an unallocated range never hides backing data:
# the first cluster of raw-overlay.qed is unallocated in the overlay
# but the base has random data there.
start_nbdkit srv "$plugin" raw-overlay.qed
nbdinfo --map --json "$uri_srv" | jq -e '.[0].offset == 0 and .[0].type == 0'
stop_nbdkit srv

# The bases were only ever read.
test "$(sha256sum < base.raw)" = "$base_sum"
test "$(sha256sum < base.qed)" = "$base_qed_sum"
test "$(sha256sum < mid.qed)" = "$mid_sum"
