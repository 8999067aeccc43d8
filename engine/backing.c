/* nbdkit-qed: backing files.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * A backing file is opened read-only and never written.  It is raw or
 * QED; a QED backing file may have its own, up to QED_MAX_CHAIN deep.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

#define QED_MAX_CHAIN 16

struct backing {
  char *path;
  struct qed_image *qed;        /* a QED image, or */
  struct qed_file *raw;         /* a raw file */
  uint64_t size;
};

/* Magic numbers of formats QEMU could put below a QED image, so that
 * such a backing file is refused with its name instead of being served
 * as raw bytes.
 */
static const struct {
  const char *name;
  unsigned offset;
  const char *magic;
  unsigned len;
} other_formats[] = {
  { "qcow2 (or qcow)", 0, "QFI\xfb", 4 },
  { "vmdk", 0, "KDMV", 4 },
  { "vmdk", 0, "COWD", 4 },
  { "vmdk", 0, "# Disk DescriptorFile", 21 },
  { "vdi", 64, "\x7f\x10\xda\xbe", 4 },
  { "vhdx", 0, "vhdxfile", 8 },
  { "vpc (vhd)", 0, "conectix", 8 },
  { "luks", 0, "LUKS\xba\xbe", 6 },
  { "parallels", 0, "WithoutFreeSpace", 16 },
  { "parallels", 0, "WithouFreSpacExt", 16 },
  { "bochs", 0, "Bochs Virtual HD Image", 22 },
  { "cloop", 0, "#!/bin/sh\n#V2.0 Format", 22 },
};

enum format { FORMAT_RAW, FORMAT_QED };

static int
probe_format (struct qed_file *file, const char *path, enum format *fmt)
{
  unsigned char buf[512];
  uint64_t size;
  size_t n;
  int r;

  r = file->ops->get_size (file, &size);
  if (r < 0)
    return r;
  n = size < sizeof buf ? size : sizeof buf;
  r = file->ops->pread (file, buf, n, 0);
  if (r < 0) {
    qed_error ("%s: reading the backing file: %s", path, strerror (-r));
    return r;
  }
  if (n >= 4 && memcmp (buf, "QED", 4) == 0) {
    *fmt = FORMAT_QED;
    return 0;
  }
  for (size_t i = 0; i < sizeof other_formats / sizeof other_formats[0]; i++)
    if (n >= other_formats[i].offset + other_formats[i].len &&
        memcmp (buf + other_formats[i].offset, other_formats[i].magic,
                other_formats[i].len) == 0) {
      qed_error ("%s: the backing file is in %s format; only raw and QED"
                 " backing files are supported", path, other_formats[i].name);
      return -ENOTSUP;
    }
  *fmt = FORMAT_RAW;
  return 0;
}

int
backing_open (struct qed_image *img, const struct qed_open_options *opts,
              unsigned depth, const uint64_t *chain_ids, size_t nids)
{
  const char *name = opts->backing ? opts->backing : img->backing_name;
  const char *format = opts->backing_format;
  const struct qed_opener *opener = opts->opener ? opts->opener
    : &qed_posix_opener;
  struct backing *b;
  enum format fmt;
  uint64_t id[2];
  int r;

  if (depth + 1 >= QED_MAX_CHAIN) {
    qed_error ("%s: the backing chain is too deep (more than %d images)",
               image_name (img), QED_MAX_CHAIN);
    return -ELOOP;
  }
  b = calloc (1, sizeof *b);
  if (b == NULL)
    return -ENOMEM;
  img->backing = b;
  if ((r = opener->resolve (opener, name, img->path, &b->path)) < 0)
    return r;

  r = opener->open (opener, b->path, 0, &b->raw);
  if (r < 0) {
    qed_error ("%s: cannot open backing file %s: %s", image_name (img),
               b->path, strerror (-r));
    return r;
  }
  if (b->raw->ops->identity && b->raw->ops->identity (b->raw, id) == 0)
    for (size_t i = 0; i < nids; i++)
      if (chain_ids[2 * i] == id[0] && chain_ids[2 * i + 1] == id[1]) {
        qed_error ("%s: backing file loop: %s is already in the chain"
                   " (an image cannot be its own ancestor)",
                   image_name (img), b->path);
        return -ELOOP;
      }

  if (format) {
    if (strcmp (format, "raw") != 0 && strcmp (format, "qed") != 0) {
      qed_error ("%s: backing format %s is not supported (raw or qed)",
                 image_name (img), format);
      return -ENOTSUP;
    }
    fmt = strcmp (format, "qed") == 0 ? FORMAT_QED : FORMAT_RAW;
  }
  else if (img->header.features & QED_F_BACKING_FORMAT_NO_PROBE)
    fmt = FORMAT_RAW;
  else if ((r = probe_format (b->raw, b->path, &fmt)) < 0)
    return r;

  if (fmt == FORMAT_QED) {
    struct qed_open_options bopts = {
      .access = QED_READ_ONLY,
      .opener = opts->opener,
      .l2_cache_size = img->cache.max * sizeof (struct l2_slice) / 8,
      .no_locking = opts->no_locking,
    };
    struct qed_file *file = b->raw;

    b->raw = NULL;
    r = image_open (file, b->path, &bopts, depth + 1, chain_ids, nids,
                    &b->qed);
    if (r < 0)
      return r;
    b->size = qed_image_size (b->qed);
    return 0;
  }

  if (!opts->no_locking && (r = file_lock (b->raw, QED_LOCK_SHARED)) < 0)
    return r;
  return b->raw->ops->get_size (b->raw, &b->size);
}

