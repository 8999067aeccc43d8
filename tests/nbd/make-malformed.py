#!/usr/bin/python3
# nbdkit-qed tests: write a corpus of malformed QED images.
# SPDX-License-Identifier: LGPL-2.1-or-later
#
#   make-malformed.py OUTDIR
#
# Writes OUTDIR/NAME.qed for every case and OUTDIR/cases.json, a list
# of the cases with the outcome each must have when served by nbdkit:
#
#   {"name": N, "expect": "refuse", "text": T, "allow_backing": B}
#       nbdkit exits non-zero at start, with a message containing T
#       (which names the field that is wrong);
#   {"name": N, "expect": "eio", "eio": [[OFF, LEN], ...], ...}
#       served; reading each range fails with EIO, and everything
#       else reads as "data" says;
#   {"name": N, "expect": "ok", ...}
#       served; everything reads as "data" says;
#   {"name": N, "expect": "shared", "check": "corruptions 1", ...}
#       served and reads as "data" says, and the engine's check
#       reports the corruption;
#   {"name": N, "expect": "past-end", "eio": [[OFF, LEN], ...], ...}
#       entries point past the end of the file: served read-only,
#       reading each range fails with EIO; served writable, too, until
#       the first write that grows the file, which clears them first
#       (the file would grow over where they point), so the ranges
#       then read as zeros and the image is clean afterwards.
#
# "size" is the virtual size and "data" lists [OFF, LEN, BYTE]: those
# ranges read as BYTE repeated, all others as zeros.  "write" asks the
# test to write through the served image too; "grow" lists writes
# [OFF, LEN, BYTE] to make first, before anything is read.
#
# Every image but the ones about backing files is served with
# allow-backing=false, so the plugin never opens another file.

import json
import os
import struct
import sys

C = 4096                        # cluster size of the base image
MiB = 1 << 20
MAGIC = 0x00444551

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
cases = []


class Image:
    """A QED image as bytes, with helpers to lay out tables and data.

    The base image: 4 KiB clusters, table_size 1 (an L2 table maps
    2 MiB), 8 MiB virtual (L1 entries 0-3):
      cluster 0  header
      cluster 1  L1 table
      cluster 2  L2 table of L1 entry 0
      cluster 3  data of virtual cluster 0       (0x11)
      cluster 4  data of virtual cluster 5       (0x22)
      cluster 5  L2 table of L1 entry 2
      cluster 6  data of virtual 4 MiB + 3 clusters (0x33)
    """

    def __init__(self, base=True, **hdr):
        self.h = dict(magic=MAGIC, cluster_size=C, table_size=1,
                      header_size=1, features=0, compat_features=0,
                      autoclear_features=0, l1_table_offset=C,
                      image_size=8 * MiB, backing_filename_offset=0,
                      backing_filename_size=0)
        self.h.update(hdr)
        self.buf = bytearray(2 * C)
        self.data = []
        if base:
            self.l1(0, 2 * C)
            self.data_cluster(2 * C, 0, 3 * C, 0x11)
            self.data_cluster(2 * C, 5, 4 * C, 0x22)
            self.l1(2, 5 * C)
            self.data_cluster(5 * C, 3, 6 * C, 0x33, vbase=4 * MiB)

    def grow(self, size):
        if len(self.buf) < size:
            self.buf.extend(bytes(size - len(self.buf)))

    def u64(self, off, value):
        self.grow(off + 8)
        struct.pack_into("<Q", self.buf, off, value)

    def l1(self, index, host, grow=True):
        self.u64(self.h["l1_table_offset"] + 8 * index, host)
        if grow:
            self.grow(host + self.h["table_size"] * self.h["cluster_size"])

    def l2(self, table, index, entry):
        self.u64(table + 8 * index, entry)

    def data_cluster(self, table, index, host, byte, vbase=0):
        cs = self.h["cluster_size"]
        self.l2(table, index, host)
        self.grow(host + cs)
        self.buf[host:host + cs] = bytes([byte]) * cs
        self.data.append([vbase + index * cs, cs, byte])

    def bytes(self):
        h = self.h
        hdr = struct.pack("<IIIIQQQQQII", h["magic"], h["cluster_size"],
                          h["table_size"], h["header_size"], h["features"],
                          h["compat_features"], h["autoclear_features"],
                          h["l1_table_offset"], h["image_size"],
                          h["backing_filename_offset"],
                          h["backing_filename_size"])
        b = bytearray(self.buf)
        b[0:64] = hdr
        return bytes(b)


def save(name, data):
    with open(os.path.join(out, name + ".qed"), "wb") as f:
        f.write(data)


def refuse(name, text, img=None, data=None, allow_backing=False):
    save(name, data if data is not None else img.bytes())
    cases.append(dict(name=name, expect="refuse", text=text,
                      allow_backing=allow_backing))


