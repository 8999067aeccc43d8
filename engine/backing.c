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

#include "cleanup.h"
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

const char *
other_format (const unsigned char *buf, size_t n)
{
  for (size_t i = 0; i < sizeof other_formats / sizeof other_formats[0]; i++)
    if (n >= other_formats[i].offset + other_formats[i].len &&
        memcmp (buf + other_formats[i].offset, other_formats[i].magic,
                other_formats[i].len) == 0)
      return other_formats[i].name;
  return NULL;
}

int
qed_probe_file (struct qed_file *file, const char *name, bool *is_qed)
{
  unsigned char buf[OTHER_FORMAT_PROBE_BYTES];
  const char *format;
  uint64_t size;
  size_t n;
  int r;

  r = file->ops->get_size (file, &size);
  if (r < 0) {
    qed_error ("%s: %s", name, strerror (-r));
    return r;
  }
  n = size < sizeof buf ? size : sizeof buf;
  r = file->ops->pread (file, buf, n, 0);
  if (r < 0) {
    qed_error ("%s: reading the first bytes: %s", name, strerror (-r));
    return r;
  }
  *is_qed = n >= 4 && memcmp (buf, "QED", 4) == 0;
  if ((format = other_format (buf, n)) != NULL) {
    qed_error ("%s: the file is in %s format; only raw and QED files are"
               " supported", name, format);
    return -ENOTSUP;
  }
  return 0;
}

/* Open name, which img's header (or its opener) names, as a backing
 * file in format ("raw", "qed" or NULL: probed), into *bp, which is set at once so that the caller's
 * backing_close cleans up after a failure too.
 */
static int
open_backing (struct qed_image *img, const char *name, const char *format,
              unsigned depth, const uint64_t *chain_ids, size_t nids,
              struct backing **bp)
{
  const struct qed_opener *opener = img->opener;
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
  *bp = b;
  if ((r = opener->resolve (opener, name, img->path, &b->path)) < 0)
    return r;

