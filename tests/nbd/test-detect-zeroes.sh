#!/usr/bin/env bash
# nbdkit-qed tests: detect-zeroes=off|on|unmap, side by side with
# qemu-nbd --detect-zeroes on the same images.
# SPDX-License-Identifier: LGPL-2.1-or-later

source ./functions.sh
set -e -u -x

requires nbdsh --version
requires qemu-img --version
requires qemu-io --version
requires qemu-nbd --version

cd "$tmpdir"

# allocated FILE: bytes of host space FILE takes.
allocated ()
{
    echo $(( $(stat -c '%b * %B' "$1") ))
}

# serve SERVER MODE IMAGE: start server "srv" (nbdkit or qemu-nbd) on
# IMAGE with detect-zeroes=MODE; sets $uri.
serve ()
{
    local server=$1 mode=$2 image=$3
    if [ "$server" = nbdkit ]; then
        start_nbdkit srv "$plugin" "$image" detect-zeroes="$mode"
    else
        # (qemu-nbd wants --discard before --detect-zeroes=unmap.)
        start_qemu_nbd srv -f qed --discard=unmap --detect-zeroes="$mode" \
                       "$image"
    fi
    uri=$uri_srv
}
unserve ()
{
    if [ "$1" = nbdkit ]; then stop_nbdkit srv; else stop_qemu_nbd srv; fi
}

MiB=$((1024 * 1024))
for server in nbdkit qemu-nbd; do
    for mode in off on unmap; do
        # 4 MiB of zeros written to an empty image: as data (off), or as
        # zero clusters, the file growing by an L2 table at most.
        qemu-img create -q -f qed -o cluster_size=64k empty.qed 64M
        before=$(stat -c %s empty.qed)
        serve $server $mode empty.qed
        nbdsh -u "$uri" -c "h.pwrite(bytearray(4 * $MiB), 0)"
        unserve $server
        grown=$(( $(stat -c %s empty.qed) - before ))
        echo "$server detect-zeroes=$mode: the file grew by $grown"
        if [ $mode = off ]; then
            test $grown -ge $((4 * MiB))
        else
            test $grown -lt $MiB
        fi
        qemu-io -f qed -c "read -P 0 0 4M" empty.qed | grep -F 'read 4194304'

        # 4 MiB of zeros over 4 MiB of data: unmap gives the host space
        # back; on and off write zeros in place, keeping it.
        qemu-img create -q -f qed -o cluster_size=64k data.qed 64M
        qemu-io -f qed -c 'write -P 0x55 0 4M' data.qed > /dev/null
        before=$(allocated data.qed)
        serve $server $mode data.qed
        nbdsh -u "$uri" -c "h.pwrite(bytearray(4 * $MiB), 0)"
        # Data that starts with zeros is data, detected or not.
        nbdsh -u "$uri" -c "
buf = bytearray(65536)
buf[-1] = 1
h.pwrite(buf, 8 * $MiB)
assert h.pread(65536, 8 * $MiB) == buf
"
        unserve $server
        after=$(allocated data.qed)
        echo "$server detect-zeroes=$mode: allocated $before -> $after"
        # (QEMU 7.2's QED driver writes zeros in place even with unmap:
        # only ours gives the space back.)
        if [ $mode = unmap ] && [ $server = nbdkit ]; then
            test $after -le $(( before - 4 * MiB + 64 * 1024 ))
        elif [ $mode != unmap ]; then
            test $after -ge $before
        fi
        qemu-io -f qed -c "read -P 0 0 4M" data.qed | grep -F 'read 4194304'
        qemu_check_no_corruption data.qed
        rm -f empty.qed data.qed
    done
done

# A bad value is refused at start.
qemu-img create -q -f qed disk.qed 1M
must_refuse_start "detect-zeroes must be off, on or unmap" \
    disk.qed detect-zeroes=yes
