#!/usr/bin/env bash
# nbdkit-qed soak: concurrent writers, kill -9 and restarts, and a model
# of what must survive them, for a given time (not part of make check).
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Usage: tests/soak.sh [SECONDS] [BUILD_DIR]
#   SECONDS    how long to run (default 300); the round under way when
#              the time is up still finishes its checks (seconds).
#   BUILD_DIR  the build tree (default ./build): its plugin
#              (plugin/.libs/nbdkit-qed-plugin.so), tests/nbd/qedcheck
#              and, if built, tests/nbd/.libs/libpowerloss.so.
# Environment: SOAK_SEED (the order of the configurations, the kill
# times and the writers' requests; default random, printed),
# SOAK_ROUNDS (kills per configuration, default 4), SOAK_SIZE (the
# virtual disk in MiB, default 64), SOAK_KEEP=1 (keep the work
# directory, every configuration's, even when all passed);
# SOAK_CLUSTERS, SOAK_TABLES and SOAK_BACKINGS narrow the
# configurations (lists, e.g. SOAK_BACKINGS="raw qed").
#
# Configurations: cluster sizes 4K, 64K and 2M, L2 table sizes 1, 4
# and 16 clusters, and no backing file, a raw one or a QED one (both
# shorter than the disk), in a random order, again and again until the
# time is up.  Each gets a new image, which QEMU first fills in places,
# and then rounds of:
#
# 1. Serve the image (on a private Unix socket) and read all of it: the
#    first writable connection repairs an image left with NEED_CHECK.
#    Every byte must be what the model says may have survived (below).
#    Flush, take what was read as the model, and stop the server.
# 2. qemu-img check and our qedcheck must find no corruption (leaks are
#    allowed: a crash can leak clusters), NEED_CHECK must be clear after
#    the clean stop, and qemu-img compare must read what the plugin read.
# 3. Serve it again; 4 writer connections (threads of the driver below)
#    write random data, zeros (FAST_ZERO, NO_HOLE, FUA) and trims (FUA),
#    read back and check their own bytes, and flush now and then, until
#    the server gets SIGKILL at a random moment.
# 4. With libpowerloss.so built, two rounds in three are power cuts too:
#    nbdkit ran with that journal preloaded, and the changes to the
#    image since its last fdatasync are undone (all of them, or each
#    4 KiB page back to its own random moment, and the file size too).
#    kill -9 alone loses nothing that the server wrote, as the page
#    cache survives it, so only this tells whether the server orders
#    its writes with flushes (see tests/nbd/powerloss.c).
# and, after the last kill, steps 1 and 2 once more.  QEMU 7.2 opens
# no image with table size 1, and neither makes nor opens one with
# cluster 2M and table 16 (its size limit overflows; it makes table 8
# here, and the header is patched): there QEMU does not fill the image,
# the model starts as the backing file, and qedcheck checks alone.
#
# The model.  Writer c owns the stripes i with i % 4 == c (stripes of
# 2.5 clusters + 1234 bytes, so that connections share clusters and L2
# tables; the writers move together over a hot window of stripes to
# race for them) and has one request in flight: each byte has one
# writer, and its writes a total order.  "durable" holds what must
# survive a crash, "pending" the writes that may or may not (their
# data, or the zeros of a zero or a trim), from before they are sent.
# A flush, sent when N writes had completed and then completed, makes
# those N durable, in order (multi-conn: a flush covers every
# connection's completed writes); a request with FUA makes itself
# durable when it completes, and hides what older pending writes had
# at its bytes.  After a crash every byte must read as its durable
# value or as one of its pending writes; while the server runs, every
# read must return exactly the last completed writes.  Trims: the
# engine zeroes the clusters a trim covers wholly (and only those), so
# these must read as zeros right after the trim, or, over a backing
# file, as before (an unallocated cluster shows the backing file).  A
# refused FAST_ZERO changes nothing.
#
# At the end, after the number of power cuts, one line:
#   soak: T s, C configurations, K kills, O operations, G GiB verified,
#   F failures
# (operations: completed NBD requests; verified: bytes read back and
# compared with the model).  A failure keeps the work directory (its
# path is printed: the configuration's directory holds the logs and the
# evidence) and goes on with the next configuration; the exit status is
# 1 if anything failed.  Traffic goes over Unix sockets only.

set -e -u -o pipefail

usage ()
{
    echo "usage: $0 [SECONDS] [BUILD_DIR]" >&2
    exit 2
}

