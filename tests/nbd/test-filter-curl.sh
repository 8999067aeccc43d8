#!/usr/bin/env bash
# nbdkit-qed tests: the qed filter over the curl plugin, against a real
# web server.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# lighttpd serves QED files over HTTP on 127.0.0.1 (byte ranges);
# nbdkit --filter=qed curl url=... must serve what the plugin serves
# from the files themselves: same bytes, same map.  The curl plugin of
# nbdkit 1.32 takes one request at a time per connection, and every
# client reads through the filter's one shared connection: the filter
# serializes its calls, which several clients at once exercise.  An
# overlay there whose base is named by URL is followed through the
# network opener, as the plugin follows it.  (Not against qemu-nbd:
# through QEMU 7.2's curl driver, qemu-nbd stalled under nbdcopy's
# parallel reads in our runs.)

source ./functions.sh
set -e -u -x

requires test -f "$filter"
requires nbdkit --version
requires nbdkit curl --version
requires nbdcopy --version
requires nbdinfo --version
requires qemu-img --version
requires qemu-io --version
requires lighttpd -v
requires /usr/bin/python3 --version

cd "$tmpdir"
mkdir www

start_lighttpd web "$tmpdir/www"
port=$port_web

for cluster in 4096 65536; do
    img=www/mixed-$cluster.qed
    mixed_image "$img" "$cluster"
    sum=$(sha256sum < "$img")
    start_nbdkit plugin -r "$plugin" "$img"

    start_nbdkit outer -r --filter="$filter" \
                 curl url="http://127.0.0.1:$port/mixed-$cluster.qed"
    same_export "$uri_outer" "$uri_plugin"
    nbdcopy --connections=4 --requests=16 --request-size=16384 -- \
            "$uri_outer" multi.raw
    cmp same_export/data multi.raw
    stop_nbdkit outer
    grep -F 'serializing the calls of all connections' outer.log
    # Only the filter's shared context opened the curl plugin.
    test "$(grep -c 'debug: curl: open readonly=' outer.log)" = 1

    stop_nbdkit plugin
    test "$(sha256sum < "$img")" = "$sum"
done

# A URL the server does not have: refused at start, naming it.
filter_refuses missing.qed \
    --filter="$filter" curl url="http://127.0.0.1:$port/missing.qed"

# An overlay on the web server whose header names its base there by
# URL: the filter reads the overlay through the curl plugin and the
# base through the network opener, as the plugin reads them from the
# overlay's local copy.
M=$((1 << 20))
qemu-img create -q -f raw www/base.raw 16M
qemu-io -f raw -c "write -P 0x62 0 $((4 * M))" \
        -c "write -P 0x63 $((12 * M)) $((64 << 10))" www/base.raw > /dev/null
qemu-img create -q -f qed -o cluster_size=65536 \
         -b "http://127.0.0.1:$port/base.raw" -F raw www/overlay.qed 16M
qemu-io -f qed -c "write -P 0x6f $((M + 4096)) 8192" \
        -c "write -z $((12 * M)) $((64 << 10))" www/overlay.qed > /dev/null
start_nbdkit plugin -r "$plugin" www/overlay.qed
start_nbdkit outer -r --filter="$filter" \
             curl url="http://127.0.0.1:$port/overlay.qed"
same_export "$uri_outer" "$uri_plugin"
test "$(head -c 1 < <(tail -c +$((M + 4096 + 1)) same_export/data))" = o
cmp <(head -c $M www/base.raw) <(head -c $M same_export/data)
stop_nbdkit outer
stop_nbdkit plugin

# Without http among backing-protocols=, refused, naming the URL,
# before any request for the base.  (lighttpd writes its access log
# in batches, and all of it when it stops.)
stop_lighttpd web
base_gets=$(grep -c ' /base.raw ' web.access.log || true)
restart_lighttpd web
filter_refuses "protocol http is not allowed" \
    --filter="$filter" curl url="http://127.0.0.1:$port/overlay.qed" \
    backing-protocols=nbd
stop_lighttpd web
grep -q ' /overlay.qed ' web.access.log
test "$(grep -c ' /base.raw ' web.access.log)" = "$base_gets"
