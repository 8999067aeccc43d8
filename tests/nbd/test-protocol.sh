#!/usr/bin/env bash
# nbdkit-qed tests: what the protocol tells clients beyond the data:
# block size constraints, the export description, and NBD_CMD_CACHE
# prefetching the tables and the data of a range.
# SPDX-License-Identifier: LGPL-2.1-or-later

source ./functions.sh
set -e -u -x

requires nbdinfo --version
requires nbdsh --version
requires qemu-img --version
requires qemu-io --version
requires jq --version
requires fincore --version
requires strace -V

cd "$tmpdir"

# Block sizes: the preferred size is the cluster size, capped at the
# 32 MiB that NBD allows (QEMU 7.2 cannot make 64 MiB clusters).
qed_img create -q -o cluster_size=64M big.qed 1G
start_nbdkit big "$plugin" -r big.qed
nbdinfo --json "$uri_big" > info
test "$(jq '.exports[0]."block_size_minimum"' info)" = 1
test "$(jq '.exports[0]."block_size_preferred"' info)" = 33554432
test "$(jq '.exports[0]."block_size_maximum"' info)" = 33554432
# The description names the geometry; no backing file.
test "$(jq -r '.exports[0].description' info)" = \
     "QED image, virtual size 1073741824 bytes, cluster size 67108864, no backing file"
stop_nbdkit big

# An image over a raw backing file: the first 4 MiB come from base.raw,
# 8 to 16 MiB are in the image.
head -c 4M /dev/urandom > base.raw
qemu-img create -q -f qed -b base.raw -F raw -o cluster_size=64k disk.qed 64M
qemu-io -f qed -c 'write -P 0x55 8M 8M' disk.qed > /dev/null
start_nbdkit d "$plugin" -r disk.qed
nbdinfo --json "$uri_d" > info
test "$(jq -r '.exports[0].description' info)" = \
     "QED image, virtual size 67108864 bytes, cluster size 65536, backing file base.raw (raw)"
test "$(jq '.exports[0].can_cache' info)" = true

# drop_cache FILE: evict FILE from the page cache (not on tmpfs, where
# there is no backing store to evict to).
drop_cache ()
{
    dd of="$1" oflag=nocache conv=notrunc,fdatasync count=0 status=none
}
# resident FILE: bytes of FILE in the page cache.
resident ()
{
    fincore --bytes --noheadings --output RES "$1"
}
drop_cache disk.qed
drop_cache base.raw
if [ "$(resident disk.qed)" -ge $((4 * 1024 * 1024)) ]; then
    echo "$0: cannot evict files from the page cache here: skipped"
    exit 77
fi

# NBD_CMD_CACHE over the whole 16 MiB: the data (8 MiB in disk.qed,
# 4 MiB in base.raw) comes into the page cache.  Read-ahead is
# asynchronous: wait for it.
nbdsh -u "$uri_d" -c 'h.cache(16 * 1024 * 1024, 0)'
for (( i=0; i < 50; i++ )); do
    [ "$(resident disk.qed)" -ge $((8 * 1024 * 1024)) ] &&
        [ "$(resident base.raw)" -ge $((4 * 1024 * 1024)) ] && break
    sleep 0.1
done
resident disk.qed
resident base.raw
test "$(resident disk.qed)" -ge $((8 * 1024 * 1024))
test "$(resident base.raw)" -ge $((4 * 1024 * 1024))

# ... and the L2 table mapping it is in memory: reading the range reads
# data, no L2 slice (4096 bytes).  A server that was not asked to cache
# reads the slice first.
start_nbdkit cold "$plugin" -r disk.qed
for srv in d cold; do
    trace_server $srv pread64
    nbdsh -u "$(eval echo \$uri_$srv)" -c 'h.pread(8 * 1024 * 1024, 8 * 1024 * 1024)'
    untrace_server $srv
    cat $srv.strace
done
if grep -E 'pread64\(.*, 4096, ' d.strace; then
    echo "$0: the L2 slice was read again after NBD_CMD_CACHE"
    exit 1
fi
grep -E 'pread64\(.*, 4096, ' cold.strace
stop_nbdkit cold
stop_nbdkit d
