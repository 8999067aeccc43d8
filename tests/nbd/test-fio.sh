#!/usr/bin/env bash
# nbdkit-qed tests: fio with verification over NBD.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Two fio jobs (two connections, 16 requests in flight each) write
# random blocks of mixed sizes, 512-byte aligned, with crc32c
# verification, into neighbouring ranges of a fresh image.  The data
# must verify at once and again after a restart of the server;
# qemu-img check must then be clean, and QEMU must read what the
# plugin reads.

source ./functions.sh
set -e -u -x

requires nbdkit --version
requires nbdcopy --version
requires qemu-img --version
requires fio --version
requires sh -c 'fio --enghelp | grep -qx "[[:space:]]*nbd"'

size=$(( 64 * 1024 * 1024 ))

cat > "$tmpdir/job.fio" <<'EOF'
[global]
ioengine=nbd
uri=${URI}
size=20m
offset=3m
offset_increment=20m
numjobs=2
iodepth=16
rw=randwrite
bssplit=512/10:4k/30:20k/30:64k/20:200k/10
blockalign=512
verify=crc32c
verify_fatal=1
verify_state_save=0
do_verify=1
group_reporting=1

[qed]
EOF

for cs in 65536 16384; do
    img=$tmpdir/disk-$cs.qed
    qemu-img create -q -f qed -o cluster_size=$cs "$img" $size

    start_nbdkit srv "$plugin" "$img"
    URI=$uri_srv fio "$tmpdir/job.fio"
    stop_nbdkit srv

    start_nbdkit srv "$plugin" "$img"
    URI=$uri_srv fio --verify_only "$tmpdir/job.fio"
    nbdcopy "$uri_srv" "$tmpdir/out.raw"
    stop_nbdkit srv

    qemu-img check -f qed "$img"
    qemu-img convert -f qed -O raw "$img" "$tmpdir/ref.raw"
    cmp "$tmpdir/ref.raw" "$tmpdir/out.raw"
    rm -f "$img" "$tmpdir/ref.raw" "$tmpdir/out.raw"
done
