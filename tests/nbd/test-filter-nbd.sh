#!/usr/bin/env bash
# nbdkit-qed tests: the qed filter over the nbd plugin.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Another NBD server (nbdkit's file plugin, and qemu-nbd) serves the
# bytes of a QED file as a raw export on a Unix socket; nbdkit
# --filter=qed nbd socket=... decodes it, and must serve what the
# plugin serves from the file itself: same bytes, same map.  The inner
# server gets one connection however many clients read (the shared
# context), and never a write.

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