def served(name, expect, img, data=None, **extra):
    save(name, data if data is not None else img.bytes())
    c = dict(name=name, expect=expect, size=img.h["image_size"],
             data=img.data, allow_backing=False)
    c.update(extra)
    cases.append(c)


# ---------------------------------------------------------------------
# Refused at start: the header.

refuse("bad-magic", "magic", Image(magic=0x00444552))
refuse("cluster-size-not-power-of-2", "cluster_size",
       Image(cluster_size=3 * C))
refuse("cluster-size-too-small", "cluster_size", Image(cluster_size=2048))
refuse("cluster-size-too-large", "cluster_size",
       Image(base=False, cluster_size=128 * MiB))
refuse("cluster-size-zero", "cluster_size", Image(cluster_size=0))
refuse("table-size-0", "table_size", Image(table_size=0))
refuse("table-size-3", "table_size", Image(table_size=3))
refuse("table-size-32", "table_size", Image(table_size=32))
refuse("header-size-0", "header_size", Image(header_size=0))
# header_size * cluster_size = 2^32: does not fit in 32 bits.
refuse("header-size-overflow", "header_size",
       Image(header_size=(1 << 32) // C))
refuse("header-size-max", "header_size", Image(header_size=0xffffffff))
refuse("unknown-feature", "features", Image(features=0x8))
refuse("unknown-feature-high", "features",
       Image(features=(1 << 63) | 0x2))
refuse("image-size-not-multiple-of-512", "image_size",
       Image(image_size=8 * MiB + 100))
# 4 KiB clusters, table_size 1: 512 * 512 * 4 KiB = 1 GiB at most.
refuse("image-size-above-maximum", "image_size",
       Image(image_size=(1 << 30) + 512))
refuse("image-size-huge", "image_size",
       Image(image_size=0xfffffffffffffe00))
refuse("l1-misaligned", "l1_table_offset",
       Image(base=False, l1_table_offset=C + 512))
refuse("l1-beyond-file", "l1_table_offset",
       Image(base=False, l1_table_offset=1024 * C))
refuse("l1-overlaps-header", "l1_table_offset",
       Image(base=False, l1_table_offset=0))
refuse("l1-inside-header-area", "l1_table_offset",
       Image(base=False, header_size=2, l1_table_offset=C))
# table_size 4: the 16 KiB L1 table at 4 KiB runs past the 12 KiB file.
img = Image(base=False, table_size=4)
refuse("l1-runs-past-end", "l1_table_offset", img,
       data=img.bytes()[:3 * C])
refuse("l1-offset-huge", "l1_table_offset",
       Image(base=False, l1_table_offset=0xfffffffffffff000))

# Files too short to hold a header.
refuse("empty-file", "too short", data=b"")
refuse("too-short", "too short", data=Image().bytes()[:40])
# A header and nothing else: the L1 table is not in the file.
refuse("header-only", "l1_table_offset", data=Image(base=False).bytes()[:64])

# Backing file names.
img = Image(features=0x1, backing_filename_offset=C - 100,
            backing_filename_size=200)
refuse("backing-name-outside-header", "backing_filename_offset", img,
       allow_backing=True)
img = Image(features=0x1, backing_filename_offset=16,
            backing_filename_size=8)
refuse("backing-name-over-header-fields", "backing_filename_offset", img,
       allow_backing=True)
img = Image(features=0x1, backing_filename_offset=0xfffffff0,
            backing_filename_size=0x20)
refuse("backing-name-offset-overflow", "backing_filename_offset", img,
       allow_backing=True)
img = Image(features=0x1, backing_filename_offset=64,
            backing_filename_size=0)
refuse("backing-name-empty", "backing_filename_size", img,
       allow_backing=True)
img = Image(features=0x1, header_size=2, l1_table_offset=2 * C,
            base=False, backing_filename_offset=64,
            backing_filename_size=5000)
img.grow(3 * C)
img.buf[64:5064] = b"a" * 5000
refuse("backing-name-too-long", "backing_filename_size", img,
       allow_backing=True)
img = Image(features=0x1, backing_filename_offset=64,
            backing_filename_size=9)
img.buf[64:73] = b"base\0.raw"
refuse("backing-name-nul", "NUL byte", img, allow_backing=True)
# The image is its own backing file, directly and through another.
img = Image(features=0x1, backing_filename_offset=64,
            backing_filename_size=len(b"backing-self.qed"))
img.buf[64:64 + 16] = b"backing-self.qed"
refuse("backing-self", "backing file loop", img, allow_backing=True)
img = Image(features=0x1, backing_filename_offset=64,
            backing_filename_size=len(b"backing-loop-b.qed"))
img.buf[64:64 + 18] = b"backing-loop-b.qed"
refuse("backing-loop-a", "backing file loop", img, allow_backing=True)
img = Image(features=0x1, backing_filename_offset=64,
            backing_filename_size=len(b"backing-loop-a.qed"))
img.buf[64:64 + 18] = b"backing-loop-a.qed"
save("backing-loop-b", img.bytes())
# A valid backing name, refused only because allow-backing=false.
img = Image(features=0x1, backing_filename_offset=64,
            backing_filename_size=len(b"base.raw"))
img.buf[64:72] = b"base.raw"
refuse("backing-not-allowed", "backing files are disabled", img)

# ---------------------------------------------------------------------
# Served; the bad entries fail with EIO, and only them (those pointing
# past the end of the file until the first write that grows the file
# clears them).

VC1 = [C, C]                    # virtual cluster 1 (L1 entry 0)

img = Image()
img.l2(2 * C, 1, 100 * C)
served("l2-entry-beyond-file", "past-end", img, eio=[VC1])

img = Image()
img.l2(2 * C, 1, 7 * C)         # the cluster right at the end of the file
served("l2-entry-at-end-of-file", "past-end", img, eio=[VC1])

# Beyond the end of the file at open, where the file grows to later:
# writes elsewhere first allocate clusters up to and past it (an L2
# table at 7, data at 8, an L2 table at 9, data at 10), and only then
# is the entry's slice loaded.  It must still fail with EIO, not read
# (or overwrite) the cluster allocated to another virtual cluster.
img = Image()
img.l2(2 * C, 1, 10 * C)
served("l2-entry-beyond-file-grown-into", "past-end", img, eio=[VC1],
       grow=[[2 * MiB + 5 * C, C, 0xa1], [6 * MiB, C, 0xa2]])

img = Image()
img.l2(2 * C, 1, 3 * C + 512)
served("l2-entry-misaligned", "eio", img, eio=[VC1])

img = Image()
img.l2(2 * C, 1, C)
served("l2-entry-at-l1-table", "eio", img, eio=[VC1])

img = Image()
img.l2(2 * C, 1, 2 * C)
served("l2-entry-at-own-table", "eio", img, eio=[VC1])

img = Image()
img.l2(2 * C, 1, 5 * C)
served("l2-entry-at-other-table", "eio", img, eio=[VC1])

img = Image()
img.l2(2 * C, 1, 0xfffffffffffff000)
served("l2-entry-huge", "past-end", img, eio=[VC1])

# The header area is 2 clusters: an entry pointing into it.
img = Image(base=False, header_size=2, l1_table_offset=2 * C)
img.l1(0, 3 * C)
img.data_cluster(3 * C, 0, 4 * C, 0x44)
img.l2(3 * C, 1, C)
served("l2-entry-in-header-area", "eio", img, eio=[VC1])

# The last cluster of the file is only partly there.
img = Image()
img.l2(2 * C, 1, 7 * C)
served("l2-entry-at-partial-cluster", "past-end", img, eio=[VC1],
       data=img.bytes() + b"\x55" * 1000)

img = Image()
img.l1(1, 100 * C, grow=False)
served("l1-entry-beyond-file", "past-end", img, eio=[[2 * MiB, 2 * MiB]])

img = Image()
img.l1(1, 3 * C + 8)
served("l1-entry-misaligned", "eio", img, eio=[[2 * MiB, 2 * MiB]])

img = Image()
img.l1(1, C)
served("l1-entry-at-l1-table", "eio", img, eio=[[2 * MiB, 2 * MiB]])

img = Image()
img.l1(3, 0xfffffffffffff000, grow=False)
served("l1-entry-huge", "past-end", img, eio=[[6 * MiB, 2 * MiB]])

# ---------------------------------------------------------------------
# Served and read correctly.

# Two entries share a cluster: both read its data, and the check
# reports one corruption (QEMU's count too).
img = Image()
img.l2(2 * C, 1, 3 * C)
img.data.append([C, C, 0x11])
served("shared-cluster", "shared", img, check="corruptions 1")

# The file size is not a multiple of the cluster size: QEMU rounds it
# down, and so do we; new clusters go at the rounded-down end.
img = Image()
served("partial-last-cluster", "ok", img, data=img.bytes() + b"\x99" * 1000,
       write=True)

# Unknown compat and autoclear bits are fine.
served("unknown-compat-autoclear", "ok",
       Image(compat_features=0xff, autoclear_features=1 << 40), write=True)

# NEED_CHECK on a consistent image: served (and repaired when written).
served("need-check", "ok", Image(features=0x2), write=True)

# The largest virtual size for the geometry, with data at the very end.
img = Image(image_size=1 << 30)
img.l1(511, 7 * C)
img.data_cluster(7 * C, 511, 8 * C, 0x77, vbase=511 * 2 * MiB)
served("max-image-size", "ok", img)

with open(os.path.join(out, "cases.json"), "w") as f:
    json.dump(cases, f, indent=1)
print(len(cases), "cases in", out)
