#!/usr/bin/env bash
# nbdkit-qed tests: qed-img create, info and check against qemu-img on
# the same images, its refusals, and its locks.
# SPDX-License-Identifier: LGPL-2.1-or-later

source ./functions.sh
set -e -u -x

requires qemu-img --version
requires qemu-io --version
requires jq --version
requires nbdsh --version

cd "$tmpdir"

# unchanged FILE: FILE is byte for byte its copy FILE.orig.
unchanged ()
{
    cmp "$1" "$1.orig"
}

#----------------------------------------------------------------------
# Help and usage.
qed_img --help | grep -F "Usage: qed-img COMMAND"
for cmd in create info check; do
    qed_img "$cmd" --help | grep -F "Usage: qed-img $cmd"
done
qed_img --version | grep -E '^qed-img [0-9]'
qed_img_refuses "unknown command 'frobnicate'" frobnicate
qed_img_refuses "expected one FILE" info
qed_img_refuses "-f raw: this argument must be a QED image" \
             info -f raw nothing.qed

#----------------------------------------------------------------------
# create: byte for byte what qemu-img makes, for each geometry QEMU
# makes, with sizes in qemu-img's notation.
head -c 3M /dev/urandom > base.raw
truncate -s 10M base.raw
create_like_qemu ()
{
    local size=$1; shift
    if qemu-img create -q -f qed "$@" q.qed "$size" 2>/dev/null; then
        qed_img create -q "$@" ours.qed "$size"
        cmp ours.qed q.qed
    else
        # QEMU refuses: beyond the capacity of the geometry, or its
        # overflow (qed-format.md); ours follows the format's limit.
        rm -f ours.qed
        if qed_img create -q "$@" ours.qed "$size" 2> err; then
            qed_img info --output=json ours.qed > info.json
            [ "$(jq '."virtual-size"' info.json)" -gt 0 ]
        else
            grep -F "is too large: at most" err
            if [ -e ours.qed ]; then
                echo "$0: a refused create left ours.qed"; exit 1
            fi
        fi
    fi
}
for opts in "" cluster_size=4k cluster_size=4k,table_size=1 \
            cluster_size=64k,table_size=16 cluster_size=1M,table_size=2 \
            cluster_size=2M,table_size=16; do
    o=()
    [ -z "$opts" ] || o=(-o "$opts")
    for size in 1G 1.5G 100M 1000 512 0 3T 70T; do
        create_like_qemu "$size" "${o[@]}"
    done
done
# 64 MiB clusters: files of a GiB.
create_like_qemu 1G -o cluster_size=64M,table_size=1
create_like_qemu 5G -o cluster_size=64M
# The message qemu-img prints.
qed_img create ours.qed 1M > out
grep -Fx "Formatting 'ours.qed', fmt=qed size=1048576 cluster_size=65536" out

# Backing files: raw and QED, sizes taken from them, relative names.
qemu-img create -q -f qed -b base.raw -F raw q.qed
qed_img create -q -b base.raw -F raw ours.qed
cmp ours.qed q.qed
qemu-img create -q -f qed -b ours.qed -F qed q2.qed 20M
qed_img create -q -b ours.qed -F qed ours2.qed 20M
cmp ours2.qed q2.qed
mkdir sub
qemu-img create -q -f qed -b ../ours.qed -F qed sub/q.qed
qed_img create -q -b ../ours.qed -F qed sub/ours.qed
cmp sub/ours.qed sub/q.qed
[ "$(qemu-img info --output=json sub/ours.qed | jq '."virtual-size"')" = \
  $((10 * 1024 * 1024)) ]

# Refusals: named, and nothing touched.
cp ours.qed ours.qed.orig
qed_img_refuses "not a valid size" create ours.qed 12x
qed_img_refuses "not a valid size" create ours.qed -- -5
qed_img_refuses "cluster size 3072 is invalid" \
             create -o cluster_size=3k ours.qed 1M
qed_img_refuses "table_size=3k: not a valid" \
             create -o table_size=3k ours.qed 1M
qed_img_refuses "table size 3 is invalid" \
             create -o table_size=3 ours.qed 1M
