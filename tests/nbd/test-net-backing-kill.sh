#!/usr/bin/env bash
# nbdkit-qed tests: a backing server that dies and comes back.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# One client connection stays up throughout.  The base's server (nbdkit
# file, which delays reads so that one is in flight) is killed with
# SIGKILL during a read of a backing range: that read fails with EIO,
# and so do later reads of backing ranges and an allocating write that
# needs backing data, while a range already in the overlay still reads.
# Nothing reaches the overlay from the failed write (qemu-img check is
# clean, the range is still the base's).  After the server restarts on
# the same socket, the same connection reads and writes backing ranges
# again.  A server that does not answer makes reads fail after
# backing-timeout=.

source ./functions.sh
set -e -u -x -o pipefail

requires qemu-img --version
requires qemu-io --version
requires nbdsh --version
requires nbdkit --filter=delay null --version

d=$tmpdir
cd "$d"

qemu-img create -q -f raw base.raw 8M
qemu-io -f raw -c 'write -P 0x41 0 8M' base.raw >/dev/null
start_nbdkit base -r --filter=delay file base.raw rdelay=1
qemu-img create -q -f qed -b "$uri_base" -F raw ov.qed
qemu-io -f qed -c 'write -P 0x61 0 64k' ov.qed >/dev/null
start_nbdkit ours "$plugin" ov.qed backing-timeout=10 \
             backing-connect-timeout=2

# wait_file FILE: until FILE exists (the client's signal), or fail.
wait_file ()
{
    local i
    for (( i=0; i < 300; i++ )); do
        [ -e "$1" ] && return 0
        kill -0 "$client" 2>/dev/null || break
        sleep 0.1
    done
    echo "$0: no $1"
    return 1
}
stop_client ()
{
    kill "$client" 2>/dev/null || true
}

cat > client.py <<'EOF'
import errno, os, time
M = 1024 * 1024

def wait_file(f):
    while not os.path.exists(f):
        time.sleep(0.1)

def fails_with_eio(what, f):
    try:
        f()
    except nbd.Error as e:
        assert e.errnum == errno.EIO, "%s: %s" % (what, e)
        print("%s: %s" % (what, e))
        return
    raise AssertionError("%s: no error" % what)

assert h.pread(65536, 1 * M) == b"\x41" * 65536

# A read of a backing range in flight when the server dies.
buf = nbd.Buffer(65536)
cookie = h.aio_pread(buf, 2 * M)
open("in-flight", "w").close()
wait_file("killed")
while True:
    try:
        done = h.aio_command_completed(cookie)
    except nbd.Error as e:
        assert e.errnum == errno.EIO, e
        print("in flight: %s" % e)
        break
    assert not done, "the read in flight succeeded"
    h.poll(-1)

# Backing ranges fail, again and again (without waiting long); the
# overlay's own range reads; a write that needs backing data fails.
for i in range(3):
    start = time.monotonic()
    fails_with_eio("read", lambda: h.pread(4096, 3 * M))
    assert time.monotonic() - start < 5
assert h.pread(65536, 0) == b"\x61" * 65536
fails_with_eio("write", lambda: h.pwrite(b"\x62" * 512, 4 * M + 512))
h.flush()
assert h.pread(65536, 0) == b"\x61" * 65536
open("failed", "w").close()

# Back: reads and writes of backing ranges work again.
wait_file("restarted")
deadline = time.monotonic() + 20
while True:
    try:
        data = h.pread(65536, 3 * M)
        break
    except nbd.Error as e:
        assert time.monotonic() < deadline, e
        time.sleep(0.2)
assert data == b"\x41" * 65536
assert h.pread(65536, 2 * M) == b"\x41" * 65536
h.pwrite(b"\x63" * 512, 5 * M + 512)
h.flush()
assert h.pread(1024, 5 * M) == b"\x41" * 512 + b"\x63" * 512
open("recovered", "w").close()
EOF

nbdsh -u "$uri_ours" -c "exec(open('client.py').read())" &
client=$!
cleanup_fn stop_client

wait_file in-flight
kill -9 "$(server_pid base)"
stop_nbdkit base || true                # it was killed: status 137
touch killed
wait_file failed

start_nbdkit base -r file base.raw
touch restarted
wait "$client"
[ -e recovered ]
grep "cannot connect\|server disconnected\|not reconnecting\|cannot be reached" \
     ours.log

stop_nbdkit ours
qemu-img check ov.qed
map_at ov.qed $((4 * 1024 * 1024)) '.depth == 1'
map_at ov.qed $((5 * 1024 * 1024)) '.depth == 0'
out=$(qemu-io -f qed -c 'read -P 0x63 5243392 512' \
              -c 'read -P 0x41 4M 64k' -c 'read -P 0x61 0 64k' ov.qed)
echo "$out"
if grep -i "fail" <<< "$out"; then
    echo "$0: the overlay does not hold what was written"
    exit 1
fi

# A server that does not answer in time: the read fails with EIO after
# backing-timeout=, not later, and the client's connection stays up.
start_nbdkit slow -r --filter=delay file base.raw rdelay=6
qemu-img create -q -f qed -u -b "$uri_slow" -F raw slow.qed 8M
start_nbdkit slowours "$plugin" slow.qed backing-timeout=1
nbdsh -u "$uri_slowours" -c '
import errno, time
for i in range(2):
    start = time.monotonic()
    try:
        h.pread(4096, 1024 * 1024)
        raise AssertionError("no timeout")
    except nbd.Error as e:
        assert e.errnum == errno.EIO, e
    elapsed = time.monotonic() - start
    print("failed after %.1f s" % elapsed)
    assert elapsed < 4, elapsed
'
grep "no reply after 1 seconds" slowours.log
