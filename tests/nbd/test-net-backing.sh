#!/usr/bin/env bash
# nbdkit-qed tests: backing files over NBD, against qemu-nbd.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# A raw base served over a Unix socket by nbdkit file, over TCP on
# 127.0.0.1 by nbdkit memory and by qemu-nbd, and a QED base served as
# raw bytes by nbdkit file; an overlay made by qemu-img create -b with
# each URI (and QEMU's legacy nbd: and json: names for the same
# servers).  The plugin serving the overlay reads what qemu-nbd
# serving it reads, byte for byte and in qemu-img map (holes of the
# base stay holes); writes through the plugin land in the overlay:
# the base is unchanged and its server logs no write.  backing= may be
# a URI, and with dir= images share a network base.

source ./functions.sh
set -e -u -x -o pipefail

requires qemu-img --version
requires qemu-io --version
requires qemu-nbd --version
requires nbdcopy --version
requires nbdsh --version
requires jq --version
requires nbdkit memory --version
requires nbdkit --filter=log null --version

d=$tmpdir
cd "$d"

# The base: data, a hole, data, a hole.
qemu-img create -q -f raw base.raw 8M
qemu-io -f raw -c 'write -P 0x41 0 1M' -c 'write -P 0x42 3M 512k' \
        -c 'write -P 0x43 5M 64k' base.raw >/dev/null
sum_before=$(md5sum < base.raw)

# A QED base, with its own data and holes.
qemu-img create -q -f qed base.qed 8M
qemu-io -f qed -c 'write -P 0x51 1M 2M' -c 'write -P 0x52 7M 64k' \
        base.qed >/dev/null
qsum_before=$(md5sum < base.qed)

# The servers.  Those of files log every request (--filter=log) and
# are writable, so that a write from us would show.
start_nbdkit fileb --filter=log file base.raw logfile="$d/fileb.requests"
start_nbdkit qedb --filter=log file base.qed logfile="$d/qedb.requests"
start_nbdkit_tcp memb memory 8M
nbdcopy base.raw "$uri_memb"
start_qemu_nbd_tcp qemub -r -e 16 -f raw -x base base.raw

# check_overlay NAME BACKING FORMAT: make overlay NAME.qed backed by
# BACKING, write into it with QEMU, and compare the plugin with
# qemu-nbd on it.
check_overlay ()
{
    local name=$1 backing=$2 format=$3
    qemu-img create -q -f qed -b "$backing" -F "$format" "$name.qed"
    # The overlay names the backing file verbatim.
    qemu-img info --output=json "$name.qed" |
        jq -e --arg b "$backing" '."backing-filename" == $b'
    # Partial clusters over backing data and over holes.
    qemu-io -f qed -c 'write -P 0x61 512k 4k' -c 'write -P 0x62 2M 4k' \
            -c 'write -z 6M 64k' "$name.qed" >/dev/null

    start_nbdkit "$name" "$plugin" "$name.qed"
    start_qemu_nbd "ref$name" -r -f qed "$name.qed"
    local ours=uri_$name ref=uri_ref$name
    nbdcopy "${!ours}" "$name.ours"
    nbdcopy "${!ref}" "$name.ref"
    cmp "$name.ours" "$name.ref"
    qemu-img map --output=json -f raw "${!ours}" > "$name.map.ours"
    qemu-img map --output=json -f raw "${!ref}" > "$name.map.ref"
    diff -u "$name.map.ref" "$name.map.ours"
    stop_qemu_nbd "ref$name"

    # Writes through the plugin, over backing data and a hole: the
    # overlay takes them, and reads back what qemu-img reads.
    nbdsh -u "${!ours}" -c '
h.pwrite(b"\x71" * 1000, 100)
h.pwrite(b"\x72" * 70000, 3 * 1024 * 1024 + 4096)
h.pwrite(b"\x73" * 512, 4 * 1024 * 1024 + 512)
h.flush()
'
    stop_nbdkit "$name"
    qemu-img check "$name.qed"
    qemu-img convert -O raw "$name.qed" "$name.after"
    cmp -n 100 "$name.after" "$name.ref"
    [ "$(od -An -tx1 -j100 -N1 "$name.after" | tr -d ' ')" = 71 ]
    [ "$(od -An -tx1 -j$((3*1024*1024 + 4096 + 69999)) -N1 "$name.after" |
         tr -d ' ')" = 72 ]
    [ "$(od -An -tx1 -j$((4*1024*1024 + 512)) -N1 "$name.after" |
         tr -d ' ')" = 73 ]
    # The bytes around the writes are the base's (copied on write).
    cmp -i $((3*1024*1024 + 4096 + 70000)) -n 100000 \
        "$name.after" "$name.ref"
}

check_overlay unix "$uri_fileb" raw
check_overlay tcpmem "$uri_memb" raw
check_overlay qemu "nbd://127.0.0.1:$port_qemub/base" raw
check_overlay qedbase "$uri_qedb" qed
# QEMU's other names for the same servers.
check_overlay legacy "nbd:unix:$d/fileb.sock" raw
check_overlay legacytcp "nbd:127.0.0.1:$port_qemub:exportname=base" raw
check_overlay json "json:{\"file\":{\"driver\":\"nbd\",\"server\":{\"type\":\"unix\",\"path\":\"$d/fileb.sock\"}}}" raw
check_overlay jsonflat "json:{\"file.driver\":\"nbd\",\"file.host\":\"127.0.0.1\",\"file.port\":\"$port_qemub\",\"file.export\":\"base\"}" raw
check_overlay jsonraw "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"nbd\",\"server.type\":\"inet\",\"server.host\":\"127.0.0.1\",\"server.port\":\"$port_qemub\",\"export\":\"base\"}}" raw

# backing= may be a URI: it replaces a header's name that leads
# nowhere.
qemu-img create -q -f qed -u -b "$d/gone.raw" -F raw param.qed 8M
start_nbdkit param "$plugin" param.qed backing="$uri_fileb" \
             backing-format=raw
nbdcopy "$uri_param" param.ours
cmp param.ours base.raw
stop_nbdkit param

# dir=: images whose chains share a network base, each read whole.
mkdir images
qemu-img create -q -f qed -u -b "$uri_fileb" -F raw images/a.qed 8M
qemu-img create -q -f qed -u -b "nbd:unix:$d/fileb.sock" -F raw images/b.qed 8M
start_nbdkit dir "$plugin" dir=images
for e in a.qed b.qed; do
    nbdcopy "nbd+unix:///$e?socket=$d/dir.sock" "dir-$e"
    cmp "dir-$e" base.raw
done
stop_nbdkit dir

# Holes of the base are holes of the overlay, through the plugin too.
jq -e '[.[] | select(.start <= 1572864 and 1572864 < .start + .length)][0] |
       .zero and (.data | not)' unix.map.ours

# The bases were never written, nor asked to be.
[ "$(md5sum < base.raw)" = "$sum_before" ]
[ "$(md5sum < base.qed)" = "$qsum_before" ]
grep -c ' Read ' fileb.requests
grep -c ' Read ' qedb.requests
if grep -E ' (Write|Zero|Trim|Flush) ' fileb.requests qedb.requests; then
    echo "$0: a base server received a write"
    exit 1
fi