void
backing_close (struct backing *b)
{
  if (b == NULL)
    return;
  if (b->qed)
    qed_image_close (b->qed);
  if (b->raw)
    b->raw->ops->close (b->raw);
  free (b->path);
  free (b);
}

/* Bytes of [offset, offset + count) that the backing file has. */
static uint64_t
inside (const struct backing *b, uint64_t count, uint64_t offset)
{
  if (offset >= b->size)
    return 0;
  return count < b->size - offset ? count : b->size - offset;
}

int
backing_read (struct backing *b, void *buf, uint64_t count, uint64_t offset)
{
  uint64_t n = inside (b, count, offset);
  int r = 0;

  if (n > 0) {
    if (b->qed)
      r = qed_image_read (b->qed, buf, n, offset);
    else if ((r = b->raw->ops->pread (b->raw, buf, n, offset)) < 0)
      qed_error ("%s: reading %" PRIu64 " bytes at %" PRIu64 ": %s",
                 b->path, n, offset, strerror (-r));
  }
  if (r == 0)
    memset ((char *) buf + n, 0, count - n);
  return r;
}

/* Where the map of a backing file ends.  QEMU counts a raw file's
 * size in whole 512-byte sectors: the bytes from its end to the end of
 * that sector read as zeros, but the map shows them as the raw file's
 * (present, at its offsets), and only what lies beyond as the end of
 * the chain.
 */
static uint64_t
map_end (const struct backing *b)
{
  if (b->qed || b->size % 512 == 0)
    return b->size;
  return b->size + (512 - b->size % 512);
}

/* The length of the run from offset (at most count, which stays
 * inside the file) that is all hole or all data, by the file's extent
 * capability; a file that cannot say, or fails to, has data.
 */
static uint64_t
raw_run (const struct backing *b, uint64_t count, uint64_t offset,
         bool *hole)
{
  struct qed_file *f = b->raw;
  uint64_t length;
  int r;

  *hole = false;
  if (f->ops->extent == NULL)
    return count;
  r = f->ops->extent (f, offset, count, &length, hole);
  if (r < 0) {
    qed_debug ("%s: cannot find holes at %" PRIu64 ": %s; taken as data",
               b->path, offset, strerror (-r));
    *hole = false;
    return count;
  }
  /* A length out of bounds breaks the contract: take the rest alike. */
  return length >= 1 && length <= count ? length : count;
}

/* Every byte of a raw file is present at its own offset: data, or a
 * hole (which reads as zeros), as is its tail after the end.
 */
static int
raw_extents (const struct backing *b, unsigned depth, uint64_t count,
             uint64_t offset, chain_extent_fn fn, void *opaque)
{
  while (count > 0) {
    struct chain_extent e = {
      .map = {
        .offset = offset, .depth = depth, .present = true,
        .has_host = true, .host = offset, .file = b->path,
      },
    };
    bool hole = true;
    uint64_t n = count;
    int r;

    if (offset < b->size)
      n = raw_run (b, inside (b, count, offset), offset, &hole);
    e.map.length = n;
    e.map.zero = hole;
    e.map.data = !hole;
    if ((r = fn (opaque, &e)) != 0)
      return r;
    offset += n;
    count -= n;
  }
  return 0;
}

int
backing_extents (struct qed_image *img, unsigned depth, uint64_t count,
                 uint64_t offset, chain_extent_fn fn, void *opaque)
{
  const struct backing *b = img->backing;
  uint64_t end = map_end (b);
  uint64_t n = offset >= end ? 0 : count < end - offset ? count : end - offset;
  int r = 0;

  if (n > 0 && b->qed) {
    PASS_GATE_FOR_CURRENT_SCOPE (b->qed);
    r = image_extents (b->qed, depth + 1, n, offset, fn, opaque);
  }
  else if (n > 0)
    r = raw_extents (b, depth + 1, n, offset, fn, opaque);
  if (r == 0 && n < count) {
    /* Past the end of the backing file: zeros that no file holds. */
    struct chain_extent e = {
      .map = {
        .offset = offset + n, .length = count - n, .depth = depth,
        .zero = true, .file = img->path,
      },
    };
    r = fn (opaque, &e);
  }
  return r;
}