[ $# -le 2 ] || usage
duration=${1:-300}
build=${2:-./build}
[[ $duration =~ ^[0-9]+$ ]] || usage
rounds=${SOAK_ROUNDS:-4}
size=$(( ${SOAK_SIZE:-64} * 1024 * 1024 ))
seed=${SOAK_SEED:-$(( $(date +%s) % 100000 * 100 + RANDOM % 100 ))}

build=$(cd "$build" 2>/dev/null && pwd) ||
    { echo "soak: no build directory $build" >&2; exit 2; }
plugin=$build/plugin/.libs/nbdkit-qed-plugin.so
qedcheck=$build/tests/nbd/qedcheck
powerloss=$build/tests/nbd/.libs/libpowerloss.so

# nbdsh and the nbd module are Debian's (python3-libnbd), which another
# python3 earlier on PATH may not have.
export PATH=/usr/bin:$PATH
python=/usr/bin/python3

# Counters for the summary line.  A configuration runs in a subshell,
# which hands them back in $work/counters.
start=$SECONDS
deadline=$(( SECONDS + duration ))
configs=0 kills=0 powercuts=0 ops=0 verified=0 failures=0

summarized=
summary ()
{
    local gib
    summarized=1
    echo "soak: $powercuts of the kills with a simulated power cut"
    gib=$(awk -v b="$verified" 'BEGIN { printf "%.1f", b / 1073741824 }')
    echo "soak: $(( SECONDS - start )) s, $configs configurations," \
         "$kills kills, $ops operations, $gib GiB verified," \
         "$failures failures"
}

#----------------------------------------------------------------------
# The work directory, and what is left running when the script stops.

work=$(mktemp -d "${TMPDIR:-/tmp}/qedsoak.XXXXXX")
config_pid=

on_exit ()
{
    local status=$?
    set +e
    # The configuration's subshell stops its server and driver (by pid).
    [ -z "$config_pid" ] || kill "$config_pid" 2>/dev/null
    wait 2>/dev/null
    [ ! -f "$work/counters" ] ||
        read -r configs kills powercuts ops verified failures \
             < "$work/counters"
    [ -n "$summarized" ] || summary
    if [ "$failures" -gt 0 ] || [ "${SOAK_KEEP:-}" = 1 ] || [ $status -ne 0 ]
    then
        echo "soak: work directory kept: $work"
    else
        rm -rf "$work"
    fi
    exit $status
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# Missing tools are an error here, not a skip: the soak was asked for.
need ()
{
    if ! "$@" >/dev/null 2>&1; then
        echo "soak: missing or not working: $*" >&2
        exit 2
    fi
}
need nbdkit --version
need qemu-img --version
need qemu-io --version
need "$python" -c 'import nbd'
need test -f "$plugin"
need test -x "$qedcheck"
# A sanitizer build needs its runtime preloaded into nbdkit (see
# functions.sh.in), which this script does not do.
if ldd "$plugin" 2>/dev/null | grep -q libasan; then
    echo "soak: $plugin is a sanitizer build: use a plain one" >&2
    exit 2
fi
if [ ! -f "$powerloss" ]; then
    echo "soak: $powerloss not built: kill -9 only, no simulated power cuts"
    powerloss=
fi

#----------------------------------------------------------------------
# The driver (Python, with python3-libnbd).

driver=$work/soak.py
cat > "$driver" <<'EOF'
"""soak.sh's driver: the model, the writers, the checks, the power cut.

  soak.py session DIR CLUSTER BACKING

keeps the model of one configuration (DIR/durable.raw at the start) and
answers commands on stdin, one line each on stdout:
  verify URI           -> "ok ops N verified M" or "fail WHY"
  work URI SEED SECS   -> "ready" once connected, then the same
  crash IMAGE JOURNAL MODE SEED -> "ok WHAT" or "fail WHY"
  quit
After a verify, DIR/durable.raw is what was read.  After a failure,
DIR holds model.raw, pending.pkl (a list of (offset, data)) and, from
verify, disk.raw: what the server read.
"""

import errno
import os
import pickle
import random
import struct
import sys
import threading
import time

import nbd

NCONN = 4
CHUNK = 4 << 20
PAGE = 4096


class Failure(Exception):
    pass


def say(*args):
    print("soak.py:", *args, file=sys.stderr, flush=True)


def reply(line):
    print(line, flush=True)


def write_file(path, data):
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)


def first_difference(a, b):
    return next(i for i in range(len(a)) if a[i] != b[i])


def connect(uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


def dead(h):
    return h.aio_is_dead() or h.aio_is_closed()


#----------------------------------------------------------------------
# After a crash: each byte is durable or one of its pending writes.

def check(disk, durable, pending):
    """Returns (None or what is wrong, how many pieces were torn)."""
    if disk == durable:
        return None, 0
    cover = {}
    for off, data in pending:
        for p in range(off // PAGE, (off + len(data) - 1) // PAGE + 1):
            cover.setdefault(p, []).append((off, data))
    torn = 0
    # (memoryviews: slices of them are not copies.)
    dm, um = memoryview(disk), memoryview(durable)
    for base in range(0, len(disk), CHUNK):
        end = min(base + CHUNK, len(disk))
        if dm[base:end] == um[base:end]:
            continue
        for p0 in range(base, end, PAGE):
            p1 = min(p0 + PAGE, end)
            if dm[p0:p1] == um[p0:p1]:
                continue
            ents = cover.get(p0 // PAGE, [])
            # Cut the page where writes begin or end: over each piece
            # the same writes apply, and it most often reads as one of
            # them (or durable) as a whole.
            cuts = {p0, p1}
            for off, data in ents:
                cuts.update(x for x in (off, off + len(data)) if p0 < x < p1)
            cuts = sorted(cuts)
            for a, b in zip(cuts, cuts[1:]):
                got = disk[a:b]
                if got == durable[a:b]:
                    continue
                here = [(off, data) for off, data in ents
                        if off <= a and b <= off + len(data)]
                if any(got == data[a - off:b - off] for off, data in here):
                    continue
                torn += 1       # a mix: byte by byte
                for i in range(a, b):
                    v = disk[i]
                    if v != durable[i] and \
                       not any(data[i - off] == v for off, data in here):
                        return ("byte %d (0x%x) reads 0x%02x: durable 0x%02x,"
                                " %d pending writes of it%s" %
                                (i, i, v, durable[i], len(here),
                                 "".join(" [%d+%d]=0x%02x" %
                                         (off, len(data), data[i - off])
                                         for off, data in here))), torn
    return None, torn


#----------------------------------------------------------------------
# The writers.

class Entry:
    """A write (or zero, or trim) that may not be durable yet."""
    __slots__ = ("sub", "off", "data", "done")


class Model:
    def __init__(self, durable, current):
        self.lock = threading.Lock()
        self.durable = durable
        self.current = current      # as of the completed writes
        current[:] = durable
        self.pending = []
        self.nsub = 0           # requests begun (their order)
        self.ndone = 0          # writes completed

    def begin(self, off, data):
        e = Entry()
        e.off, e.data, e.done = off, data, None
        with self.lock:
            e.sub = self.nsub
            self.nsub += 1
            self.pending.append(e)
        return e

    def complete(self, e):
        # Only e's writer changes these bytes: no lock for current.
        self.current[e.off:e.off + len(e.data)] = e.data
        with self.lock:
            e.done = self.ndone
            self.ndone += 1

    def forget(self, e):
        """e changed nothing."""
        with self.lock:
            self.pending.remove(e)

    def flush_mark(self):
        with self.lock:
            return self.ndone

    def flushed(self, mark):
        """A flush sent when mark writes had completed has completed."""
        with self.lock:
            now, keep = [], []
            for e in self.pending:
                (now if e.done is not None and e.done < mark
                 else keep).append(e)
            for e in sorted(now, key=lambda e: e.sub):
                self.durable[e.off:e.off + len(e.data)] = e.data
            self.pending = keep

    def fua(self, e):
        """e completed with FUA: durable, over every older write."""
        a, b = e.off, e.off + len(e.data)
        with self.lock:
            self.durable[a:b] = e.data
            keep = []
            for p in self.pending:
                pa, pb = p.off, p.off + len(p.data)
                if p is e:
                    continue
                if p.sub > e.sub or pb <= a or b <= pa:
                    keep.append(p)
                    continue
                for fa, fb in ((pa, min(pb, a)), (max(pa, b), pb)):
                    if fa < fb:
                        f = Entry()
                        f.sub, f.done, f.off = p.sub, p.done, fa
                        f.data = p.data[fa - pa:fb - pa]
                        keep.append(f)
            self.pending = keep

    def pending_list(self):
        with self.lock:
            return [(e.off, bytes(e.data)) for e in self.pending]


class Shared:
    """What the writers of one work command share."""
    def __init__(self, size, cluster, seed):
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.gone = threading.Event()       # the server went away
        self.failure = None
        self.size, self.cluster = size, cluster
        # Not a multiple of the cluster size, nor of 512 (as random-io).
        self.stripe = cluster * 5 // 2 + 1234
        self.nstripes = (size + self.stripe - 1) // self.stripe
        self.hot = 0
        self.stats = {}
        # How often to flush (percent of the requests) and to ask for
        # FUA (one in): each round its own, from often to rarely.
        rng = random.Random(seed)
        self.flush_pct = rng.choice((0.3, 1, 4))
        self.fua_one_in = rng.choice((8, 32, 128))

    def fail(self, msg):
        with self.lock:
            if self.failure is None:
                self.failure = msg
        self.stop.set()

    def add(self, stats):
        with self.lock:
            for k, v in stats.items():
                self.stats[k] = self.stats.get(k, 0) + v


def pick_range(rng, lo, hi, cluster):
    """Whole clusters, 512-byte sectors, a few bytes, or anything."""
    k = rng.randrange(4)
    for unit in ((cluster,) if k == 0 else (512,) if k == 1 else ()):
        a = (lo + unit - 1) // unit * unit
        b = hi // unit * unit
        if a < b:
            off = a + rng.randrange((b - a) // unit) * unit
            return off, rng.randint(1, (b - off) // unit) * unit
    off = rng.randrange(lo, hi)
    if k == 2:
        return off, rng.randint(1, min(600, hi - off))
    return off, rng.randint(1, hi - off)


def writer(shared, model, h, conn, seed, backing, deadline):
    rng = random.Random(seed * 1000 + conn)
    cluster, stripe, nstripes = shared.cluster, shared.stripe, shared.nstripes
    st = dict(ops=0, verified=0, writes=0, zeros=0, refused=0, trims=0,
              reads=0, flushes=0, fua=0)
    mine = list(range(conn, nstripes, NCONN))
    try:
        while not shared.stop.is_set() and time.monotonic() < deadline:
            # Mostly in the hot window, which moves now and then.
            if rng.randrange(100) == 0:
                shared.hot = rng.randrange(0, nstripes, NCONN)
            s = shared.hot + conn + NCONN * rng.randrange(2)
            if s >= nstripes or rng.randrange(10) < 3:
                s = rng.choice(mine)
            lo = s * stripe
            hi = min(lo + stripe, shared.size)
            step(h, rng, shared, model, st, lo, hi, cluster, backing)
            st["ops"] += 1
    except nbd.Error as ex:
        if not dead(h):
            raise Failure("connection %d: %s" % (conn, ex))
        shared.gone.set()
    finally:
        shared.add(st)


def step(h, rng, shared, model, st, lo, hi, cluster, backing):
    k = rng.random() * 100
    off, n = pick_range(rng, lo, hi, cluster)
    fua = rng.randrange(shared.fua_one_in) == 0
    flags = nbd.CMD_FLAG_FUA if fua else 0
    st["fua"] += fua
    if k < 40:
        data = rng.randbytes(n)
        e = model.begin(off, data)
        h.pwrite(data, off, flags)
        model.complete(e)
        if fua:
            model.fua(e)
        st["writes"] += 1
    elif k < 55:
        fast = rng.randrange(2) == 0
        if fast:
            flags |= nbd.CMD_FLAG_FAST_ZERO
        if rng.randrange(3) == 0:
            flags |= nbd.CMD_FLAG_NO_HOLE
        e = model.begin(off, bytes(n))
        try:
            h.zero(n, off, flags)
        except nbd.Error as ex:
            if fast and ex.errnum == errno.ENOTSUP and not dead(h):
                model.forget(e)         # refused: nothing changed
                st["refused"] += 1
                return
            raise
        model.complete(e)
        if fua:
            model.fua(e)
        st["zeros"] += 1
    elif k < 65:
        # Only the clusters it covers wholly change, to zeros.
        a = (off + cluster - 1) // cluster * cluster
        b = (off + n) // cluster * cluster
        ents = [model.begin(c, bytes(cluster)) for c in range(a, b, cluster)]
        h.trim(n, off, flags)
        if ents:
            got = h.pread(b - a, a)
            st["verified"] += b - a
        for e in ents:
            piece = got[e.off - a:e.off - a + cluster]
            if piece == e.data:
                model.complete(e)
                if fua:
                    model.fua(e)
            elif backing and piece == model.current[e.off:e.off + cluster]:
                model.forget(e)         # unallocated: still the backing
            else:
                i = first_difference(piece, e.data)
                raise Failure("trim %d+%d: byte %d reads 0x%02x, not zero%s"
                              % (off, n, e.off + i, piece[i],
                                 " nor as before" if backing else ""))
        st["trims"] += 1
    elif k < 100 - shared.flush_pct:
        got = h.pread(n, off)
        want = model.current[off:off + n]
        if got != want:
            i = first_difference(got, want)
            raise Failure("read %d+%d: byte %d reads 0x%02x, expected 0x%02x"
                          % (off, n, off + i, got[i], want[i]))
        st["reads"] += 1
        st["verified"] += n
    else:
        mark = model.flush_mark()
        h.flush()
        model.flushed(mark)
        st["flushes"] += 1


#----------------------------------------------------------------------
# A configuration's session.  The buffers are allocated once: faulting
# in fresh memory is slow on small VMs.

class Session:
    def __init__(self, d, cluster, backing):
        self.dir, self.cluster, self.backing = d, cluster, backing
        path = os.path.join(d, "durable.raw")
        self.durable = bytearray(os.stat(path).st_size)
        with open(path, "rb", buffering=0) as f:
            if f.readinto(self.durable) != len(self.durable):
                raise Failure("%s: short read" % path)
        self.pending = []           # (offset, data) that may show
        self.spare = bytearray(len(self.durable))
        self.current = bytearray(len(self.durable))

    def dump(self, disk=None):
        """Keep the evidence of a failure."""
        write_file(os.path.join(self.dir, "model.raw"), self.durable)
        write_file(os.path.join(self.dir, "pending.pkl"),
                   pickle.dumps(self.pending))
        if disk is not None:
            write_file(os.path.join(self.dir, "disk.raw"), disk)

    def verify(self, uri):
        size = len(self.durable)
        h = connect(uri)
        if h.get_size() != size:
            raise Failure("size %d, expected %d" % (h.get_size(), size))
        disk = self.spare
        for off in range(0, size, CHUNK):
            n = min(CHUNK, size - off)
            disk[off:off + n] = h.pread(n, off)
        wrong, torn = check(disk, self.durable, self.pending)
        if wrong:
            self.dump(disk)
            raise Failure("after the restart: " + wrong)
        if torn:
            say("%d pieces read as a mix of their pending writes" % torn)
        # What was read is the model once it is flushed.
        h.flush()
        h.shutdown()
        self.spare, self.durable, self.pending = self.durable, disk, []
        # For qemu-img compare.
        write_file(os.path.join(self.dir, "durable.raw"), self.durable)
        return 2 + (size + CHUNK - 1) // CHUNK, size

    def work(self, uri, seed, seconds):
        if self.pending:
            raise Failure("work: pending writes in the model: verify first")
        model = Model(self.durable, self.current)
        shared = Shared(len(self.durable), self.cluster, seed)
        handles = [connect(uri) for _ in range(NCONN)]
        for h in handles:
            if (h.get_size() != shared.size or not h.can_trim() or
                    not h.can_zero() or not h.can_fast_zero() or
                    not h.can_fua() or not h.can_flush() or
                    not h.can_multi_conn() or h.is_read_only()):
                raise Failure("unexpected size or flags")
        reply("ready")              # soak.sh times the kill from here
        deadline = time.monotonic() + seconds

        def body(conn):
            try:
                writer(shared, model, handles[conn], conn, seed,
                       self.backing, deadline)
            except Failure as f:
                shared.fail(str(f))
            except Exception as ex:             # a bug here fails too
                shared.fail("connection %d: %r" % (conn, ex))

        threads = [threading.Thread(target=body, args=(c,))
                   for c in range(NCONN)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if shared.failure is None and not shared.gone.is_set():
            # Not killed (the time ran out): flush all of it.
            mark = model.flush_mark()
            handles[0].flush()
            model.flushed(mark)
        for h in handles:
            if not dead(h):
                h.shutdown()
        self.pending = model.pending_list()
        st = shared.stats
        say("%(writes)d writes, %(zeros)d zeros (%(refused)d refused), "
            "%(trims)d trims, %(reads)d reads, %(flushes)d flushes, "
            "%(fua)d FUA" % st + "; %d pending" % len(self.pending))
        if shared.failure:
            self.dump()
            raise Failure(shared.failure)
        return st["ops"], st["verified"]


#----------------------------------------------------------------------
# A power cut: undo (part of) what powerloss.c journalled since the
# last sync.

HEADER = struct.Struct("=IIQQQQQQ")
MAGIC, REC_CHANGE, REC_TRUNCATE, REC_SYNC = 0x474f4c50, 1, 2, 3


def crash(image, journal, mode, seed):
    rng = random.Random(seed)
    with open(journal, "rb") as f:
        buf = f.read()
    recs, pos, upto = [], 0, 0
    while pos + HEADER.size <= len(buf):
        magic, kind, seq, off, length, old_size, new_size, nold = \
            HEADER.unpack_from(buf, pos)
        if magic != MAGIC or kind not in (REC_CHANGE, REC_TRUNCATE, REC_SYNC):
            raise Failure("%s: bad record at %d" % (journal, pos))
        if pos + HEADER.size + nold > len(buf):
            break               # cut short by the kill: not done yet
        old = buf[pos + HEADER.size:pos + HEADER.size + nold]
        pos += HEADER.size + nold
        if kind == REC_SYNC:
            upto = max(upto, seq)
        else:
            recs.append((seq, off, length, old_size, new_size, old))
    recs = [r for r in recs if r[0] >= upto]
    n = len(recs)
    if n == 0 or mode == "keep":
        return "%d changes since the last sync, all kept" % n

    # Each page as it was after its first `when` changes, the size as
    # after the first `size_at` ones.
    # Mostly all or nothing, so that pages written one after the other
    # often end up apart; the size mostly as it was last.
    def moment(weights=(2, 2, 1)):
        if mode == "drop":
            return 0
        return rng.choices((0, n, rng.randint(0, n)), weights)[0]
    when = {}
    sizes = [recs[0][3]] + [r[4] for r in recs]
    size_at = moment((1, 2, 1))
    undone = 0
    fd = os.open(image, os.O_RDWR)
    try:
        top = max([os.fstat(fd).st_size] + sizes)
        os.ftruncate(fd, top)               # room to put cut bytes back
        for i in range(n - 1, -1, -1):
            seq, off, length, old_size, new_size, old = recs[i]
            for p in range(off // PAGE, (off + length + PAGE - 1) // PAGE):
                if p not in when:
                    when[p] = moment()
                if i < when[p]:
                    continue
                a, b = max(off, p * PAGE), min(off + length, (p + 1) * PAGE)
                # Past the old end of the file: nothing was there.
                piece = old[a - off:b - off]
                os.pwrite(fd, piece + bytes(b - a - len(piece)), a)
                undone += 1
        os.ftruncate(fd, sizes[size_at])
        os.fsync(fd)
    finally:
        os.close(fd)
    return ("%d changes since the last sync, %d page changes undone, "
            "size %d of %d" % (n, undone, sizes[size_at], sizes[-1]))


def main():
    if len(sys.argv) != 5 or sys.argv[1] != "session":
        raise SystemExit(__doc__)
    s = Session(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1")
    for line in sys.stdin:
        w = line.split()
        try:
            if w[0] == "verify":
                reply("ok ops %d verified %d" % s.verify(w[1]))
            elif w[0] == "work":
                reply("ok ops %d verified %d"
                      % s.work(w[1], int(w[2]), float(w[3])))
            elif w[0] == "crash":
                reply("ok " + crash(w[1], w[2], w[3], int(w[4])))
            elif w[0] == "quit":
                break
            else:
                raise Failure("unknown command: %s" % line.strip())
        except Failure as f:
            reply("fail %s" % f)
        except Exception as ex:
            import traceback
            traceback.print_exc()
            reply("fail %r" % ex)


main()
EOF

# start_driver DIR CLUSTER BACKING: the driver's session for this
# configuration, a coprocess; its messages go to DIR/driver.log.
# Faulting in fresh pages is what costs most on small VMs: its malloc
# keeps and reuses the big buffers it frees (the server runs as usual).
start_driver ()
{
    coproc DRIVER {
        GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295 \
            exec "$python" "$driver" session "$@" 2>>"$1/driver.log"
    }
    # shellcheck disable=SC2153 # set by coproc
    driver_pid=$DRIVER_PID
    # Our own copies: bash drops DRIVER when the coprocess ends.
    exec {to_driver}>&"${DRIVER[1]}" {from_driver}<&"${DRIVER[0]}"
}

# ask_driver COMMAND...: send a command; ask_driver_more: read the next
# answer into $answer; an answer "ops N verified M" adds to the
# counters, "fail ..." fails the configuration.
ask_driver ()
{
    echo "$*" >&"$to_driver"
    ask_driver_more
}

ask_driver_more ()
{
    answer=
    if ! read -r -t 600 answer <&"$from_driver"; then
        tail -n 5 "$dir/driver.log"
        fail "the driver did not answer"
    fi
    if [[ $answer =~ ^ok\ ops\ ([0-9]+)\ verified\ ([0-9]+)$ ]]; then
        ops=$(( ops + BASH_REMATCH[1] ))
        verified=$(( verified + BASH_REMATCH[2] ))
    fi
    case $answer in
        fail\ *) fail "${answer#fail }" ;;
    esac
}

stop_driver ()
{
    echo quit >&"$to_driver"
    wait "$driver_pid"
    driver_pid=
}

#----------------------------------------------------------------------
# The server.

# start_server DIR [POWERCUT]: serve DIR/disk.qed on DIR/nbd.sock, its
# messages appended to DIR/nbdkit.log; with POWERCUT (1), under the
# power-loss journal DIR/journal.  Sets server_pid and uri.
start_server ()
{
    local dir=$1 cut=${2:-0} i
    local sock=$dir/nbd.sock pidfile=$dir/nbdkit.pid
    local env=()
    rm -f "$sock" "$pidfile"
    if [ "$cut" = 1 ]; then
        env=(LD_PRELOAD="$powerloss" POWERLOSS_FILE="$dir/disk.qed"
             POWERLOSS_LOG="$dir/journal")
    fi
    echo "--- start${env:+ with the power-loss journal}" >> "$dir/nbdkit.log"
    # exec, so that $! is nbdkit itself; not the coprocess's pipes.
    ( exec env "${env[@]}" nbdkit -f -U "$sock" -P "$pidfile" \
           "$plugin" "$dir/disk.qed" 2>>"$dir/nbdkit.log" \
           {to_driver}>&- {from_driver}<&- ) &
    server_pid=$!
    for (( i = 0; i < 300; i++ )); do
        if [ -s "$pidfile" ] && [ -S "$sock" ]; then
            uri="nbd+unix:///?socket=$sock"
            return 0
        fi
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    fail "nbdkit did not start"
}

# stop_server: SIGTERM; it must exit (within 30 s) with status 0.
stop_server ()
{
    local i status=0
    kill "$server_pid" 2>/dev/null || true
    for (( i = 0; i < 300; i++ )); do
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$server_pid" 2>/dev/null || true
    wait "$server_pid" || status=$?
    server_pid=
    [ $status = 0 ] || fail "nbdkit exited with status $status on SIGTERM"
}

# kill_server: SIGKILL; it must have been running until then.
kill_server ()
{
    local status=0
    if ! kill -9 "$server_pid" 2>/dev/null; then
        wait "$server_pid" || status=$?
        server_pid=
        fail "nbdkit died by itself (status $status) before the kill"
    fi
    # (Quiet: bash would report the job as killed.)
    wait "$server_pid" 2>/dev/null || true
    server_pid=
}

#----------------------------------------------------------------------
# A configuration.  run_config runs in a subshell under set -e (see
# run_isolated): any command that fails ends the configuration, as a
# failure.

# fail MESSAGE: this configuration failed; returns 1.
fail ()
{
    failed=1
    failures=$(( failures + 1 ))
    echo "soak: FAIL: $config: $*"
    if [ -f "$dir/nbdkit.log" ]; then
        echo "soak: the end of $dir/nbdkit.log:"
        tail -n 20 "$dir/nbdkit.log"
    fi
    return 1
}

# header_field FILE OFFSET SIZE: the little-endian number there (as in
# functions.sh.in; the features are the 8 bytes at 16, NEED_CHECK is 2).
header_field ()
{
    od -An -v --endian=little -tu"$3" -j"$2" -N"$3" "$1" | tr -d ' '
}

# random_below N: a random number in [0, N).
random_below ()
{
    echo $(( (RANDOM * 32768 + RANDOM) % $1 ))
}

log2 ()
{
    local n=0
    while (( (1 << n) < $1 )); do n=$(( n + 1 )); done
    echo $n
}

# qemu_opens CLUSTER TABLE: can QEMU 7.2 open such an image?  Not with
# table size 1 (see README), nor where its limit on the image size,
# cluster * (table * cluster / 8)^2, overflows 64 bits.
qemu_opens ()
{
    [ "$2" != 1 ] && (( $(log2 "$1") * 3 + 2 * $(log2 "$2") - 6 < 64 ))
}

# make_image DIR CLUSTER TABLE BACKING: DIR/disk.qed, with its backing
# file (none, raw or qed, three quarters of the disk), filled by QEMU
# in places (data, zero clusters, zeroed bytes) for the writers to
# overwrite; and DIR/durable.raw, the model: what QEMU reads from it.
# Images QEMU cannot open start empty, and their model is the backing
# file.
make_image ()
{
    local dir=$1 cs=$2 ts=$3 backing=$4 i o t=$3
    local bsize=$(( size * 3 / 4 + 1536 ))
    local opts=() args=()
    head -c $(( 1024 * 1024 )) /dev/urandom > "$dir/random"
    case $backing in
        raw)
            head -c $bsize /dev/urandom > "$dir/base.raw"
            opts+=(-b base.raw -F raw) ;;
        qed)
            qemu-img create -q -f qed "$dir/base.qed" $bsize
            for (( i = 0; i < 24; i++ )); do
                o=$(( $(random_below $(( bsize - 1048576 ))) / 512 * 512 ))
                args+=(-c "write -s $dir/random $o $(( (RANDOM % 2048 + 1) * 512 ))")
            done
            args+=(-c "write -z $(( bsize / 2 / 65536 * 65536 )) 131072")
            qemu-io -f qed "${args[@]}" "$dir/base.qed" > /dev/null
            opts+=(-b base.qed -F qed) ;;
    esac
    # Where QEMU cannot make the table size, it makes half of it, and
    # the header then says the whole (the L1 table is zeros, the file
    # grows over the rest).
    [ "$ts" = 1 ] || qemu_opens "$cs" "$ts" || t=$(( ts / 2 ))
    qemu-img create -q -f qed -o "cluster_size=$cs,table_size=$t" \
        "${opts[@]}" "$dir/disk.qed" $size
    if [ "$t" != "$ts" ]; then
        printf '%b' "\\x$(printf %02x "$ts")\\x00\\x00\\x00" |
            dd of="$dir/disk.qed" bs=1 seek=8 conv=notrunc status=none
        truncate -s $(( cs * (1 + ts) )) "$dir/disk.qed"
    fi
    if qemu_opens "$cs" "$ts"; then
        args=()
        for (( i = 0; i < 16; i++ )); do
            o=$(random_below $(( size - 2 * cs - 300000 )))
            args+=(-c "write -s $dir/random $o $(( RANDOM * 8 + 1 ))")
            args+=(-c "write -z $(( (o / cs + 1) * cs )) $cs")
            args+=(-c "write -z $(( o + 200000 )) 3000")
        done
        qemu-io -f qed "${args[@]}" "$dir/disk.qed" > /dev/null
        qemu-img convert -f qed -O raw "$dir/disk.qed" "$dir/durable.raw"
    else
        case $backing in
            none) : ;;
            raw) cp "$dir/base.raw" "$dir/durable.raw" ;;
            qed) qemu-img convert -f qed -O raw "$dir/base.qed" \
                     "$dir/durable.raw" ;;
        esac
        truncate -s $size "$dir/durable.raw"
    fi
    rm -f "$dir/random"
}

# check_image DIR CLUSTER TABLE: after a clean stop, no corruption for
# qemu-img check nor for qedcheck, NEED_CHECK clear, and QEMU reads what
# the plugin read (durable.raw); qedcheck alone where QEMU cannot open
# the image.
check_image ()
{
    local dir=$1 img=$1/disk.qed status=0 qemu="0 0" ours qemu_too=0
    if qemu_opens "$2" "$3"; then qemu_too=1; fi
    if [ $qemu_too = 1 ]; then
        qemu-img check --output=json -f qed "$img" > "$dir/check.json" \
            2>&1 || status=$?
        if [ $status != 0 ] && [ $status != 3 ]; then
            cat "$dir/check.json"
            fail "qemu-img check: exit status $status"
        fi
        qemu=$("$python" -c 'import json, sys
r = json.load(open(sys.argv[1]))
print(r.get("corruptions", 0), r.get("check-errors", 0))' "$dir/check.json")
    fi
    status=0
    "$qedcheck" "$img" > "$dir/qedcheck.out" 2>&1 || status=$?
    if [ $status != 0 ] && [ $status != 3 ]; then
        cat "$dir/qedcheck.out"
        fail "qedcheck: exit status $status"
    fi
    ours=$(awk '$1 == "corruptions" { c = $2 } $1 == "check-errors" { e = $2 }
                END { print c + 0, e + 0 }' "$dir/qedcheck.out")
    if [ "$qemu" != "0 0" ] || [ "$ours" != "0 0" ]; then
        fail "corruptions and check errors: qemu-img $qemu, qedcheck $ours"
    fi
    if (( $(header_field "$img" 16 8) & 2 )); then
        fail "NEED_CHECK still set after a clean stop"
    fi
    if [ $qemu_too = 1 ] &&
       ! qemu-img compare -q -f qed -F raw "$img" "$dir/durable.raw"; then
        fail "qemu-img compare: QEMU reads the image differently"
    fi
}

# restart_and_verify DIR CLUSTER TABLE: steps 1 and 2.
restart_and_verify ()
{
    start_server "$1"
    ask_driver verify "$uri"
    stop_server
    check_image "$1" "$2" "$3"
}

# work_and_kill DIR POWERCUT: steps 3 and 4.
work_and_kill ()
{
    local dir=$1 cut=$2 left delay mode
    left=$(( deadline - SECONDS ))
    (( left > 1 )) || left=1
    delay=$(( RANDOM % 2300 + 200 ))        # ms
    (( delay < left * 1000 )) || delay=$(( left * 1000 ))
    rm -f "$dir/journal"
    start_server "$dir" "$cut"
    # Time the kill from when the writers are connected.
    ask_driver work "$uri" $(( seed + kills )) $(( delay / 1000 + 30 ))
    [ "$answer" = ready ] || fail "the writers did not start: $answer"
    sleep "$(( delay / 1000 )).$(printf %03d $(( delay % 1000 )))"
    kill_server
    ask_driver_more
    kills=$(( kills + 1 ))
    if (( $(header_field "$dir/disk.qed" 16 8) & 2 )); then
        dirty=$(( dirty + 1 ))
    fi
    if [ "$cut" = 1 ]; then
        # Mostly each page back to its own moment, sometimes all lost.
        mode=pages
        [ $(( RANDOM % 4 )) != 0 ] || mode=drop
        ask_driver crash "$dir/disk.qed" "$dir/journal" $mode \
            $(( seed + kills ))
        echo "crash $mode: ${answer#ok }" >> "$dir/driver.log"
        powercuts=$(( powercuts + 1 ))
    fi
}

# run_config CLUSTER TABLE BACKING: a new image, then rounds until
# SOAK_ROUNDS kills or the deadline, and a last check.  (dirty counts
# the kills that left NEED_CHECK set.)
run_config ()
{
    local cs=$1 ts=$2 backing=$3 round=0 cut=0 b=0 k0=$kills dirty=0
    configs=$(( configs + 1 ))
    [ "$backing" = none ] || b=1
    mkdir -p "$dir"
    make_image "$dir" "$cs" "$ts" "$backing"
    start_driver "$dir" "$cs" $b
    while :; do
        restart_and_verify "$dir" "$cs" "$ts"
        (( round < rounds && SECONDS < deadline )) || break
        # Two rounds in three a power cut, when the journal is built,
        # from the first, which allocates the most.
        cut=0
        [ -z "$powerloss" ] || [ $(( round % 3 )) = 2 ] || cut=1
        work_and_kill "$dir" $cut
        round=$(( round + 1 ))
    done
    stop_driver
    echo "soak: $config: $(( kills - k0 )) kills ($dirty left NEED_CHECK)," \
         "$(du -sh "$dir/disk.qed" | cut -f1) image"
    [ "${SOAK_KEEP:-}" = 1 ] || rm -rf "$dir"
}

# At the end of run_isolated's subshell: stop what it started, count an
# unexpected error as a failure, hand the counters back.
config_exit ()
{
    local status=$?
    set +e
    [ -z "$driver_pid" ] || kill -9 "$driver_pid" 2>/dev/null
    [ -z "$server_pid" ] || kill -9 "$server_pid" 2>/dev/null
    wait 2>/dev/null
    # (130: interrupted, not failed.)
    if [ $status != 0 ] && [ $status != 130 ] && [ -z "$failed" ]; then
        failures=$(( failures + 1 ))
        echo "soak: FAIL: $config: ${error:-exit status $status}"
    fi
    echo "$configs $kills $powercuts $ops $verified $failures" \
         > "$work/counters"
    exit $status
}

# run_isolated CLUSTER TABLE BACKING: run_config in a subshell, where
# set -e holds in every function (it would not under "||").
run_isolated ()
{
    local status=0
    config="cluster $1 table $2 backing $3"
    dir=$work/$configs-$1-$2-$3
    echo "$configs $kills $powercuts $ops $verified $failures" \
         > "$work/counters"
    # In the background, so that a signal to the script interrupts the
    # wait and on_exit stops it.
    (
        set -e -E
        failed='' error='' server_pid='' driver_pid=''
        trap 'exit 130' INT TERM
        trap config_exit EXIT
        trap '[ -n "$error" ] || error="$BASH_COMMAND: exit status $?"' ERR
        run_config "$@"
    ) &
    config_pid=$!
    wait "$config_pid" || status=$?
    config_pid=
    read -r configs kills powercuts ops verified failures < "$work/counters"
    [ $status != 130 ] || exit 130
}

#----------------------------------------------------------------------

echo "soak: $duration s with $plugin, seed $seed"
RANDOM=$seed
read -r -a cluster_sizes <<< "${SOAK_CLUSTERS:-4096 65536 2097152}"
read -r -a table_sizes <<< "${SOAK_TABLES:-1 4 16}"
read -r -a backings <<< "${SOAK_BACKINGS:-none raw qed}"
while (( SECONDS < deadline )); do
    # Every configuration once, in a random order.
    list=()
    for cs in "${cluster_sizes[@]}"; do
        for ts in "${table_sizes[@]}"; do
            for backing in "${backings[@]}"; do
                list+=("$cs $ts $backing")
            done
        done
    done
    for (( i = ${#list[@]} - 1; i > 0; i-- )); do
        j=$(( RANDOM % (i + 1) ))
        tmp=${list[i]} list[i]=${list[j]} list[j]=$tmp
    done
    for c in "${list[@]}"; do
        (( SECONDS < deadline )) || break
        # shellcheck disable=SC2086 # three words
        run_isolated $c
    done
done
summary
[ "$failures" = 0 ]
