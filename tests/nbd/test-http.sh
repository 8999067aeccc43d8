#!/usr/bin/env bash
# nbdkit-qed tests: the HTTP file layer (files/http.c) on its own,
# through http-read, against Debian's lighttpd over HTTP and HTTPS
# (with a test CA made by certtool) and Python's http.server, which
# does not serve byte ranges.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Random reads from several threads read the file, with and without
# the read cache; a missing file, a server without byte ranges, a
# certificate from an unknown CA, redirects to other schemes or down
# from https are refused with messages that say so; a server that is
# gone fails reads with EIO, then reads at once fail without asking
# it, and reads work again once it is back; a server that never
# answers costs the timeout.

source ./functions.sh
set -e -u -x

requires lighttpd -v
requires certtool --version
requires openssl version
requires /usr/bin/python3 --version

http_read=$abs_builddir/http-read
# Only 127.0.0.1: no proxy from the environment.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy
unset CURL_CA_BUNDLE SSL_CERT_FILE SSL_CERT_DIR

cd "$tmpdir"
mkdir www
# Not a multiple of 64 KiB or of any read: the tail is read too.
head -c $(( 5 * 1024 * 1024 + 1234 )) /dev/urandom > www/base.raw

# refuses MESSAGE ARGS...: http-read ARGS... fails, saying MESSAGE.
refuses ()
{
    local msg=$1; shift
    must_fail "$http_read" "$@" 2> err
    cat err
    grep -F -- "$msg" err
}

#----------------------------------------------------------------------
# HTTP.

start_lighttpd web "$tmpdir/www" "" \
    'url.redirect = ( "^/moved$" => "/base.raw",
                      "^/to-file$" => "file:///etc/passwd",
                      "^/to-gopher$" => "gopher://127.0.0.1/" )'
url=http://127.0.0.1:$port_web

"$http_read" "$url/base.raw" www/base.raw
"$http_read" -c 1 "$url/base.raw" www/base.raw
"$http_read" -c 8 "$url/base.raw" www/base.raw
"$http_read" -C $(( 1024 * 1024 )) "$url/base.raw" www/base.raw
# Every read was a ranged GET, answered 206; nothing else was asked.
test "$(awk '$6 != "\"GET" || $9 != 206' web.access.log | wc -l)" = 0

refuses "$url/nope: cannot open: HTTP status 404" "$url/nope"
# A redirect to http(s) is followed; to other schemes, never.
"$http_read" "$url/moved" www/base.raw
refuses "$url/to-file: cannot open: Protocol \"file\" not supported" \
    "$url/to-file"
refuses "$url/to-gopher: cannot open: Protocol \"gopher\" not supported" \
    "$url/to-gopher"
# Nor to http when the protocol list allows https only.
refuses "$url/moved: cannot open: Protocol \"http\" not supported" \
    -p https "$url/moved"

# A server that does not serve byte ranges.
start_python_http norange "$tmpdir/www"
norange=http://127.0.0.1:$port_norange/base.raw
refuses "$norange: the server does not serve byte ranges" "$norange"

# Nothing listening.
stop_lighttpd web
refuses "$url/base.raw: cannot open: Failed to connect to 127.0.0.1 port $port_web" \
    "$url/base.raw"
restart_lighttpd web

#----------------------------------------------------------------------
# A server that goes away and comes back, while the file is open.

coproc reader { exec "$http_read" -i -t 5 "$url/base.raw" 2> reader.err; }
# bash unsets reader_PID once it has reaped the reader, which may be
# before "wait" below runs: keep the pid (wait still knows its status).
reader_pid=$reader_PID
# ask OFFSET COUNT: the reader's answer to one read.
ask ()
{
    echo "$1 $2" >&"${reader[1]}"
    read -r -u "${reader[0]}" answer
    echo "$answer"
}
good=$(ask 1000 300000)
case $good in ok\ *) ;; *) false ;; esac
stop_lighttpd web
# Reads fail; those soon after a failure fail at once, without a
# request (the delays double from 100 ms: some of these reads fall
# into one however slow the machine).
for (( i=0; i < 6; i++ )); do
    test "$(ask 1000 300000)" = "error Input/output error"
done
grep -F "$url/base.raw: read of 300000 bytes at offset 1000: Failed to connect" reader.err
grep -F "$url/base.raw: the server cannot be reached (" reader.err
restart_lighttpd web
# Back within the longest delay (4 s).
for (( i=0; i < 60; i++ )); do
    answer=$(ask 1000 300000)
    [ "$answer" != "error Input/output error" ] && break
    sleep 0.1
done
test "$answer" = "$good"
exec {reader[1]}>&-
wait "$reader_pid"
cat reader.err

#----------------------------------------------------------------------
# HTTPS with a test CA.

make_pki pki
start_lighttpd tls "$tmpdir/www" "$tmpdir/pki" \
    "url.redirect = ( \"^/moved\$\" => \"/base.raw\",
                      \"^/down\$\" => \"$url/base.raw\" )"
surl=https://127.0.0.1:$port_tls

# Unknown to the system's CA store: refused.
refuses "$surl/base.raw: cannot open: SSL certificate problem" "$surl/base.raw"
# The CA in the environment, as the curl command reads it.
CURL_CA_BUNDLE=$tmpdir/pki/ca-cert.pem "$http_read" "$surl/base.raw" \
    www/base.raw
SSL_CERT_FILE=$tmpdir/pki/ca-cert.pem "$http_read" "$surl/base.raw"
mkdir cadir
cp pki/ca-cert.pem cadir/
openssl rehash cadir
SSL_CERT_DIR=$tmpdir/cadir "$http_read" "https://localhost:$port_tls/base.raw"
export CURL_CA_BUNDLE=$tmpdir/pki/ca-cert.pem
# Redirects stay on https.
"$http_read" "$surl/moved" www/base.raw
refuses "$surl/down: cannot open: Protocol \"http\" not supported" \
    "$surl/down"
# Another CA's certificate: refused.
make_pki other
CURL_CA_BUNDLE=$tmpdir/other/ca-cert.pem \
    refuses "$surl/base.raw: cannot open: SSL certificate problem" \
    "$surl/base.raw"
unset CURL_CA_BUNDLE

#----------------------------------------------------------------------
# A server that accepts connections and never answers: the timeout.

/usr/bin/python3 -c '
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(8)
print(s.getsockname()[1], flush=True)
time.sleep(60)
' > silent.port &
silent_pid=$!
cleanup_fn _stop_pid "$silent_pid"
for (( i=0; i < 100; i++ )); do
    [ -s silent.port ] && break
    sleep 0.1
done
start=$SECONDS
refuses "cannot open: Operation timed out after" -t 1 \
    "http://127.0.0.1:$(cat silent.port)/base.raw"
test $(( SECONDS - start )) -lt 10
