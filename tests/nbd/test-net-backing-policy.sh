#!/usr/bin/env bash
# nbdkit-qed tests: which backing files an image may make the server
# reach (backing-protocols=, allow-backing=), and the backing-*
# parameters.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Listeners on a Unix socket and on a TCP port of 127.0.0.1 count the
# connections they accept.  Overlays whose headers name them in every
# form (URI, legacy nbd:, json:) are refused at start when the
# protocol is not allowed, with a message naming the name and
# backing-protocols=, and no connection reaches a listener; with the
# protocol allowed, one does (the listeners work).

source ./functions.sh
set -e -u -x -o pipefail

requires qemu-img --version
requires /usr/bin/python3 --version

d=$tmpdir
cd "$d"

# The listeners: each accept appends a line to NAME.accepts, and the
# connection is closed at once (no NBD: an open that gets this far
# fails).
start_listener ()
{
    local name=$1 address=$2 i
    : > "$name.accepts"
    /usr/bin/python3 - "$address" "$d/$name.accepts" "$d/$name.ready" <<'EOF' &
import socket, sys
address, accepts, ready = sys.argv[1:]
if address.startswith("/"):
    s = socket.socket(socket.AF_UNIX)
    s.bind(address)
else:
    s = socket.socket()
    s.bind(("127.0.0.1", int(address)))
s.listen(16)
open(ready, "w").close()
while True:
    c, _ = s.accept()
    with open(accepts, "a") as f:
        f.write("accepted\n")
    c.close()
EOF
    cleanup_fn kill $!
    for (( i=0; i < 100; i++ )); do
        [ -e "$name.ready" ] && return 0
        sleep 0.1
    done
    echo "$0: listener $name did not start"
    return 1
}
accepts ()
{
    wc -l < "$1.accepts"
}

port=$(free_port)
start_listener unix "$d/listen.sock"
start_listener tcp "$port"

# overlay NAME BACKING: an overlay naming BACKING, made without
# opening it (-u).
overlay ()
{
    qemu-img create -q -f qed -u -b "$2" -F raw "$1.qed" 1M
}
overlay uri-unix "nbd+unix:///?socket=$d/listen.sock"
overlay uri-tcp "nbd://127.0.0.1:$port/"
overlay legacy-unix "nbd:unix:$d/listen.sock"
overlay legacy-tcp "nbd:127.0.0.1:$port:exportname=x"
overlay json-unix "json:{\"file.driver\":\"nbd\",\"file.path\":\"$d/listen.sock\"}"
overlay json-tcp "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"nbd\",\"server\":{\"type\":\"inet\",\"host\":\"127.0.0.1\",\"port\":\"$port\"}}}"
overlay nbds "nbds://127.0.0.1:$port/"
overlay uri-export "nbd://127.0.0.1:$port/dir/base"
qemu-img create -q -f raw local.raw 1M
qemu-img create -q -f qed -b local.raw -F raw local.qed

# refused NAME PROTOCOL ARGS...: the plugin refuses to serve NAME.qed
# with ARGS, naming its backing file, its protocol and the parameter.
refused ()
{
    local name=$1 proto=$2; shift 2
    must_refuse_start "backing-protocols=" "$name.qed" "$@"
    grep -F "protocol $proto is not allowed" "$tmpdir/err"
    grep -F "$(qemu-img info --output=json "$name.qed" |
               jq -r '."backing-filename"')" "$tmpdir/err"
}

# Forbidden everywhere: only local files.
for name in uri-unix legacy-unix json-unix; do
    refused "$name" nbd+unix backing-protocols=file
done
for name in uri-tcp legacy-tcp json-tcp uri-export; do
    refused "$name" nbd backing-protocols=file
done
refused nbds nbds backing-protocols=file
# Only the other transport.
refused uri-unix nbd+unix backing-protocols=nbd
refused legacy-tcp nbd backing-protocols=nbd+unix,file
refused json-tcp nbd backing-protocols=nbds,nbd+unix
# The canonical URI is named too.
refused legacy-tcp nbd backing-protocols=file
grep -F "nbd://127.0.0.1:$port/x" err
# none: not even a local file.
refused local file backing-protocols=none
# allow-backing=false refuses any backing file, allowed or not.
must_refuse_start "backing files are disabled" uri-tcp.qed \
                  allow-backing=false
must_refuse_start "backing files are disabled" local.qed allow-backing=false

# No connection reached a listener.
[ "$(accepts unix)" -eq 0 ]
[ "$(accepts tcp)" -eq 0 ]

# Names that are no protocol we follow are refused as such, whatever
# the list: never taken for file names.
qemu-img create -q -f qed -u -b "ssh://127.0.0.1:$port/x" -F raw ssh.qed 1M
must_refuse_start "unsupported protocol" ssh.qed
qemu-img create -q -f qed -u -b "gluster:x" -F raw gluster.qed 1M
must_refuse_start "unknown protocol" gluster.qed
overlay json-bad "json:{\"file.driver\":\"nbd\",\"file.path\":\"$d/listen.sock\",\"file.tls-creds\":\"t\"}"
must_refuse_start "key file.tls-creds is not supported" json-bad.qed
[ "$(accepts unix)" -eq 0 ]
[ "$(accepts tcp)" -eq 0 ]

# Allowed (by default): the server does connect, and fails to start
# because the listener speaks no NBD.
must_refuse_start "listen.sock" uri-unix.qed
[ "$(accepts unix)" -ge 1 ]
must_refuse_start "127.0.0.1:$port" legacy-tcp.qed backing-protocols=nbd
[ "$(accepts tcp)" -ge 1 ]

# The parameters, each refused with its name.
must_refuse_start "unknown protocol 'ftp'" local.qed \
                  backing-protocols=nbd,ftp
grep -F "backing-protocols=nbd,ftp" err
must_refuse_start "backing-connections" local.qed backing-connections=9
must_refuse_start "backing-connections" local.qed backing-connections=0
must_refuse_start "backing-timeout" local.qed backing-timeout=0
must_refuse_start "backing-timeout" local.qed backing-timeout=x
must_refuse_start "backing-connect-timeout" local.qed \
                  backing-connect-timeout=3601
must_refuse_start "backing-cache-size" local.qed backing-cache-size=17G
# And taken when valid.
nbdkit -U - "$plugin" local.qed backing-protocols=file \
       backing-connections=8 backing-timeout=5 backing-connect-timeout=2 \
       backing-cache-size=0 --run 'nbdinfo --size "$uri"' | grep -x 1048576
nbdkit "$plugin" --dump-plugin | grep -x \
       'qed_backing_protocols=file,nbd,nbds,nbd+unix,nbds+unix,http,https'
