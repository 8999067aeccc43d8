#!/usr/bin/env bash
# nbdkit-qed tests: what is not a regular file or a block device is
# refused at start, by name, without hanging.  A FIFO named as the
# image or as its backing file used to block nbdkit in open() forever.
# SPDX-License-Identifier: LGPL-2.1-or-later

source ./functions.sh
set -e -u -x

requires nbdkit --version
requires qemu-img --version
requires mkfifo --version
requires timeout --version

cd "$tmpdir"

# refused TEXT ARGS...: nbdkit with these parameters exits with status
# 1 (a refusal, not a crash or a sanitizer's report) within the time
# limit, saying TEXT.
refused ()
{
    local what=$1 status=0; shift
    # (timeout runs a program, not the nbdkit function: the wrapper of
    # sanitizer and valgrind builds goes in by hand.)
    timeout 30 "${_nbdkit_wrapper[@]}" nbdkit -f -U - "$plugin" "$@" \
        --run true 2> err || status=$?
    cat err
    if [ $status != 1 ]; then
        echo "$0: nbdkit $* exited with status $status, not 1 (124: it hung)"
        exit 1
    fi
    grep -Fi "$what" err
}

# A FIFO as the backing file.
truncate -s 1M base.raw
qemu-img create -q -f qed -b base.raw -F raw top.qed 1M
rm base.raw
mkfifo base.raw
refused "base.raw: is a FIFO: only regular files and block devices" \
    top.qed
# ... and read-only, and given with backing=.
refused "base.raw: is a FIFO" -r top.qed
refused "base.raw: is a FIFO" top.qed backing=base.raw backing-format=raw

# A FIFO as the image.
mkfifo fifo.qed
refused "fifo.qed: is a FIFO" fifo.qed
refused "fifo.qed: is a FIFO" -r fifo.qed

# A directory as the image or the backing file.
mkdir dir.qed
refused "dir.qed: is a directory" -r dir.qed
rm base.raw
mkdir base.raw
refused "base.raw: is a directory" top.qed
