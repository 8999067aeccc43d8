#!/usr/bin/env bash
# nbdkit-qed tests: the qed filter over the file plugin.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# nbdkit --filter=qed file IMAGE serves what the plugin serves from the
# same image: the same bytes and the same map (4K and 64K clusters,
# data, zero clusters, holes), to several connections at once.  It is
# read-only (writes, zeroes and trims fail with EPERM, which is how
# NBD carries EROFS) and never writes the file; --filter=cow above it
# takes writes, still leaving the file alone.  Reads of the plugin
# respect its block size limits.

source ./functions.sh
set -e -u -x

requires test -f "$filter"
requires nbdkit --version
requires nbdcopy --version
requires nbdinfo --version
requires nbdsh --version
requires qemu-img --version
requires qemu-io --version

cd "$tmpdir"

for cluster in 4096 65536; do
    img=mixed-$cluster.qed
    mixed_image "$img" "$cluster"
    sum=$(sha256sum < "$img")

    start_nbdkit plugin -r "$plugin" "$img"
    start_nbdkit filter --filter="$filter" file "$img"
    same_export "$uri_filter" "$uri_plugin"
    # The map has every kind of extent (so the comparison meant
    # something): data, holes that read as zeros.
    grep -q ' 0 *data$' same_export/map
    grep -q ' 3 *hole,zero$' same_export/map

    # Both read what QEMU reads.
    qemu-img convert -f qed -O raw "$img" qemu.raw
    cmp qemu.raw same_export/data

    # Several connections at once read the one image.
    nbdcopy --connections=4 --requests=16 --request-size=65536 -- \
            "$uri_filter" multi.raw
    cmp qemu.raw multi.raw

    # Read-only, with the image's geometry in the block size hints.
    nbdinfo "$uri_filter" > info
    cat info
    grep -q 'is_read_only: true' info
    grep -q 'can_multi_conn: true' info
    grep -q 'can_extents: true\|base:allocation' info
    grep -q "block_size_preferred: $cluster\$" info
    grep -q 'block_size_minimum: 1$' info
    grep -q "export-size: $((24 << 20))" info

    # Writes reach the server anyway (libnbd's own checks off), which
    # refuses them all.
    nbdsh -u "$uri_filter" -c '
import errno
assert h.is_read_only()
assert not h.can_trim() and not h.can_zero() and not h.can_flush()
h.set_strict_mode(0)
for name, req in [("pwrite", lambda: h.pwrite(b"x" * 4096, 0)),
                  ("zero", lambda: h.zero(4096, 1 << 20)),
                  ("trim", lambda: h.trim(4096, 0))]:
    try:
        req()
    except nbd.Error as e:
        assert e.errnum == errno.EPERM, (name, e)
    else:
        raise AssertionError(name + " succeeded on the read-only filter")
assert h.pread(4096, 0) == b"A" * 4096
# Cache prefetches the tables and has the file plugin cache the data.
assert h.can_cache()
h.cache(24 << 20, 0)
'
    stop_nbdkit filter
    stop_nbdkit plugin
    test "$(sha256sum < "$img")" = "$sum"

    # A writable view: cow above the filter keeps the writes.
    start_nbdkit cow --filter=cow --filter="$filter" file "$img"
    nbdsh -u "$uri_cow" -c '
assert not h.is_read_only()
h.pwrite(b"W" * 5000, 100)
h.pwrite(bytes(65536), 9 << 20)
h.flush()
assert h.pread(5200, 0) == b"A" * 100 + b"W" * 5000 + b"A" * 100
assert h.pread(65536, 9 << 20) == bytes(65536)
assert h.pread(4096, (9 << 20) + 65536) == b"C" * 4096
assert h.pread(3000, (3 << 20) + 512) == b"B" * 3000
'
    stop_nbdkit cow
    test "$(sha256sum < "$img")" = "$sum"
done

# Reads of the plugin are split to its maximum block size: under a
# blocksize-policy filter that fails larger requests, a client's 32 MiB
# reads of a 64 MiB image whose data is contiguous still work.
qemu-img create -q -f qed -o cluster_size=65536 big.qed 64M
qemu-io -f qed -c "write -P 0x55 0 40M" big.qed > /dev/null
qemu-img convert -f qed -O raw big.qed big.raw
start_nbdkit split -r --filter="$filter" --filter=blocksize-policy \
             file big.qed blocksize-maximum=65536 blocksize-error-policy=error
nbdcopy --request-size=$((32 << 20)) -- "$uri_split" split.raw
cmp big.raw split.raw
stop_nbdkit split
# A plugin that needs aligned requests is refused, naming the remedy.
filter_refuses 'put --filter=blocksize after --filter=qed' \
    --filter="$filter" --filter=blocksize-policy file big.qed \
    blocksize-minimum=4096

# One export: another export name is refused, naming it.
start_nbdkit names -r --filter="$filter" file mixed-4096.qed
if nbdinfo "nbd+unix:///other?socket=$tmpdir/names.sock" 2> err; then
    echo "$0: export \"other\" was served"
    exit 1
fi
stop_nbdkit names
grep -F 'export "other": the qed filter serves one image' names.log