  r = opener->open (opener, b->path, img->direct ? QED_OPEN_DIRECT : 0,
                    &b->raw);
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
    if (fmt == FORMAT_QED) {
      bool is_qed;

      /* Said to be QED: if it is not, say it is this backing file that
       * is not (the header's own message names only the file).
       */
      if ((r = qed_probe_file (b->raw, b->path, &is_qed)) < 0)
        return r;
      if (!is_qed) {
        qed_error ("%s: the backing file %s is not a QED image (its format"
                   " was given as qed)", image_name (img), b->path);
        return -EINVAL;
      }
    }
  }
  else {
    bool is_qed;

    if ((r = qed_probe_file (b->raw, b->path, &is_qed)) < 0) {
      qed_error ("%s: cannot use backing file %s", image_name (img), b->path);
      return r;
    }
    fmt = is_qed ? FORMAT_QED : FORMAT_RAW;
  }

  if (fmt == FORMAT_QED) {
    struct qed_open_options bopts = {
      .access = QED_READ_ONLY,
      .opener = img->opener,
      .l2_cache_size = img->cache.max * sizeof (struct l2_slice) / 8,
      .no_locking = img->no_locking,
      .direct = img->direct,
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

  if (!img->no_locking && (r = file_lock (b->raw, QED_LOCK_SHARED)) < 0)
    return r;
  return b->raw->ops->get_size (b->raw, &b->size);
}

int
backing_open (struct qed_image *img, const struct qed_open_options *opts,
              unsigned depth, const uint64_t *chain_ids, size_t nids)
{
  const char *format = opts->backing_format;

  if (format == NULL && (img->header.features & QED_F_BACKING_FORMAT_NO_PROBE))
    format = "raw";
  return open_backing (img, opts->backing ? opts->backing : img->backing_name,
                       format, depth, chain_ids, nids, &img->backing);
}

/* Write the header naming a backing file of len bytes that lies at
 * name_offset in the file.
 */
static int
write_backing_header (struct qed_image *img, uint64_t features,
                      uint32_t name_offset, uint32_t len)
{
  struct qed_header old = img->header;
  int r;

  img->header.features = features;
  img->header.backing_filename_offset = name_offset;
  img->header.backing_filename_size = len;
  if ((r = header_write (img)) < 0 ||
      (r = img->file->ops->flush (img->file)) < 0) {
    img->header = old;
    return r;
  }
  return 0;
}

static int
write_durably (struct qed_image *img, const void *buf, size_t len,
               uint64_t offset)
{
  int r = img->file->ops->pwrite (img->file, buf, len, offset);

  if (r == 0)
    r = img->file->ops->flush (img->file);
  if (r < 0)
    qed_error ("%s: writing the backing file name: %s", image_name (img),
               strerror (-r));
  return r;
}

/* The new name ends up right after the header structure, as QEMU puts
 * it, with the rest of the header clusters as they were.  Each header
 * written names bytes already durable; where the new name overlaps the
 * old, it goes first to a free place in the header clusters and the
 * header points there while the final place is overwritten (with no
 * room for that, the old name is overwritten in place, as QEMU does).
 */
static int
rewrite_backing_name (struct qed_image *img, const char *name, bool raw)
{
  const uint32_t final = QED_HEADER_STRUCT_SIZE;
  uint64_t features = img->header.features
    & ~(uint64_t) (QED_F_BACKING_FILE | QED_F_BACKING_FORMAT_NO_PROBE);
  uint32_t len = name ? strlen (name) : 0;
  uint32_t old_start = img->header.backing_filename_offset;
  uint32_t old_end = old_start + img->header.backing_filename_size;
  uint32_t spare = old_end > final + len ? old_end : final + len;
  CLEANUP_FREE char *saved = NULL;
  int r;

  if (name == NULL)
    return write_backing_header (img, features, final, 0);
  features |= QED_F_BACKING_FILE | (raw ? QED_F_BACKING_FORMAT_NO_PROBE : 0);

  if ((img->header.features & QED_F_BACKING_FILE) && old_start < final + len &&
      old_end > final && spare + (uint64_t) len <= img->header_bytes) {
    if ((saved = malloc (len)) == NULL)
      return -ENOMEM;
    if ((r = img->file->ops->pread (img->file, saved, len, spare)) < 0 ||
        (r = write_durably (img, name, len, spare)) < 0 ||
        (r = write_backing_header (img, features, spare, len)) < 0)
      return r;
  }
  if ((r = write_durably (img, name, len, final)) < 0 ||
      (r = write_backing_header (img, features, final, len)) < 0)
    return r;
  /* What was there before; a crash before it only leaves a copy of
   * the name in unused header space.
   */
  return saved ? write_durably (img, saved, len, spare) : 0;
}

int
qed_image_set_backing (struct qed_image *img, const char *name,
                       const char *format)
{
  struct backing *backing = NULL;
  char *new_name = NULL;
  uint64_t id[2];
  size_t nids = 0;
  int r;

  if (format && strcmp (format, "raw") != 0 && strcmp (format, "qed") != 0) {
    qed_error ("%s: backing format %s is not supported (raw or qed)",
               image_name (img), format);
    return -ENOTSUP;
  }
  if (name && (name[0] == '\0' || strlen (name) > QED_MAX_BACKING_NAME ||
               strlen (name) > img->header_bytes - QED_HEADER_STRUCT_SIZE)) {
    qed_error ("%s: backing file name is empty or too long (%zu bytes; at"
               " most %" PRIu64 " fit in the header)", image_name (img),
               strlen (name), img->header_bytes - QED_HEADER_STRUCT_SIZE);
    return -EINVAL;
  }
  if (name && (new_name = strdup (name)) == NULL)
    return -ENOMEM;

  whole_image_begin (img);
  if (!img->writable) {
    qed_error ("%s: cannot change the backing file: the image is read-only",
               image_name (img));
    r = -EROFS;
    goto out;
  }
  if (name && !img->header_only) {
    if (img->file->ops->identity && img->file->ops->identity (img->file,
                                                               id) == 0)
      nids = 1;
    r = open_backing (img, name, format, 0, id, nids, &backing);
    if (r < 0)
      goto out;
  }
  r = rewrite_backing_name (img, name, format && strcmp (format, "raw") == 0);
  if (r == 0) {
    struct backing *old = img->backing;
    char *old_name = img->backing_name;

    img->backing = backing;
    img->backing_name = new_name;
    backing = old;
    new_name = old_name;
  }
 out:
  whole_image_end (img);
  backing_close (backing);
  free (new_name);
  return r;
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

uint64_t
backing_size (const struct backing *b)
{
  return b->size;
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

int
backing_prefetch (struct backing *b, uint64_t count, uint64_t offset)
{
  uint64_t n = inside (b, count, offset);
  int r;

  if (n == 0)
    return 0;
  if (b->qed)
    return qed_image_prefetch (b->qed, n, offset);
  if ((r = file_prefetch (b->raw, offset, n)) < 0)
    qed_error ("%s: prefetching %" PRIu64 " bytes at %" PRIu64 ": %s",
               b->path, n, offset, strerror (-r));
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
