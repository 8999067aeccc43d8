#!/usr/bin/env bash
# nbdkit-qed tests: malformed images through nbdkit.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# make-malformed.py writes the images and the outcome each must have:
# refused at start with a message naming the field that is wrong, or
# served with EIO on exactly the ranges whose table entries are bad
# (reads, writes and zeros there fail, nothing else does, and the file
# is not changed beyond what the test wrote elsewhere), or served and
# read correctly, or (entries pointing past the end of the file, which
# would alias new clusters once the file grows) EIO read-only and
# repaired by the first writable connection.

source ./functions.sh
set -e -u -x

requires nbdsh --version
requires /usr/bin/python3 --version
requires jq --version

qedcheck=$abs_builddir/qedcheck
cd "$tmpdir"
/usr/bin/python3 "$abs_srcdir/make-malformed.py" cases

# One line per case: name, expected outcome, allow-backing, and the
# text expected in nbdkit's message (refuse) or in qedcheck's output
# (shared).
/usr/bin/python3 -c '
import json
for c in json.load(open("cases/cases.json")):
    print("\t".join([c["name"], c["expect"], str(c["allow_backing"]).lower(),
                     c.get("text", c.get("check", "-"))]))
' > cases.tsv
test "$(grep -c . cases.tsv)" -ge 20

# The checks of a served image, in nbdsh; the case is in $CASE.
cat > verify.py <<'EOF'
import errno
import json
import os

c = json.loads(os.environ["CASE"])
assert not h.is_read_only()
size = c["size"]
eio = c.get("eio", [])
assert h.get_size() == size, h.get_size()
M = 1 << 20

# Writes that come first (they grow the file).
for o, l, v in c.get("grow", []):
    h.pwrite(bytes([v]) * l, o)
    c["data"].append([o, l, v])


def want(off, n):
    """What [off, off + n) must read."""
    b = bytearray(n)
    for o, l, v in c["data"]:
        lo, hi = max(o, off), min(o + l, off + n)
        if lo < hi:
            b[lo - off:hi - off] = bytes([v]) * (hi - lo)
    return bytes(b)


def fails_eio(fn, *args):
    try:
        fn(*args)
    except nbd.Error as e:
        assert e.errnum == errno.EIO, (fn, args, e)
        return
    raise AssertionError("%s%r did not fail" % (fn.__name__, args))


# Ranges that must read fine: the whole disk but the EIO ranges (only
# around the data, the start and the end of a large disk).
if size <= 64 * M:
    good = [(0, size)]
else:
    good = [(0, M), (size - M, M)]
    for o, l, v in c["data"]:
        start = max(0, o - 8192)
        good.append((start, min(size, o + l + 8192) - start))
for o, l in sorted(eio):
    pieces = []
    for a, n in good:
        if a < o:
            pieces.append((a, min(n, o - a)))
        if a + n > o + l:
            start = max(a, o + l)
            pieces.append((start, a + n - start))
    good = pieces


def check_reads():
    for a, n in good:
        for off in range(a, a + n, M):
            k = min(M, a + n - off)
            assert h.pread(k, off) == want(off, k), (off, k)


check_reads()

# Requests touching a bad range fail with EIO: all of it, its first
# and last byte, and a read that starts in good data before it.  (A
# write there may have changed the good part: NBD leaves the contents
# of a failed write unspecified.)
for o, l in eio:
    fails_eio(h.pread, 8192, max(0, o - 4096))
    for off, n in [(o, l), (o, 1), (o + l - 1, 1)]:
        fails_eio(h.pread, n, off)
        fails_eio(h.pwrite, b"\xee" * n, off)
        fails_eio(h.zero, n, off)
    # Block status still answers (a bad entry is not data, nor zeros).
    h.block_status(l, o, lambda *args: 0)

if c.get("write"):
    # New data in an unallocated cluster and at the very end.
    h.pwrite(b"\xab" * 5000, 10 * 4096 + 100)
    h.pwrite(b"\xcd" * 100, size - 100)
    h.flush()
    c["data"] += [[10 * 4096 + 100, 5000, 0xab], [size - 100, 100, 0xcd]]
    check_reads()

check_reads()
EOF

# bad_ranges_fail URI CASE [writable]: every range of the case's "eio"
# list fails with EIO (and the export is writable when asked).
bad_ranges_fail ()
{
    CASE=$2 WRITABLE=${3:-} nbdsh -u "$1" -c '
import errno, json, os
assert not os.environ["WRITABLE"] or not h.is_read_only()
for o, l in json.loads(os.environ["CASE"])["eio"]:
    try:
        h.pread(l, o)
    except nbd.Error as e:
        assert e.errnum == errno.EIO, e
    else:
        raise AssertionError("pread(%d, %d) did not fail" % (l, o))'
}

