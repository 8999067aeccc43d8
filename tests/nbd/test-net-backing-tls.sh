#!/usr/bin/env bash
# nbdkit-qed tests: a backing file over NBD with TLS (nbds+unix, a
# pre-shared key).
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# The base's server requires TLS with a PSK.  An overlay whose header
# names it in libnbd's form (nbds+unix://USER@/?socket=S&tls-psk-file=
# KEYS; QEMU has no such URI, so qed-img makes the overlay) is served
# by the plugin with the base's bytes, and takes writes.  Without the
# right key, or without TLS, or with nbds+unix not allowed, the
# overlay is refused.

source ./functions.sh
set -e -u -x -o pipefail

requires qemu-img --version
requires qemu-io --version
requires psktool --version
requires nbdcopy --version
requires nbdsh --version

d=$tmpdir
cd "$d"

qemu-img create -q -f raw base.raw 4M
qemu-io -f raw -c 'write -P 0x41 0 1M' -c 'write -P 0x42 2M 64k' \
        base.raw >/dev/null
psktool -u qed -p keys.psk
psktool -u qed -p wrong.psk
start_nbdkit base -r --tls=require --tls-psk=keys.psk file base.raw
tls_uri="nbds+unix://qed@/?socket=$d/base.sock&tls-psk-file=$d/keys.psk"

# qed-img reaches the base over TLS for the size.
qed_img create -f qed -b "$tls_uri" -F raw ov.qed
qemu-img info --output=json ov.qed |
    jq -e --arg b "$tls_uri" '."backing-filename" == $b and
                              ."virtual-size" == 4194304'

start_nbdkit ours "$plugin" ov.qed
nbdcopy "$uri_ours" ours.raw
cmp ours.raw base.raw
nbdsh -u "$uri_ours" -c '
h.pwrite(b"\x61" * 512, 2 * 1024 * 1024 + 512)
assert h.pread(1024, 2 * 1024 * 1024) == b"\x42" * 512 + b"\x61" * 512
'
stop_nbdkit ours

# Refused: the wrong key, no TLS, nbds+unix not allowed.
qed_img create -f qed -u -b "${tls_uri/keys.psk/wrong.psk}" -F raw \
        wrong.qed 4M
must_refuse_start "cannot connect" wrong.qed
qed_img create -f qed -u -b "nbd+unix:///?socket=$d/base.sock" -F raw \
        plain.qed 4M
must_refuse_start "cannot connect" plain.qed
must_refuse_start "protocol nbds+unix is not allowed" ov.qed \
                  backing-protocols=file,nbd+unix
