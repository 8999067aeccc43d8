#!/usr/bin/env bash
# nbdkit-qed tests: the engine's check agrees with qemu-img check, and
# its repair leaves images qemu-img check calls clean.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Images are made by QEMU, then corrupted one way each by editing
# table entries.  64 KiB clusters keep the files far below the size at
# which qemu-img check counts spurious leaks (see the format notes).

source ./functions.sh
set -e -u -x -o pipefail

requires qemu-img --version
requires qemu-io --version
requires nbdcopy --version
requires jq --version

qedcheck=$abs_builddir/qedcheck
cd "$tmpdir"

# poke FILE OFFSET VALUE: write a little-endian u64.
poke ()
{
    /usr/bin/python3 -c '
import struct, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(int(sys.argv[2], 0)); f.write(struct.pack("<Q", int(sys.argv[3], 0)))
' "$@"
}

# qemu_counts IMAGE, our_counts IMAGE: "corruptions leaks check-errors"
# as qemu-img check and the engine's check count them.  Both tools exit
# with 0 (clean), 1 (check errors), 2 (corruptions) or 3 (leaks only):
# counts STATUS C L E prints "C L E" only if the status says the same,
# and fails otherwise, so that a tool that failed is not read as a count.
counts ()
{
    local status=$1; shift
    if [ $# != 3 ] || [ $status != $(( $3 ? 1 : $1 ? 2 : $2 ? 3 : 0 )) ]
    then
        echo "$0: check exit status $status, counts '$*'" >&2
        return 1
    fi
    echo "$*"
}
qemu_counts ()
{
    local out status=0
    out=$(qemu-img check --output=json "$1" 2>/dev/null) || status=$?
    counts $status $(jq -r '.corruptions // 0, .leaks // 0,
                            .["check-errors"] // 0' <<< "$out")
}
our_counts ()
{
    local out status=0
    out=$("$qedcheck" "$1") || status=$?
    counts $status $(awk '$1 == "corruptions" || $1 == "leaks" ||
                          $1 == "check-errors" { print $2 }' <<< "$out")
}

# read_all IMAGE OUT: the virtual disk through the plugin, read-only.
read_all ()
{
    local status=0
    start_nbdkit rd "$plugin" -r "$1"
    # (set -e does not apply in a function called as "read_all || ...")
    nbdcopy "$uri_rd" "$2" || status=$?
    stop_nbdkit rd
    return $status
}

# The base image: data clusters at 0x50000..0x80000, its L2 table at
# 0x90000 (QEMU writes the data first), the L1 table at 0x10000.
make_image ()
{
    rm -f "$1"
    qemu-img create -q -f qed "$1" 10M
    qemu-io -f qed -c 'write -P 0x61 0 200k' -c 'write -P 0x62 3M 64k' "$1"
}
make_image ref.qed
read_all ref.qed ref.before
l1=0x10000
l2=$(/usr/bin/python3 -c '
import struct; d = open("ref.qed", "rb").read()
print(hex(struct.unpack_from("<Q", d, 0x10000)[0]))')
test "$l2" = 0x90000

# case NAME EXPECTED(corruptions leaks errors) EDIT...: corrupt a copy,
# compare both checks with what is expected, then repair with ours.
# Where every entry is valid for serving, the disk reads the same
# before and after ($name.before, $name.after).
case_ ()
{
    local name=$1 expected=$2; shift 2
    make_image "$name.qed"
    "$@"
    test "$(qemu_counts "$name.qed")" = "$expected"
    test "$(our_counts "$name.qed")" = "$expected"

    read_all "$name.qed" "$name.before" || rm -f "$name.before"
    "$qedcheck" -r "$name.qed" > "$name.repair" || true
    cat "$name.repair"
    # No corruption is left, and QEMU agrees.
    ours=$(our_counts "$name.qed")
    test "$(qemu_counts "$name.qed")" = "$ours"
    test "$(cut -d' ' -f1,3 <<< "$ours")" = "0 0"
    read_all "$name.qed" "$name.after"
}

# A clean image.
case_ clean "0 0 0" true
cmp clean.before clean.after

# A leaked cluster at the end: repair truncates it away.
case_ leak-end "0 1 0" truncate -s +64K leak-end.qed
cmp leak-end.before leak-end.after
test "$(qemu-img check leak-end.qed >/dev/null; echo $?)" = 0
grep '^leaks-fixed 1$' leak-end.repair

# A leaked cluster in the middle (its entry cleared).
case_ leak-mid "0 1 0" poke leak-mid.qed $((l2 + 3 * 8)) 0
cmp leak-mid.before leak-mid.after

# An entry past the end of the file (its old cluster leaks).  Served,
# it fails with EIO; repaired, it reads as zeros.
case_ beyond "1 1 0" poke beyond.qed $((l2 + 8)) 0x10000000
test ! -f beyond.before
cmp -n 64K ref.before beyond.after
cmp -n 64K -i 64K:0 beyond.after /dev/zero

# A misaligned entry.
case_ misaligned "1 1 0" poke misaligned.qed $((l2 + 8)) 0x60200

# Two entries sharing a cluster: the repair gives the second a copy,
# so everything reads as before.
case_ shared "1 1 0" poke shared.qed $((l2 + 8)) 0x50000
cmp shared.before shared.after

# A data entry pointing at the L1 table: served, it fails with EIO
# (a write through it would corrupt the table); repaired, it has a
# copy of its own.
case_ at-l1 "1 1 0" poke at-l1.qed $((l2 + 2 * 8)) $l1
test ! -f at-l1.before

# Forty entries sharing one cluster: repair copies clusters for no
# more than the file's size, then clears the rest, so a hostile image
# cannot make it grow without bound.
share_many ()
{
    local i
    for (( i = 10; i < 50; i++ )); do
        poke many.qed $((l2 + i * 8)) 0x50000
    done
}
case_ many "40 1 0" share_many   # 3M (index 48) leaks
size_before=$(stat -c %s ref.qed)
test "$(stat -c %s many.qed)" -le $((2 * size_before))
grep '^corruptions-fixed 40$' many.repair

# An L1 entry past the end of the file.
case_ l1-beyond "1 0 0" poke l1-beyond.qed $((l1 + 8)) 0x40000000
cmp ref.before l1-beyond.after

# An L1 entry pointing at the L1 table itself: one corruption per
# cluster of the table (table_size 4), as qemu-img check counts.
case_ l1-self "4 0 0" poke l1-self.qed $((l1 + 8)) $l1
cmp ref.before l1-self.after

# An image QEMU left dirty: killed after allocating writes, before it
# cleared NEED_CHECK.  Both checks agree; opening it writable repairs
# it and clears the bit (the features of the header).
rm -f dirty.qed
qemu-img create -q -f qed dirty.qed 10M
qemu-io -f qed -c 'write -P 0x63 0 300k' -c 'write -P 0x64 5M 64k' \
    -c 'sigraise 9' dirty.qed || true
test "$(header_field dirty.qed 16 8)" = 2
ours=$(our_counts dirty.qed)
test "$(qemu_counts dirty.qed)" = "$ours"
"$qedcheck" -r dirty.qed
test "$(header_field dirty.qed 16 8)" = 0
qemu-img check dirty.qed
qemu-io -f qed -c 'read -P 0x63 0 300k' -c 'read -P 0x64 5M 64k' dirty.qed
