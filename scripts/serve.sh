#!/usr/bin/env bash
# nbdkit-qed: install what is missing, build, and serve a QED image on
# localhost, in the foreground (Ctrl-C stops the server).
# SPDX-License-Identifier: LGPL-2.1-or-later
#
#   scripts/serve.sh [NBDKIT-OPTION...] [IMAGE [PARAMETER=VALUE...]]
#
# Without IMAGE it serves a 1 GiB demo image, build/demo.qed, made
# once with qemu-img and qemu-io.  NBDKIT-OPTIONs are nbdkit's own
# flags (-r, -v, --threads=16, ...); PARAMETERs are the plugin's
# (backing=, l2-cache-size=, ... see README).  The port is $PORT
# (default 10809), on 127.0.0.1 only.

set -e -u -o pipefail

opts=()
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do
    if [ "$1" = -h ] || [ "$1" = --help ]; then
        sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
        exit 0
    fi
    opts+=("$1"); shift
done
image=${1:-}
[ $# -gt 0 ] && shift
if [ -n "$image" ] && [ ! -e "$image" ]; then
    echo "serve: $image: no such file" >&2
    exit 1
fi
port=${PORT:-10809}

# shellcheck source=scripts/setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# Quiet: the installation's and the build's output go to a log, shown
# only when they fail, so that the banner below is what one sees.
log=$(mktemp "${TMPDIR:-/tmp}/nbdkit-qed-build.XXXXXX")
echo "serve: installing what is missing and building (log: $log)" >&2
if ! qed_setup > "$log" 2>&1; then
    cat "$log" >&2
    echo "serve: the build failed; its output is above and in $log" >&2
    exit 1
fi
rm -f "$log"

# nbdsh and qemu tools: Debian's, not another python3 earlier on PATH.
export PATH=/usr/bin:$PATH

if [ -z "$image" ]; then
    image=$builddir/demo.qed
    if [ ! -e "$image" ]; then
        # Recognisable data: 1 MiB of 'Q' at 0, of 'E' at 256 MiB and
        # of 'D' at 512 MiB, and a zeroed 1 MiB at 768 MiB (zero
        # clusters); the rest is unallocated.
        qed_log "making the demo image $image"
        qemu-img create -q -f qed "$image.tmp" 1G
        qemu-io -f qed \
            -c 'write -q -P 0x51 0 1M' \
            -c 'write -q -P 0x45 256M 1M' \
            -c 'write -q -P 0x44 512M 1M' \
            -c 'write -q -z 768M 1M' \
            "$image.tmp"
        mv "$image.tmp" "$image"
    fi
fi

cat <<END

Serving $image on nbd://localhost:$port (Ctrl-C stops it).  Connect with:
  nbdinfo nbd://localhost:$port
  nbdinfo --map nbd://localhost:$port
  qemu-img info nbd://localhost:$port
  qemu-io -r -f raw -c 'read -v 0 32' nbd://localhost:$port

END

exec nbdkit -f -i 127.0.0.1 -p "$port" "${opts[@]}" \
    "$builddir/plugin/.libs/nbdkit-qed-plugin.so" file="$image" "$@"