qed_img_refuses "-o foo: unknown option" create -o foo=1 ours.qed 1M
qed_img_refuses "is too large: at most 70368744177664" create ours.qed 65T
qed_img_refuses "-F raw or -F qed" create -b base.raw ours.qed
qed_img_refuses "-F qcow2: backing files can be raw or qed" \
             create -b base.raw -F qcow2 ours.qed
qed_img_refuses "nope.raw" create -b nope.raw -F raw ours.qed
qed_img_refuses "SIZE is needed" create ours.qed
unchanged ours.qed
for f in new1.qed new2.qed; do
    qed_img_refuses "not a valid size" create "$f" 1Q
    if [ -e "$f" ]; then echo "$0: a refused create made $f"; exit 1; fi
done
# -u: the backing file need not exist when the size is given.
qed_img create -q -u -b nope.raw -F raw unsafe.qed 1M
qemu-img create -q -f qed -u -b nope.raw -F raw unsafe-q.qed 1M
cmp unsafe.qed unsafe-q.qed

#----------------------------------------------------------------------
# info: qemu-img's keys and values (ours has table-size and features
# besides), human and JSON, alone and along the chain.
qemu-io -f qed -c 'write -P 7 64k 1M' -c 'write -z 2M 64k' ours.qed >/dev/null
qemu-img create -q -f qed -b ours2.qed -F qed top.qed 20M
for img in ours.qed ours2.qed sub/ours.qed top.qed unsafe.qed; do
    qed_img info --output=json "$img" |
        jq -S 'del(."table-size", .features)' > ours.json
    qemu-img info --output=json "$img" | jq -S . > q.json
    diff -u q.json ours.json
    qed_img info "$img" | sed '/^Format specific information:/,$d' > ours.txt
    qemu-img info "$img" > q.txt
    diff -u q.txt ours.txt
done
qed_img info --output=json --backing-chain top.qed |
    jq -S 'map(del(."table-size", .features))' > ours.json
qemu-img info --output=json --backing-chain top.qed | jq -S . > q.json
diff -u q.json ours.json
[ "$(jq length ours.json)" = 4 ]
qed_img info --backing-chain top.qed | sed '/^Format specific/,/^$/{/^$/!d}' \
    > ours.txt
qemu-img info --backing-chain top.qed > q.txt
diff -u q.txt ours.txt
# What QEMU does not say.
qed_img info --output=json ours.qed > info.json
[ "$(jq '."table-size"' info.json)" = 4 ]
[ "$(jq .features info.json)" = 5 ]     # backing file, raw
qed_img create -q -o cluster_size=4k,table_size=1 t1.qed 1M
qed_img info --output=json t1.qed > info.json
[ "$(jq '."table-size"' info.json)" = 1 ]
[ "$(jq '."cluster-size"' info.json)" = 4096 ]
# NEED_CHECK is the dirty flag (QEMU 7.2 says false).
cp ours.qed dirty.qed
printf '\x07' | dd of=dirty.qed bs=1 seek=16 conv=notrunc status=none
[ "$(qed_img info --output=json dirty.qed | jq '."dirty-flag"')" = true ]
[ "$(qed_img info --output=json ours.qed | jq '."dirty-flag"')" = false ]
qed_img info dirty.qed | grep -Fx "cleanly shut down: no"
# A missing backing file: info works; --backing-chain names it.
qed_img info unsafe.qed | grep -Fx "backing file: nope.raw"
qed_img_refuses "nope.raw" info --backing-chain unsafe.qed
# A loop ends in an error, not a hang.
qed_img create -q -u -b loop2.qed -F qed loop1.qed 1M
qed_img create -q -u -b loop1.qed -F qed loop2.qed 1M
status=0
timeout 20 "$abs_top_builddir/qed-img/qed-img" info --backing-chain \
        loop1.qed 2> err || status=$?
cat err
[ $status = 1 ]
grep -F "backing file loop" err
# Not QED, not there.
qed_img_refuses "no.qed: No such file or directory" info no.qed
qed_img_refuses "base.raw:" info base.raw
qemu-img create -q -f qcow2 x.qcow2 1M
qed_img_refuses "x.qcow2:" info x.qcow2

#----------------------------------------------------------------------
# check: counts and exit statuses as qemu-img's.

