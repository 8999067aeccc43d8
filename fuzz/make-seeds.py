#!/usr/bin/python3
# nbdkit-qed: write the fuzzers' seed corpora.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
#   fuzz/make-seeds.py [FUZZDIR]
#
# Writes FUZZDIR/corpus/open/*.qed (small QED images: made by qemu-img
# and qemu-io when they are installed, and built byte by byte here)
# and FUZZDIR/corpus/ops/* (request sequences for fuzz-ops, from a
# fixed seed).  The committed corpus was made by this script; run it
# again only to change the corpus.

import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile

fuzzdir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(
    os.path.abspath(__file__))
open_dir = os.path.join(fuzzdir, "corpus", "open")
ops_dir = os.path.join(fuzzdir, "corpus", "ops")
os.makedirs(open_dir, exist_ok=True)
os.makedirs(ops_dir, exist_ok=True)


def header(cluster=4096, table=1, header_size=1, features=0, compat=0,
           autoclear=0, l1=None, size=1 << 20, bname=b"", boff=64):
    if l1 is None:
        l1 = cluster * header_size
    h = struct.pack("<IIIIQQQQQII", 0x00444551, cluster, table, header_size,
                    features, compat, autoclear, l1, size,
                    boff if bname else 0, len(bname))
    return h


def image(cluster=4096, table=1, size=1 << 20, l2s=None, data=None,
          features=0, nclusters=None, bname=b"", header_size=1, **kw):
    """l2s: {l1_index: (l2 host cluster, {l2_index: entry})};
    data: {host cluster: byte}."""
    ts = cluster * table
    l1_off = cluster * header_size
    end = l1_off + ts
    for host, _ in (l2s or {}).values():
        end = max(end, host * cluster + ts)
    for c in (data or {}):
        end = max(end, (c + 1) * cluster)
    if nclusters is not None:
        end = nclusters * cluster
    buf = bytearray(end)
    h = header(cluster, table, header_size, features, l1=l1_off, size=size,
               bname=bname, **kw)
    buf[0:64] = h
    if bname:
        buf[64:64 + len(bname)] = bname
    for i, (host, entries) in (l2s or {}).items():
        struct.pack_into("<Q", buf, l1_off + 8 * i, host * cluster)
        for j, e in entries.items():
            struct.pack_into("<Q", buf, host * cluster + 8 * j, e)
    for c, b in (data or {}).items():
        buf[c * cluster:(c + 1) * cluster] = bytes([b]) * cluster
    return bytes(buf)


def write(name, data):
    with open(os.path.join(open_dir, name), "wb") as f:
        f.write(data)


C = 4096
# Valid images, built here.
write("empty-4k-t1.qed", image())
write("data-4k-t1.qed", image(size=1 << 30, l2s={
    0: (2, {0: 3 * C, 1: 4 * C, 2: 1, 511: 5 * C}),
    511: (6, {511: 7 * C})}, data={3: 0x61, 4: 0x62, 5: 0x63, 7: 0x64}))
write("dirty-4k-t2.qed", image(table=2, size=8 << 20, features=0x2, l2s={
    0: (3, {0: 5 * C, 1000: 6 * C})}, data={5: 0x71, 6: 0x72}))
write("backing-name.qed", image(features=0x1, bname=b"base.raw"))
write("backing-raw-hdr2.qed", image(features=0x5, header_size=2,
                                    bname=b"../some/base.img", boff=4096))
write("autoclear.qed", image(autoclear=0xff00, compat=0x3))
write("tail-partial.qed", image(l2s={0: (2, {0: 3 * C})},
                                data={3: 0x55}) + b"x" * 1000)
# Corrupt ones: a cluster shared by two entries, entries past the end,
# misaligned, into the L1 table; an L1 entry pointing at the L1 table.
write("shared.qed", image(size=4 << 20, l2s={
    0: (2, {0: 3 * C, 1: 3 * C, 5: 40 * C, 6: 3 * C + 512, 7: 1 * C}),
    1: (2, {})}, data={3: 0x42}))
write("l1-self.qed", image(size=4 << 20, l2s={0: (1, {})}))
write("max-size-4k-t4.qed", image(table=4, size=2048 * 2048 * C, l2s={
    2047: (5, {2047: 9 * C})}, data={9: 0x77}))

# Made by QEMU.
if shutil.which("qemu-img") and shutil.which("qemu-io"):
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "base.raw"), "wb") as f:
            f.truncate(1 << 20)
        def qemu(name, size, opts, *cmds):
            path = os.path.join(tmp, name)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qed", "-o",
                            opts, path, size], check=True)
            for c in cmds:
                subprocess.run(["qemu-io", "-f", "qed", "-c", c, path],
                               check=False, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
            with open(path, "rb") as f:
                write(name, f.read())
        qemu("qemu-empty.qed", "1M", "cluster_size=4k,table_size=1")
        qemu("qemu-data.qed", "4M", "cluster_size=4k,table_size=2",
             "write -P 0x61 0 5k", "write -P 0x62 3M 4k", "write -z 8k 4k")
        qemu("qemu-backing.qed", "1M",
             "cluster_size=4k,table_size=1,backing_file=base.raw,"
             "backing_fmt=raw")

# Request sequences: every geometry byte with and without pre-written
# data, followed by random steps.
rng = random.Random(20240501)
for g in range(0, 256, 9):
    body = bytes(rng.randrange(256) for _ in range(rng.randrange(40, 400)))
    with open(os.path.join(ops_dir, "seq-%03d" % g), "wb") as f:
        f.write(bytes([g]) + body)
