#!/usr/bin/env bash
# nbdkit-qed tests: a throwaway session with nbdkit's cow filter, as
# the README shows it: writes are seen, and the image is unchanged.
# SPDX-License-Identifier: LGPL-2.1-or-later

source ./functions.sh
set -e -u -x

requires nbdkit --filter=cow null --version
requires nbdsh --version
requires qemu-img --version
requires sha256sum --version

cd "$tmpdir"
qemu-img create -q -f qed disk.qed 16M
sum=$(sha256sum < disk.qed)
start_nbdkit cow --filter=cow "$plugin" disk.qed
nbdsh -u "$uri_cow" -c '
h.pwrite(b"z" * 4096, 0)
h.flush()
assert h.pread(4096, 0) == b"z" * 4096
'
stop_nbdkit cow
test "$(sha256sum < disk.qed)" = "$sum"
