#!/usr/bin/env bash
# nbdkit-qed tests: kill -9 the server while a client writes, restart,
# and find every flushed byte.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# A client writes random blocks and flushes now and then, keeping the
# disk as it must be after its last completed flush and the writes
# since.  At a random moment the server gets SIGKILL.  The restarted
# server (which repairs the image on the first writable connection)
# must read every byte as it was at the last flush, or, for bytes
# written since, as one of the values written there; qemu-img check
# must then find no corruption.  With and without a backing file.

source ./functions.sh
set -e -u -x

requires qemu-img --version
requires nbdsh --version

cd "$tmpdir"
export DISK_SIZE=$((16 << 20))

# The client: writes until the server dies, then saves durable.raw
# (the disk at the last completed flush) and pending (the writes
# since, as "offset length seed" lines).
cat > client.py <<'EOF'
import os, random
size = int(os.environ["DISK_SIZE"])
durable = bytearray(open("durable.raw", "rb").read())
rng = random.Random(int(os.environ["SEED"]))
pending = []
open("connected", "w").close()   # the kill timer starts now

def block(seed, n):
    return random.Random(seed).randbytes(n)

try:
    while True:
        for _ in range(rng.randint(1, 12)):
            n = rng.randint(1, 96 * 1024)
            off = rng.randrange(0, size - n)
            seed = rng.getrandbits(64)
            pending.append((off, n, seed))
            h.pwrite(block(seed, n), off)
        h.flush()
        for off, n, seed in pending:
            durable[off:off + n] = block(seed, n)
        pending = []
except nbd.Error:
    pass
open("durable.raw", "wb").write(durable)
open("pending", "w").write("".join("%d %d %d\n" % p for p in pending))
EOF

# The checker: every byte is its durable value or one written since.
cat > verify.py <<'EOF'
import random
durable = open("durable.raw", "rb").read()
disk = h.pread(len(durable), 0)
written = [(off, random.Random(seed).randbytes(n))
           for off, n, seed in (map(int, l.split()) for l in open("pending"))]
for c in range(0, len(durable), 4096):
    if disk[c:c + 4096] == durable[c:c + 4096]:
        continue
    for i in range(c, c + 4096):
        if disk[i] != durable[i]:
            assert any(off <= i < off + len(d) and d[i - off] == disk[i]
                       for off, d in written), \
                "byte %d reads %d, durable %d" % (i, disk[i], durable[i])
EOF

head -c $DISK_SIZE /dev/urandom > base.raw
for image in plain.qed overlay.qed; do
    for i in 1 2 3 4; do
        # A fresh image each round, so that the client allocates.
        rm -f $image
        if [ $image = plain.qed ]; then
            qemu-img create -q -f qed $image $DISK_SIZE
            head -c $DISK_SIZE /dev/zero > durable.raw
        else
            qemu-img create -q -f qed -b base.raw -F raw $image $DISK_SIZE
            cp base.raw durable.raw
        fi
        start_nbdkit srv "$plugin" $image
        pid=$(cat srv.pid)
        rm -f connected
        SEED=$i nbdsh -u "$uri_srv" -c "exec(open('client.py').read())" &
        client=$!
        # Count from the connection: a loaded machine can take longer
        # than the kill delay to start Python.
        for (( w=0; w < 600; w++ )); do
            [ -e connected ] && break
            kill -0 "$client" 2>/dev/null || break
            sleep 0.1
        done
        [ -e connected ]
        t=$((RANDOM % 10 + 5))          # 0.5 to 1.4 seconds
        sleep "$((t / 10)).$((t % 10))"
        kill -9 "$pid"
        wait "$client"
        stop_nbdkit srv || true         # it was killed: status 137
        features=$(header_field $image 16 8)

        start_nbdkit srv "$plugin" $image
        nbdsh -u "$uri_srv" -c "exec(open('verify.py').read())"
        stop_nbdkit srv
        # Left dirty (NEED_CHECK), it was checked before being served.
        if (( features & 2 )); then
            grep -E "check found the image consistent|repaired the image" \
                srv.log
            checked=$((${checked:-0} + 1))
        fi
        # Repaired on that writable connection: no corruption left.
        qemu_check_no_corruption $image
    done
done
# Without a backing file the kills left NEED_CHECK set.
test "${checked:-0}" -ge 3
