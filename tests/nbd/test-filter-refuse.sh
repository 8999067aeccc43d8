#!/usr/bin/env bash
# nbdkit-qed tests: what the qed filter refuses, and backing files.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# - Malformed images (make-malformed.py) served through the filter:
#   those the plugin refuses are refused at start with the same
#   message (exit status 1, not a crash); those with bad table entries
#   fail with EIO on exactly those ranges and read right elsewhere.
# - An image whose header names a backing file by path is refused
#   unless backing= names it, and the file its header names is never
#   opened (strace), be it a real base or /etc/shadow; neither
#   backing-format= nor backing-protocols= can change that.  (URIs in
#   headers: test-filter-nbd.sh, test-filter-curl.sh.)
# - With backing= (raw), the filter reads what qemu-nbd reads from the
#   image following its header, and maps it as the plugin does.

source ./functions.sh
set -e -u -x

requires test -f "$filter"
requires nbdkit --version
requires nbdsh --version
requires nbdcopy --version
requires nbdinfo --version
requires qemu-img --version
requires qemu-io --version
requires qemu-nbd --version
requires jq --version
requires strace -V
requires /usr/bin/python3 --version

cd "$tmpdir"
/usr/bin/python3 "$abs_srcdir/make-malformed.py" cases > /dev/null

#----------------------------------------------------------------------
# Malformed images.

# Refused at start: the header's fields, read as the plugin reads them.
# The cases about backing names are served with backing files allowed:
# the filter refuses the header before it looks at the name, or, for
# a valid name (a loop), refuses to follow a name from a header.
jq -r '.[] | select(.expect == "refuse") |
       [.name, (.allow_backing | tostring), .text] | @tsv' \
   cases/cases.json > refuse.tsv
test "$(grep -c . refuse.tsv)" -ge 30
while IFS=$'\t' read -r name allow text; do
    args=(--filter="$filter" file "cases/$name.qed")
    if [ "$allow" = false ]; then
        filter_refuses "$text" "${args[@]}" allow-backing=false
    else
        filter_refuses "" "${args[@]}"
        grep -qF -- "$text" err ||
            grep -qF 'which the qed filter does not open' err
    fi
done < refuse.tsv

# Served with bad entries: EIO there, the data everywhere else.
jq -c '.[] | select(.expect == "eio" or .expect == "past-end" or
                    .expect == "ok" or .expect == "shared")' \
   cases/cases.json > served.jsonl
test "$(grep -c . served.jsonl)" -ge 15
while read -r case; do
    name=$(jq -r .name <<< "$case")
    start_nbdkit srv --filter="$filter" file "cases/$name.qed" \
                 allow-backing=false
    CASE=$case nbdsh -u "$uri_srv" -c '
import errno, json, os
c = json.loads(os.environ["CASE"])
size = c["size"]
assert h.get_size() == size
eio = c.get("eio", [])
M = 1 << 20

def want(off, n):
    b = bytearray(n)
    for o, l, v in c["data"]:
        lo, hi = max(o, off), min(o + l, off + n)
        if lo < hi:
            b[lo - off:hi - off] = bytes([v]) * (hi - lo)
    return bytes(b)

def bad(off, n):
    return any(off < o + l and o < off + n for o, l in eio)

for o, l in eio:
    for off, n in [(o, l), (o, 1), (o + l - 1, 1)]:
        try:
            h.pread(n, off)
        except nbd.Error as e:
            assert e.errnum == errno.EIO, (off, n, e)
        else:
            raise AssertionError("pread(%d, %d) did not fail" % (n, off))
# Everything else, in 64K pieces (the first 8 MiB of larger disks).
for off in range(0, min(size, 8 * M), 65536):
    n = min(65536, size - off)
    if not bad(off, n):
        assert h.pread(n, off) == want(off, n), (off, n)
'
    stop_nbdkit srv
done < served.jsonl

#----------------------------------------------------------------------
# Backing files.

M=$((1 << 20))
qemu-img create -q -f raw base.raw 16M
qemu-io -f raw -c "write -P 0x62 0 $((4 * M))" \
        -c "write -P 0x63 $((12 * M)) $((64 << 10))" base.raw > /dev/null
qemu-img create -q -f qed -o cluster_size=65536 \
         -b "$tmpdir/base.raw" -F raw overlay.qed 16M
qemu-io -f qed -c "write -P 0x6f $((M + 4096)) 8192" \
        -c "write -z $((12 * M)) $((64 << 10))" overlay.qed > /dev/null

# The header names base.raw: refused without backing=, base.raw never
# opened.  (strace follows nbdkit's threads; the log shows every file
# it opened or tried to.)
refused_unopened ()
{
    local name=$1 image=$2 status=0
    # LeakSanitizer cannot run under ptrace: in sanitizer builds, no
    # leak check for this nbdkit (the other tests have it).
    local noleak=ASAN_OPTIONS=detect_leaks=0:exitcode=119
    local wrapper=("${_nbdkit_wrapper[@]/#ASAN_OPTIONS=*/$noleak}")
    rm -f strace.sock
    strace -f -e trace=open,openat,openat2 -o trace \
           "${wrapper[@]}" nbdkit -f -U "$tmpdir/strace.sock" \
           --filter="$filter" file "$image" 2> err || status=$?
    cat err
    test $status = 1
    grep -F 'which the qed filter does not open' err
    grep -F "\"$name\"" err
    grep -F "$image" trace      # the trace did see the image opened
    if grep -F "$name" trace; then
        echo "$0: the filter opened $name, which only a header named"
        return 1
    fi
}
refused_unopened "$tmpdir/base.raw" overlay.qed

# The same for a header naming /etc/shadow (made without opening it).
qemu-img create -q -f qed -u -b /etc/shadow -F raw shadow.qed 1M
refused_unopened /etc/shadow shadow.qed

# allow-backing=false refuses it as the plugin does; backing-format=
# does not make the header's path acceptable; nor can backing-protocols=
# allow paths.
filter_refuses 'backing files are disabled' \
    --filter="$filter" file overlay.qed allow-backing=false
filter_refuses 'which the qed filter does not open' \
    --filter="$filter" file overlay.qed backing-format=raw
filter_refuses '"file" cannot be allowed' \
    --filter="$filter" file overlay.qed backing-protocols=file,nbd

# backing=: reads what qemu-nbd reads from the overlay following its
# header, and maps as the plugin does.
start_qemu_nbd q -r -f qed overlay.qed
start_nbdkit plugin -r "$plugin" overlay.qed
start_nbdkit srv --filter="$filter" file overlay.qed \
             backing=base.raw backing-format=raw
nbdcopy -- "$uri_q" qemu.raw
same_export "$uri_srv" "$uri_plugin"
cmp qemu.raw same_export/data
# The overlay's own data, the base's, the zero cluster over it.
cmp <(head -c 8192 < <(tail -c +$((M + 4096 + 1)) qemu.raw)) \
    <(printf 'o%.0s' $(seq 8192))
grep -q "hole,zero" same_export/map
nbdinfo "$uri_srv" | grep -F "backing file $tmpdir/base.raw (raw)"
stop_nbdkit srv
stop_nbdkit plugin
stop_qemu_nbd q
