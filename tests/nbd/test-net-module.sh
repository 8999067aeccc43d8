#!/usr/bin/env bash
# nbdkit-qed tests: the network file layers are a module (qed-net.so,
# files/net-load.c), loaded on the first network name only.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# 1. The plugin and the filter serving local images map neither the
#    module nor libnbd nor libcurl (/proc/PID/maps).
# 2. With dir=, the first connection to an image whose backing file is
#    an nbd+unix:// URI loads the build tree's module ($QED_NET_MODULE),
#    and reads through it return the base's bytes.
# 3. With QED_NET_MODULE naming a missing file, opening such an image
#    fails with a message naming that path, from the plugin at start,
#    from a dir= server for that export only (it keeps serving the
#    others, and exits cleanly), and from qed-img; nothing crashes.

source ./functions.sh
set -e -u -x

requires nbdcopy --version
requires nbdinfo --version
requires qemu-img --version
requires qemu-io --version
requires test -f "$QED_NET_MODULE"

cd "$tmpdir"
mkdir d

# maps_of NAME: server NAME's mappings, one file a line.
maps_of ()
{
    local pid
    pid=$(server_pid "$1") || return 1
    awk '$6 != "" { print $6 }' "/proc/$pid/maps" | sort -u
}

# not_mapped NAME: server NAME maps no network library nor the module
# (and its maps are read at all: the plugin or the filter is there).
not_mapped ()
{
    maps_of "$1" > "$1.maps"
    grep -E 'nbdkit-qed-(plugin|filter)\.so' "$1.maps"
    if grep -E '/(libnbd|libcurl)\.so|/qed-net\.so' "$1.maps"; then
        echo "$0: server $1 serves local files only, and maps the above"
        return 1
    fi
    return 0
}

# The base, a raw file over NBD, and images: a local one, and an
# overlay whose backing file is the base's URI.
qemu-img create -q -f raw base.raw 4M
qemu-io -f raw -c 'write -P 0x4e 0 1M' -c 'write -P 0x45 2M 64k' \
        base.raw >/dev/null
start_nbdkit base file base.raw
qemu-img create -q -f qed d/local.qed 4M
qemu-io -f qed -c 'write -P 0x4c 0 64k' d/local.qed >/dev/null
qemu-img convert -f qed -O raw d/local.qed local.ref
qemu-img create -q -f qed -b "$uri_base" -F raw d/net.qed 4M

# 1. Local images only.
start_nbdkit local "$plugin" d/local.qed
nbdcopy "$uri_local" local.out
cmp local.out local.ref
not_mapped local
stop_nbdkit local

if [ -f "$filter" ]; then
    start_nbdkit flocal -r --filter="$filter" file d/local.qed
    nbdcopy "$uri_flocal" flocal.out
    cmp flocal.out local.ref
    not_mapped flocal
    stop_nbdkit flocal
fi

# 2. dir=: the local export first (nothing loaded), then the overlay,
# which loads the module and reads the base through it.
start_nbdkit dir "$plugin" dir=d
sock=$tmpdir/dir.sock
nbdcopy "nbd+unix:///local.qed?socket=$sock" dlocal.out
cmp dlocal.out local.ref
not_mapped dir
nbdcopy "nbd+unix:///net.qed?socket=$sock" dnet.out
cmp dnet.out base.raw
maps_of dir > dir.maps
grep -Fx "$(realpath "$QED_NET_MODULE")" dir.maps
grep -E '/libnbd\.so' dir.maps
stop_nbdkit dir

# 3. A missing module.  The plugin opens the image at start, which
# fails, naming the module's path; exit status 1, not a signal.
missing=$tmpdir/nowhere/qed-net.so
status=0
QED_NET_MODULE=$missing nbdkit -f -U - "$plugin" d/net.qed --run true \
    2> missing.err || status=$?
cat missing.err
test "$status" -eq 1
grep -F "$uri_base: cannot load the network file layer $missing: " missing.err

# With dir=, only that export fails: the server goes on serving the
# local image, and exits cleanly.
QED_NET_MODULE=$missing start_nbdkit mdir "$plugin" dir=d
msock=$tmpdir/mdir.sock
must_fail nbdinfo "nbd+unix:///net.qed?socket=$msock"
grep -F "cannot load the network file layer $missing: " "$tmpdir/mdir.log"
nbdcopy "nbd+unix:///local.qed?socket=$msock" mlocal.out
cmp mlocal.out local.ref
stop_nbdkit mdir

# qed-img, the same.
QED_NET_MODULE=$missing qed_img_refuses \
    "cannot load the network file layer $missing: " \
    convert -O raw d/net.qed out.raw
