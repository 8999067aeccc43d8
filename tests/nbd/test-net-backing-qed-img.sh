#!/usr/bin/env bash
# nbdkit-qed tests: qed-img on images whose backing files are served
# over NBD, against qemu-img.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# A raw base served by qemu-nbd and a QED base served as raw bytes by
# nbdkit file, each with an overlay: create -b writes the URI verbatim
# and takes the size from the server; info --backing-chain, map,
# convert and check say what qemu-img says of the same images; commit
# into a network base is refused.

source ./functions.sh
set -e -u -x -o pipefail

requires qemu-img --version
requires qemu-io --version
requires qemu-nbd --version
requires jq --version

d=$tmpdir
cd "$d"

qemu-img create -q -f raw base.raw 6M
qemu-io -f raw -c 'write -P 0x41 0 1M' -c 'write -P 0x42 3M 512k' \
        base.raw >/dev/null
qemu-img create -q -f qed base.qed 6M
qemu-io -f qed -c 'write -P 0x51 1M 2M' base.qed >/dev/null
start_qemu_nbd rawb -r -e 8 -f raw -x base base.raw
start_nbdkit qedb -r file base.qed
# With export names, which QEMU keeps in the URIs it prints.
raw_uri="nbd+unix:///base?socket=$d/rawb.sock"
qed_uri="nbd+unix:///base?socket=$d/qedb.sock"

# create: the name as given, the size from the server.
qed_img create -f qed -b "$raw_uri" -F raw raw.qed
qed_img create -f qed -b "$qed_uri" -F qed qed.qed
qemu-img info --output=json raw.qed |
    jq -e --arg b "$raw_uri" '."backing-filename" == $b and
                              ."virtual-size" == 6291456'
qemu-img info --output=json qed.qed |
    jq -e --arg b "$qed_uri" '."backing-filename" == $b'
for img in raw qed; do
    qemu-io -f qed -c 'write -P 0x61 512k 4k' -c 'write -P 0x62 5M 64k' \
            "$img.qed" >/dev/null
done

for img in raw.qed qed.qed; do
    # info, along the chain (ours says table-size and features too).
    qed_img info --output=json --backing-chain "$img" |
        jq -S 'map(del(."table-size", .features))' > ours.json
    qemu-img info --output=json --backing-chain "$img" | jq -S . > q.json
    diff -u q.json ours.json
    qed_img info --backing-chain "$img" |
        sed '/^Format specific/,/^$/{/^$/!d}' > ours.txt
    qemu-img info --backing-chain "$img" > q.txt
    diff -u q.txt ours.txt

    # map.
    qed_img map --output=json "$img" > ours.json
    qemu-img map --output=json "$img" > q.json
    diff -u q.json ours.json

    # convert, to raw and to QED.
    qed_img convert -O raw "$img" ours.raw
    qemu-img convert -O raw "$img" q.raw
    cmp ours.raw q.raw
    qed_img convert -O qed "$img" ours-c.qed
    qemu-img compare -f qed -F raw ours-c.qed q.raw

    # check.
    qed_img check "$img"
done

# commit: a network backing file cannot be written; the message names
# it, and the image is left as it was.
cp raw.qed before.qed
qed_img_refuses "could not open the backing file $raw_uri for writing" \
                commit raw.qed
cmp raw.qed before.qed
