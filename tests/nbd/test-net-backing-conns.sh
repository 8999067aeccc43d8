#!/usr/bin/env bash
# nbdkit-qed tests: the connections to an NBD backing server.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Many reads of backing ranges at once (from several client
# connections, with a server that takes half a second per read) go
# over several connections to a server that advertises multi-conn,
# never more than backing-connections=, and over one connection to a
# server that does not.  Every read returns the base's bytes.

source ./functions.sh
set -e -u -x -o pipefail

requires qemu-img --version
requires qemu-io --version
requires nbdsh --version
requires nbdkit --filter=delay null --version
requires nbdkit --filter=multi-conn null --version

d=$tmpdir
cd "$d"

qemu-img create -q -f raw base.raw 16M
qemu-io -f raw -c 'write -P 0x41 0 16M' base.raw >/dev/null

cat > reads.py <<'EOF'
# 16 reads of different backing clusters at once, each checked.
M = 1024 * 1024
bufs = [nbd.Buffer(4096) for i in range(16)]
cookies = [h.aio_pread(bufs[i], i * M) for i in range(16)]
for c in cookies:
    while not h.aio_command_completed(c):
        h.poll(-1)
for b in bufs:
    assert b.to_bytearray() == b"\x41" * 4096
EOF

# connections NAME: how many connections server NAME accepted.
connections ()
{
    grep -c "accepted connection" "$d/$1.log"
}

# run MULTI-CONN ARGS...: serve the base (advertising multi-conn or
# not: auto or disable), then an overlay of it with the plugin and
# ARGS, and read through two client connections at once.
run ()
{
    local mode=$1; shift
    start_nbdkit_unchecked base -r --filter=multi-conn --filter=delay \
                           file base.raw rdelay=500ms multi-conn-mode="$mode"
    rm -f ov.qed
    qemu-img create -q -f qed -u -b "$uri_base" -F raw ov.qed 16M
    start_nbdkit ours "$plugin" ov.qed backing-cache-size=0 "$@"
    nbdsh -u "$uri_ours" -c "exec(open('reads.py').read())" &
    local c1=$!
    nbdsh -u "$uri_ours" -c "exec(open('reads.py').read())"
    wait $c1
    stop_nbdkit ours
    stop_nbdkit base
}

# Multi-conn: more than one connection, at most backing-connections=.
run auto backing-connections=3
n=$(connections base)
[ "$n" -ge 2 ] && [ "$n" -le 3 ]
run auto                                        # the default: 4
n=$(connections base)
[ "$n" -ge 2 ] && [ "$n" -le 4 ]

# Without multi-conn: one.
run disable backing-connections=8
[ "$(connections base)" -eq 1 ]
