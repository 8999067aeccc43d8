#!/usr/bin/env bash
# nbdkit-qed tests: serving over TLS (nbdkit --tls=require), with a PSK
# file and with X.509 certificates, as the README and the man page
# show it; libnbd's nbdinfo and nbdcopy are the clients.
# SPDX-License-Identifier: LGPL-2.1-or-later

source ./functions.sh
set -e -u -x

requires nbdinfo --version
requires nbdcopy --version
requires qemu-img --version
requires qemu-io --version
requires jq --version
requires psktool --version
requires certtool --version

cd "$tmpdir"
qemu-img create -q -f qed disk.qed 16M
qemu-io -f qed -c 'write -P 0x33 1M 3M' disk.qed > /dev/null
qemu-img convert -f qed -O raw disk.qed disk.raw

# tls_uri NAME QUERY [USER]: the TLS URI of server NAME, with QUERY
# added (and USER for PSK).
tls_uri ()
{
    echo "nbds+unix://${3:+$3@}/?socket=$tmpdir/$1.sock&$2"
}

# check_tls NAME QUERY [USER]: the connection is encrypted, reads the
# disk and writes it; a client without TLS is refused.
check_tls ()
{
    local uri
    uri=$(tls_uri "$@")
    nbdinfo --json "$uri" > info.json
    test "$(jq .TLS info.json)" = true
    test "$(jq '.exports[0]."export-size"' info.json)" = 16777216
    nbdcopy "$uri" out.raw
    cmp disk.raw out.raw
    nbdcopy disk.raw "$uri"
    must_fail nbdinfo "nbd+unix:///?socket=$tmpdir/$1.sock"
    rm out.raw
}

# 1. A pre-shared key: psktool makes the file that server and client
# read.
psktool -u alice -p keys.psk
start_nbdkit psk --tls=require --tls-psk=keys.psk "$plugin" disk.qed
check_tls psk "tls-psk-file=$tmpdir/keys.psk" alice
# The wrong key is refused.
psktool -u alice -p wrong.psk
must_fail nbdinfo "$(tls_uri psk "tls-psk-file=$tmpdir/wrong.psk" alice)"
stop_nbdkit psk

# start_tcp NAME ARGS...: as start_nbdkit, but on TCP port $port of
# 127.0.0.1 (a free one picked at random): the client checks the
# server's certificate against the host name only over TCP.
start_tcp ()
{
    local name=$1 try i; shift
    for (( try=0; try < 20; try++ )); do
        port=$(( 20000 + RANDOM % 40000 ))
        rm -f "$tmpdir/$name.pid"
        ( exec "${_nbdkit_wrapper[@]}" nbdkit -f -v -i 127.0.0.1 -p $port \
               -P "$tmpdir/$name.pid" "$@" 2>"$tmpdir/$name.log" ) &
        eval "_nbdkit_pid_$name=$!"
        for (( i=0; i < 100; i++ )); do
            if [ -s "$tmpdir/$name.pid" ]; then
                cleanup_fn stop_nbdkit "$name"
                return 0
            fi
            kill -0 $! 2>/dev/null || break
            sleep 0.1
        done
        wait $! || true                 # the port was taken: another
    done
    echo "$0: nbdkit $name did not start on TCP"; cat "$tmpdir/$name.log"
    return 1
}

# 2. Certificates: a CA, and a server certificate for localhost that
# it signed, in one directory that nbdkit and the client read (the
# client needs ca-cert.pem only).
make_pki pki
start_tcp x509 --tls=require --tls-certificates=pki "$plugin" disk.qed
uri="nbds://localhost:$port/?tls-certificates=$tmpdir/pki"
nbdinfo --json "$uri" > info.json
test "$(jq .TLS info.json)" = true
nbdcopy "$uri" out.raw
cmp disk.raw out.raw
must_fail nbdinfo "nbd://localhost:$port/"
# A client that trusts another CA is refused.
make_pki other
must_fail nbdinfo "nbds://localhost:$port/?tls-certificates=$tmpdir/other"
stop_nbdkit x509