# check_like_qemu STATUS IMG: both exit with STATUS, with the same JSON
# (but for the end offset, which QEMU does not report) and human
# output.  (Called plainly, so that set -e stops at any difference.)
check_like_qemu ()
{
    local want=$1 img=$2 ours=0 q=0
    qed_img check --output=json "$img" > ours.json || ours=$?
    qemu-img check --output=json "$img" > q.json || q=$?
    [ $ours = "$want" ]
    [ $q = "$want" ]
    jq -S 'del(."image-end-offset")' ours.json > a.json
    jq -S . q.json > b.json
    diff -u b.json a.json
    [ "$(jq '."image-end-offset"' ours.json)" -gt 0 ]
    ours=0 q=0
    qed_img check "$img" > ours.txt || ours=$?
    qemu-img check "$img" > q.txt || q=$?
    [ $ours = "$want" ]
    [ $q = "$want" ]
    grep -v '^Image end offset: ' ours.txt > a.txt
    diff -u q.txt a.txt
}
check_like_qemu 0 ours.qed
check_like_qemu 0 top.qed
[ "$(qed_img check --output=json ours.qed | jq '."image-end-offset"')" = \
  "$(stat -c %s ours.qed)" ]
# Leaks (clusters past everything, and one no table uses).
cp ours.qed leaky.qed
truncate -s +128K leaky.qed
check_like_qemu 3 leaky.qed
[ "$(qed_img check --output=json leaky.qed | jq .leaks)" = 2 ]
# A corruption: L2 entry 1 points far past the end of the file.
cp leaky.qed bad.qed
l2=$(header_field bad.qed 65536 8)
printf '\x00\x00\x00\x10\x00\x00\x00\x00' |
    dd of=bad.qed bs=1 seek=$((l2 + 8)) conv=notrunc status=none
check_like_qemu 2 bad.qed
[ "$(qed_img check --output=json bad.qed | jq .corruptions)" = 1 ]
# Repair: the corruption and every leak go: those at the end are cut
# off, the one in the middle (the cluster the bad entry used to point
# at) is filled with a cluster moved from after it.  (QEMU 7.2 leaves
# that one.)
cp bad.qed bad.qed.orig
status=0; qed_img check -r all bad.qed > out || status=$?
cat out
[ $status = 0 ]
grep -F "The following inconsistencies were found and repaired" out
grep -F "    3 leaked clusters" out
status=0; qed_img check -r all --output=json bad.qed.orig > out.json ||
    status=$?
[ $status = 0 ]
[ "$(jq '."corruptions-fixed"' out.json)" = 1 ]
[ "$(jq '."leaks-fixed"' out.json)" = 3 ]
[ "$(jq .corruptions out.json)" = null ]
[ "$(jq .leaks out.json)" = null ]
qemu-img check bad.qed
# The repaired image reads as before where it was valid.
qemu-io -f qed -c 'read -P 7 64k 1M' bad.qed | grep -F "read 1048576/"
# -q prints nothing; the status still tells.
status=0; qed_img check -q leaky.qed > out || status=$?
[ $status = 3 ]
[ ! -s out ]
# QEMU counts spurious leaks on larger 4K-cluster images (one per 16
# MiB of file): ours are exact.
qemu-img create -q -f qed -o cluster_size=4k big4k.qed 200M
qemu-io -f qed -c 'write -P 1 0 40M' big4k.qed > /dev/null
qed_img check --output=json big4k.qed > out.json
[ "$(jq .leaks out.json)" = null ]
[ "$(jq '."allocated-clusters"' out.json)" = 10240 ]
# Unreadable: not an image at all.
qed_img_refuses "base.raw:" check base.raw
status=0; qed_img check base.raw 2>/dev/null || status=$?
[ $status = 1 ]

#----------------------------------------------------------------------
# Locks: a server writing the image keeps qed-img from writing it, and
# from reading it without -U; with -U, info and check read it.
cp ours.qed served.qed
start_nbdkit w "$plugin" served.qed
nbdsh -u "$uri_w" -c 'h.pwrite(b"x" * 512, 0)'
qed_img_refuses "in use" check -r all served.qed
qed_img_refuses "in use" info served.qed
qed_img_refuses "in use" create served.qed 1M
qed_img info -U served.qed | grep -F "image: served.qed"
qed_img check -U served.qed
stop_nbdkit w
qed_img check -r all served.qed