failures=0
while IFS=$'\t' read -r name expect allow text; do
    img=cases/$name.qed
    args=("file=$img")
    [ "$allow" = true ] || args+=(allow-backing=false)
    case=$(/usr/bin/python3 -c '
import json, sys
print(json.dumps([c for c in json.load(open("cases/cases.json"))
                  if c["name"] == sys.argv[1]][0]))' "$name")

    case $expect in
    refuse)
        # nbdkit must exit with status 1 (not a crash, not a sanitizer's
        # status) before it serves anything, naming the field.
        status=0
        nbdkit -U - "$plugin" "${args[@]}" --run 'exit 0' \
            > "$name.out" 2> "$name.err" || status=$?
        cat "$name.err"
        if [ $status -ne 1 ] || ! grep -qF -- "$text" "$name.err"; then
            echo "$0: $name: expected a refusal mentioning \"$text\"," \
                 "got exit status $status"
            failures=$((failures + 1))
        fi
        ;;
    past-end)
        # Read-only: the ranges fail with EIO, and the file is kept.
        cp "$img" "$name.before"
        start_nbdkit ro -r "$plugin" "${args[@]}"
        if ! bad_ranges_fail "$uri_ro" "$case"
        then
            echo "$0: $name: read-only: the bad ranges did not fail"
            failures=$((failures + 1))
        fi
        stop_nbdkit ro
        if ! cmp "$name.before" "$img"; then
            echo "$0: $name: read-only: the file changed"
            failures=$((failures + 1))
        fi
        # Writable: the open does not look for them (that would read
        # every table), so until something grows the file they still
        # fail, and the file is kept.
        start_nbdkit srv "$plugin" "${args[@]}"
        if ! bad_ranges_fail "$uri_srv" "$case" writable
        then
            echo "$0: $name: writable: the bad ranges did not fail"
            failures=$((failures + 1))
        fi
        if ! cmp "$name.before" "$img"; then
            echo "$0: $name: writable, before growing: the file changed"
            failures=$((failures + 1))
        fi
        # The first write that grows the file (a new cluster in the
        # table of L1 entry 2, if the case has none) clears them
        # first; then the ranges read as zeros.
        if ! CASE=$(jq -c '.eio = [] |
                           .grow = ((.grow // []) +
                                    [[4194304 + 40960, 4096, 183]])' \
                       <<< "$case") \
             nbdsh --base-allocation -u "$uri_srv" \
                   -c 'exec(open("verify.py").read())'
        then
            echo "$0: $name: served wrongly after the repair"
            failures=$((failures + 1))
        fi
        stop_nbdkit srv
        if ! grep -q "past the end of the file; cleared before the file grows" \
             "$tmpdir/srv.log" || ! "$qedcheck" "$img"; then
            echo "$0: $name: not repaired"
            failures=$((failures + 1))
        fi
        ;;
    eio|ok|shared)
        cp "$img" "$name.before"
        start_nbdkit srv "$plugin" "${args[@]}"
        if ! CASE=$case nbdsh --base-allocation -u "$uri_srv" \
                          -c 'exec(open("verify.py").read())'
        then
            echo "$0: $name: served wrongly"
            failures=$((failures + 1))
        fi
        stop_nbdkit srv
        grep -v ': debug: ' "$tmpdir/srv.log" || true
        case $expect in
        eio)
            # Failed writes changed nothing.
            if ! grep -q '"grow"' <<< "$case" && ! cmp "$name.before" "$img"
            then
                echo "$0: $name: the file changed"
                failures=$((failures + 1))
            fi
            ;;
        shared)
            status=0
            "$qedcheck" "$img" > "$name.check" || status=$?
            cat "$name.check"
            if [ $status -ne 2 ] || ! grep -qx "$text" "$name.check"; then
                echo "$0: $name: the check did not report the corruption"
                failures=$((failures + 1))
            fi
            ;;
        ok)
            # Written and closed: consistent, NEED_CHECK clear.
            "$qedcheck" "$img" || {
                echo "$0: $name: not clean after serving"
                failures=$((failures + 1)); }
            features=$(header_field "$img" 16 8)
            if (( features & 2 )); then
                echo "$0: $name: NEED_CHECK still set after serving"
                failures=$((failures + 1))
            fi
            ;;
        esac
        ;;
    *)
        echo "$0: unknown outcome $expect"; exit 1 ;;
    esac
done < cases.tsv

test $failures = 0
