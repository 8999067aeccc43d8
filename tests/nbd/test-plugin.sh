#!/usr/bin/env bash
# nbdkit-qed tests: the plugin's parameters, help and what it advertises.
# SPDX-License-Identifier: LGPL-2.1-or-later

source ./functions.sh
set -e -u -x

requires nbdkit --version
requires nbdinfo --version
requires qemu-img --version
requires jq --version

# --version, --dump-plugin and qed-img --version show this project's
# version (configure.ac's, the one NEWS names).
nbdkit "$plugin" --version > "$tmpdir/version"
grep "^qed $package_version\$" "$tmpdir/version"
qed_img --version | grep "^qed-img $package_version\$"
grep "^$package_version " "$abs_top_srcdir/NEWS"

# --dump-plugin and --help describe the plugin and every parameter.
nbdkit "$plugin" --dump-plugin > "$tmpdir/dump"
grep "^version=$package_version\$" "$tmpdir/dump"
grep '^name=qed$' "$tmpdir/dump"
grep '^thread_model=parallel$' "$tmpdir/dump"
grep '^qed_backing_files=raw,qed$' "$tmpdir/dump"
grep '^qed_detect_zeroes=off,on,unmap$' "$tmpdir/dump"
grep '^qed_cache=writeback,writethrough,none,unsafe$' "$tmpdir/dump"
grep '^qed_snapshot=yes$' "$tmpdir/dump"
grep '^qed_dir=yes$' "$tmpdir/dump"
nbdkit "$plugin" --help > "$tmpdir/help"
for p in file= backing= backing-format= allow-backing= l2-cache-size= \
         locking= check= detect-zeroes= cache= snapshot= dir= default-export=; do
    grep -- "$p" "$tmpdir/help"
done

# Missing and unknown parameters fail at start with a message.
must_fail nbdkit "$plugin" --run true 2> "$tmpdir/err"
grep "file=<FILENAME> parameter" "$tmpdir/err"
qemu-img create -q -f qed -o cluster_size=16k "$tmpdir/disk.qed" 100M
must_fail nbdkit "$plugin" "$tmpdir/disk.qed" nosuch=1 --run true \
    2> "$tmpdir/err"
grep "unknown parameter 'nosuch'" "$tmpdir/err"
must_fail nbdkit "$plugin" "$tmpdir/disk.qed" check=sometimes --run true \
    2> "$tmpdir/err"
grep "check must be auto or always" "$tmpdir/err"

# One image per server: a second file name is refused, not served
# instead of the first.
cp "$tmpdir/disk.qed" "$tmpdir/other.qed"
must_refuse_start "only one image can be served" \
    "$tmpdir/disk.qed" "$tmpdir/other.qed"
must_refuse_start "only one image can be served" \
    file="$tmpdir/disk.qed" file="$tmpdir/other.qed"

# A repair is a notice, not an error: NEED_CHECK set and a leaked
# cluster at the end, repaired by the first writable connection.
cp "$tmpdir/disk.qed" "$tmpdir/dirty.qed"
printf '\x02' | dd of="$tmpdir/dirty.qed" bs=1 seek=16 conv=notrunc
truncate -s +16K "$tmpdir/dirty.qed"
start_nbdkit dirty "$plugin" "$tmpdir/dirty.qed"
nbdinfo --size "$uri_dirty"
stop_nbdkit dirty
grep -F "qed: notice: $tmpdir/dirty.qed: repaired the image" \
    "$tmpdir/dirty.log"
if grep -F "error:" "$tmpdir/dirty.log"; then
    echo "$0: the repair was logged as an error"
    exit 1
fi
test "$(header_field "$tmpdir/dirty.qed" 16 8)" = 0

# What a client sees: size, block sizes (preferred = cluster size),
# multi-conn, and every command.
start_nbdkit srv "$plugin" "$tmpdir/disk.qed"
nbdinfo --json "$uri_srv" > "$tmpdir/info"
cat "$tmpdir/info"
test "$(jq '.exports[0]."export-size"' "$tmpdir/info")" = 104857600
test "$(jq '.exports[0]."block_size_minimum"' "$tmpdir/info")" = 1
test "$(jq '.exports[0]."block_size_preferred"' "$tmpdir/info")" = 16384
test "$(jq '.exports[0]."block_size_maximum"' "$tmpdir/info")" = 33554432
for flag in can_multi_conn can_flush can_fua can_trim can_zero \
            can_fast_zero can_cache; do
    test "$(jq ".exports[0].$flag" "$tmpdir/info")" = true
done
test "$(jq '.exports[0].is_read_only' "$tmpdir/info")" = false
