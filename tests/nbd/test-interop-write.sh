#!/usr/bin/env bash
# nbdkit-qed tests: concurrent random I/O through the plugin, checked by
# QEMU.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Over an image that qemu-io has partly filled, random-io runs random
# writes, zeros, trims, flushes and reads from 4 connections at once
# and makes the same changes to a raw reference.  Then the export
# must read as the reference (nbdcopy), and after the server has gone
# qemu-img check must find nothing and qemu-img compare no difference.
# RANDOM_IO_SEED=N runs other random requests (the default is 1),
# RANDOM_IO_OPS=N sets the steps per connection.

source ./functions.sh
set -e -u -x

requires nbdkit --version
requires nbdcopy --version
requires qemu-img --version
requires qemu-io --version
requires jq --version
requires test -x ./random-io

size=$(( 64 * 1024 * 1024 ))
ops=${RANDOM_IO_OPS:-8000}
seed=${RANDOM_IO_SEED:-1}

rnd=$tmpdir/random
head -c $(( 1024 * 1024 )) /dev/urandom > "$rnd"

# qemu_check IMG CLUSTER: qemu-img check finds no corruption and no
# leak, except the leaks QEMU 7.2 invents (one per cluster_size - 1
# clusters of file, see the format notes).
qemu_check ()
{
    local img=$1 cs=$2 r=0 fs noise
    qemu-img check --output=json -f qed "$img" > "$tmpdir/check.json" || r=$?
    cat "$tmpdir/check.json"
    [ $r -eq 0 ] && return 0
    [ $r -eq 3 ] || return 1
    fs=$(stat -c %s "$img")
    noise=$(( (fs + cs - 1) / cs / (cs - 1) ))
    test "$(jq '.corruptions // 0' "$tmpdir/check.json")" = 0
    test "$(jq '."check-errors" // 0' "$tmpdir/check.json")" = 0
    test "$(jq '.leaks // 0' "$tmpdir/check.json")" = $noise
}

for cs in 65536 4096; do
    img=$tmpdir/disk-$cs.qed
    ref=$tmpdir/ref-$cs.raw
    out=$tmpdir/out-$cs.raw
    qemu-img create -q -f qed -o cluster_size=$cs "$img" $size

    # Data, zero clusters and holes from QEMU first, for the requests
    # to overwrite, zero and trim.
    args=()
    for (( i = 0; i < 62; i += 3 )); do
        o=$(( i * 1024 * 1024 + i * 777 ))
        args+=(-c "write -s $rnd $o $(( 100000 + i * 1000 ))")
        args+=(-c "write -z $(( (i + 1) * 1024 * 1024 )) $(( 2 * cs ))")
        args+=(-c "write -z $(( o + 5000 )) 3000")
    done
    qemu-io -f qed "${args[@]}" "$img" > "$tmpdir/qemu-io.log"
    qemu-img convert -f qed -O raw "$img" "$ref"

    start_nbdkit srv "$plugin" "$img"
    ./random-io "$uri_srv" "$ref" $size $cs $seed $ops
    nbdcopy "$uri_srv" "$out"
    cmp "$ref" "$out"
    stop_nbdkit srv

    qemu_check "$img" $cs
    qemu-img compare -f qed -F raw "$img" "$ref"
    rm -f "$img" "$ref" "$out"
done
