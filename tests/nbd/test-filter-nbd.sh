#!/usr/bin/env bash
# nbdkit-qed tests: the qed filter over the nbd plugin.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Another NBD server (nbdkit's file plugin, and qemu-nbd) serves the
# bytes of a QED file as a raw export on a Unix socket; nbdkit
# --filter=qed nbd socket=... decodes it, and must serve what the
# plugin serves from the file itself: same bytes, same map.  The inner
# server gets one connection however many clients read (the shared
# context), and never a write.  An overlay naming its base by NBD URI
# is followed (a URI, not a path) within backing-protocols=.

source ./functions.sh
set -e -u -x

requires test -f "$filter"
requires nbdkit --version
requires nbdkit nbd --version
requires nbdcopy --version
requires nbdinfo --version
requires qemu-img --version
requires qemu-io --version
requires qemu-nbd --version

cd "$tmpdir"

for cluster in 4096 65536; do
    img=mixed-$cluster.qed
    mixed_image "$img" "$cluster"
    sum=$(sha256sum < "$img")
    start_nbdkit plugin -r "$plugin" "$img"

    # nbdkit file: the raw bytes of the .qed file.
    start_nbdkit inner -r file "$img"
    start_nbdkit outer --filter="$filter" nbd socket="$tmpdir/inner.sock"
    same_export "$uri_outer" "$uri_plugin"
    nbdcopy --connections=4 -- "$uri_outer" multi.raw
    cmp same_export/data multi.raw
    stop_nbdkit outer
    stop_nbdkit inner
    # One connection reached the inner server, for all those clients.
    test "$(grep -c '\]: debug: file: open readonly=' inner.log)" = 1

    # qemu-nbd, as raw.
    start_qemu_nbd q -r -f raw "$img"
    start_nbdkit outer --filter="$filter" nbd socket="$tmpdir/q.sock"
    same_export "$uri_outer" "$uri_plugin"
    stop_nbdkit outer
    stop_qemu_nbd q

    stop_nbdkit plugin
    test "$(sha256sum < "$img")" = "$sum"
done

# An overlay whose header names its base by NBD URI, as qemu-img
# create -b nbd+unix://... writes it: the filter follows the URI (a
# network name, not a path) and reads what qemu-nbd reads.
M=$((1 << 20))
qemu-img create -q -f raw base.raw 16M
qemu-io -f raw -c "write -P 0x62 0 $((4 * M))" \
        -c "write -P 0x63 $((12 * M)) $((64 << 10))" base.raw > /dev/null
start_nbdkit base -r file base.raw
qemu-img create -q -f qed -o cluster_size=65536 -b "$uri_base" -F raw \
         overlay.qed 16M
qemu-io -f qed -c "write -P 0x6f $((M + 4096)) 8192" \
        -c "write -z $((12 * M)) $((64 << 10))" overlay.qed > /dev/null
start_qemu_nbd q -r -f qed overlay.qed
start_nbdkit srv --filter="$filter" file overlay.qed
nbdcopy -- "$uri_q" qemu.raw
nbdcopy -- "$uri_srv" filter.raw
cmp qemu.raw filter.raw
cmp <(head -c $M base.raw) <(head -c $M filter.raw)
test "$(head -c 1 < <(tail -c +$((M + 4096 + 1)) filter.raw))" = o
nbdinfo "$uri_srv" | grep -F "backing file $uri_base (raw)"
stop_nbdkit srv
stop_qemu_nbd q
opens=$(grep -c '\]: debug: file: open readonly=' base.log)
test "$opens" -ge 1

# backing-protocols= without nbd+unix refuses that header before any
# connection reaches the base server.
filter_refuses 'protocol nbd+unix is not allowed' \
    --filter="$filter" file overlay.qed backing-protocols=nbd,http
filter_refuses 'protocol nbd+unix is not allowed' \
    --filter="$filter" file overlay.qed backing-protocols=none
test "$(grep -c '\]: debug: file: open readonly=' base.log)" = "$opens"
stop_nbdkit base
