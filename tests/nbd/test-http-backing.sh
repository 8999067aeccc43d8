#!/usr/bin/env bash
# nbdkit-qed tests: overlays whose backing file is on a web server
# (Debian's lighttpd, over HTTP and HTTPS with a test CA).
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# An overlay whose backing file is http://... reads through the
# plugin as qemu-nbd reads it (over the base's path), byte for byte and
# in the map; writes
# land in the overlay only (the base is unchanged, the server saw only
# GETs and HEADs); a server without byte ranges is refused, naming it;
# when the server is stopped, backing reads fail with EIO while the
# connection stays up and the overlay's own ranges read, and service
# comes back with the server; over HTTPS the certificate is checked
# against the CA the environment names.

source ./functions.sh
set -e -u -x -o pipefail

requires qemu-img --version
requires qemu-io --version
requires qemu-nbd --version
requires nbdcopy --version
requires nbdinfo --version
requires nbdsh --version
requires jq --version
requires lighttpd -v
requires certtool --version
requires /usr/bin/python3 --version

# Only 127.0.0.1, no proxy; the test's CA only where it is given.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy
unset CURL_CA_BUNDLE SSL_CERT_FILE SSL_CERT_DIR

cd "$tmpdir"
mkdir www
# Written out, no holes: QEMU maps it all as data, as HTTP has to.
head -c 16M /dev/zero > www/base.raw
qemu-io -f raw -c 'write -P 0x11 0 4M' -c 'write -P 0x22 8M 2M' \
    www/base.raw > /dev/null
base_sum=$(md5sum < www/base.raw)
start_lighttpd web "$tmpdir/www"
url=http://127.0.0.1:$port_web/base.raw

# Maps as "start length data|zero" lines, adjacent kinds merged.
merge_map ()
{
    awk '{ if (n && $3 == k && $1 == s + l) { l += $2 } else { if (n) print s, l, k; s = $1; l = $2; k = $3; n = 1 } }
         END { if (n) print s, l, k }'
}
nbd_map ()
{
    nbdinfo --map --json "$1" |
        jq -r '.[] | "\(.offset) \(.length) \(if (.type / 2 | floor) % 2 == 1 then "zero" else "data" end)"' |
        merge_map
}

# QEMU reads the base from the file, not over HTTP: its curl driver
# (7.2) can stall against lighttpd and hang the test.  local_copy IMAGE: a
# copy of IMAGE whose backing file is the base's path.
local_copy ()
{
    cp "$1" local.qed
    qemu-img rebase -u -b "$tmpdir/www/base.raw" -F raw local.qed
}

# The overlay, written by QEMU, then pointed at the web server.
qemu-img create -q -f qed -b "$tmpdir/www/base.raw" -F raw ov.qed
qemu-io -f qed -c 'write -P 0x33 1M 64k' -c 'write -P 0x44 9M 1M' \
    -c 'write -z 12M 1M' ov.qed > /dev/null
qemu-img rebase -u -b "$url" -F raw ov.qed

# Our export reads what qemu-nbd's does, and maps alike.
local_copy ov.qed
start_qemu_nbd ref -r -f qed local.qed
start_nbdkit ours -r "$plugin" ov.qed
nbdcopy "$uri_ref" ref.raw
nbdcopy "$uri_ours" ours.raw
cmp ref.raw ours.raw
nbd_map "$uri_ref" > ref.map
nbd_map "$uri_ours" > ours.map
diff -u ref.map ours.map
stop_nbdkit ours
stop_qemu_nbd ref

# Writes land in the overlay: over backing data (a copy of the rest of
# the cluster from the server), zeros, a whole cluster.
cp ref.raw model.raw
start_nbdkit ours "$plugin" ov.qed
MODEL=model.raw nbdsh -u "$uri_ours" -c '
import os
m = open(os.environ["MODEL"], "r+b")
def both(off, data):
    h.pwrite(data, off)
    m.seek(off); m.write(data)
both(70000, b"\x55" * 100)
both(8 * 1024 * 1024 + 65530, b"\x66" * 20)
both(3 * 1024 * 1024, b"\x77" * 65536)
h.zero(65536, 14 * 1024 * 1024)
m.seek(14 * 1024 * 1024); m.write(bytes(65536))
h.flush()
'
nbdcopy "$uri_ours" ours.raw
cmp model.raw ours.raw
stop_nbdkit ours
test "$(md5sum < www/base.raw)" = "$base_sum"
local_copy ov.qed
qemu-img check -q local.qed
qemu-img compare -q local.qed model.raw
# The server saw reads only.
awk '{ print $6 }' web.access.log | sort | uniq -c
test "$(awk '$6 != "\"GET" && $6 != "\"HEAD"' web.access.log | wc -l)" = 0

#----------------------------------------------------------------------
# A server without byte ranges: refused, naming it.

start_python_http norange "$tmpdir/www"
norange=http://127.0.0.1:$port_norange/base.raw
qemu-img create -q -f qed -u -b "$norange" -F raw norange.qed 16M
must_refuse_start "$norange: the server does not serve byte ranges" \
    norange.qed

#----------------------------------------------------------------------
# The server goes away and comes back; one connection throughout.
# No read cache, so that every backing read asks the server.

start_nbdkit ours "$plugin" ov.qed backing-cache-size=0
coproc client {
    exec nbdsh -u "$uri_ours" -c '
import sys, zlib
for line in sys.stdin:
    op, off, n = line.split()
    off, n = int(off), int(n)
    try:
        if op == "read":
            print("ok", zlib.crc32(h.pread(n, off)), flush=True)
        else:
            h.pwrite(b"\x99" * n, off)
            print("ok", flush=True)
    except nbd.Error as e:
        print("error", e.errno, flush=True)
' 2> client.err
}
ask ()
{
    echo "$*" >&"${client[1]}"
    read -r -u "${client[0]}" answer
    echo "$answer"
}
backing=$(ask read 8912896 65536)            # in the base only
own=$(ask read 1048576 65536)                # in the overlay
case $backing$own in ok*ok*) ;; *) false ;; esac
stop_lighttpd web
test "$(ask read 8912896 65536)" = "error EIO"
test "$(ask read 1048576 65536)" = "$own"
# An allocating write that needs backing data fails, writing nothing.
test "$(ask write 8650752 100)" = "error EIO"
grep -F "$url: read of" ours.log
restart_lighttpd web
for (( i=0; i < 60; i++ )); do
    answer=$(ask read 8912896 65536)
    [ "$answer" != "error EIO" ] && break
    sleep 0.1
done
test "$answer" = "$backing"
exec {client[1]}>&-
wait "$client_PID"
stop_nbdkit ours
local_copy ov.qed
qemu-img check -q local.qed
qemu-img compare -q local.qed model.raw

#----------------------------------------------------------------------
# HTTPS: the certificate of a test CA, trusted through the environment.

make_pki pki
start_lighttpd tls "$tmpdir/www" "$tmpdir/pki"
surl=https://127.0.0.1:$port_tls/base.raw
qemu-img create -q -f qed -u -b "$surl" -F raw tls.qed 16M
must_refuse_start "$surl: cannot open: SSL certificate problem" tls.qed
CURL_CA_BUNDLE=$tmpdir/pki/ca-cert.pem start_nbdkit tls -r "$plugin" tls.qed
nbdcopy "$uri_tls" tls.raw
cmp www/base.raw tls.raw
stop_nbdkit tls
