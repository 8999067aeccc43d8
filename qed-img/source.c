/* qed-img: images that commands read and write, QED or raw.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qed-img.h"

/* Take or change a lock on a file of ours; the file layer names the
 * holder of a conflicting lock.
 */
static int
lock_file (struct qed_file *file, enum qed_lock_mode mode)
{
  return file->ops->lock && file->ops->lock (file, mode) < 0 ? 1 : 0;
}

int
source_open_flags (struct source *src, const char *name, const char *format,
                   const char *relative_to, unsigned flags)
{
  bool writable = flags & SOURCE_WRITABLE;
  enum qed_lock_mode mode = writable ? QED_LOCK_EXCLUSIVE : QED_LOCK_SHARED;
  bool is_qed;
  int r;

  *src = (struct source) { NULL };
  if (format && strcmp (format, "qed") != 0 && strcmp (format, "raw") != 0)
    return fail (name, "format %s is not supported (raw or qed)", format);
  if ((r = opener->resolve (opener, name, relative_to, &src->name)) < 0)
    return fail (name, "%s", strerror (-r));
  r = opener->open (opener, src->name, writable ? QED_OPEN_WRITE : 0,
                    &src->raw);
  if (r < 0) {
    fail (src->name, "%s", strerror (-r));
    goto fail;
  }
  if (writable && !src->raw->writable) {
    fail (src->name, "cannot be opened for writing (permission denied or"
          " a read-only file system)");
    goto fail;
  }
  if (format)
    is_qed = strcmp (format, "qed") == 0;
  else if (qed_probe_file (src->raw, src->name, &is_qed) < 0)
    goto fail;

  if (is_qed) {
    struct qed_open_options opts = {
      .access = writable ? QED_READ_WRITE : QED_READ_ONLY,
      .opener = opener,
      .no_locking = (flags & (SOURCE_NO_LOCKS | SOURCE_UNLOCKED_CHAIN)) != 0,
    };

    /* The engine locks the image and its chain, or nothing: for a
     * chain left unlocked, the image's own lock is taken here, on the
     * file the image then owns.
     */
    if ((flags & SOURCE_UNLOCKED_CHAIN) && lock_file (src->raw, mode) != 0)
      goto fail;
    r = qed_image_open_file (src->raw, src->name, &opts, &src->qed);
    src->raw = NULL;            /* the image owns it, also on failure */
    if (r < 0)
      goto fail;
    src->size = qed_image_size (src->qed);
    src->writable = writable;
    return 0;
  }
  if (!(flags & SOURCE_NO_LOCKS) && lock_file (src->raw, mode) != 0)
    goto fail;
  if ((r = src->raw->ops->get_size (src->raw, &src->size)) < 0) {
    fail (src->name, "%s", strerror (-r));
    goto fail;
  }
  src->writable = writable;
  return 0;

 fail:
  source_close (src);
  return 1;
}

int
source_open (struct source *src, const char *name, const char *format,
             const char *relative_to, bool force_share)
{
  return source_open_flags (src, name, format, relative_to,
                            force_share ? SOURCE_NO_LOCKS : 0);
}

int
source_create (struct source *src, const char *name, const char *format,
               const struct qed_create_options *opts)
{
  uint64_t size = (opts->size + 511) & ~UINT64_C (511);
  int r;

  if (strcmp (format, "qed") == 0) {
    if (qed_create (name, opts) < 0)
      return fail (name, "the image was not created");
    return source_open_flags (src, name, "qed", NULL, SOURCE_WRITABLE);
  }

  *src = (struct source) { .size = size, .writable = true };
  if ((src->name = strdup (name)) == NULL)
    return fail (name, "out of memory");
  r = opener->open (opener, name, QED_OPEN_WRITE | QED_OPEN_CREATE,
                    &src->raw);
  if (r < 0) {
    fail (name, "%s", strerror (-r));
    goto fail;
  }
  /* Empty, then holes up to the size: only data is written. */
  if (lock_file (src->raw, QED_LOCK_EXCLUSIVE) != 0)
    goto fail;
  if ((r = src->raw->ops->truncate (src->raw, 0)) < 0 ||
      (r = src->raw->ops->truncate (src->raw, size)) < 0) {
    fail (name, "setting the size to %" PRIu64 ": %s", size, strerror (-r));
    goto fail;
  }
  return 0;

 fail:
  source_close (src);
  return 1;
}

bool
source_uses (struct source *src, const char *file)
{
  struct qed_image_info info;
  struct source backing;
  bool found;

  if (same_file (src->name, file))
    return true;
  if (src->qed == NULL)
    return false;
  qed_image_get_info (src->qed, &info);
  if (info.backing_name == NULL)
    return false;
  /* Its backing file as the engine found it, opened again to follow
   * the chain; a chain that does not open cannot hold file anyway.
   */
  if (source_open_flags (&backing, info.backing_name,
                         info.backing_raw ? "raw" : NULL, src->name,
                         SOURCE_NO_LOCKS) != 0)
    return false;
  found = source_uses (&backing, file);
  source_close (&backing);
  return found;
}

uint64_t
source_unit (const struct source *src)
{
  return src->qed ? qed_image_cluster_size (src->qed) : RAW_BLOCK_SIZE;
}

int
source_read (struct source *src, void *buf, uint64_t count, uint64_t offset)
{
  uint64_t n = offset >= src->size ? 0
    : count < src->size - offset ? count : src->size - offset;
  int r = 0;

  if (n > 0) {
    if (src->qed)
      r = qed_image_read (src->qed, buf, n, offset);
    else if ((r = src->raw->ops->pread (src->raw, buf, n, offset)) < 0)
      fail (src->name, "reading %" PRIu64 " bytes at offset %" PRIu64 ": %s",
            n, offset, strerror (-r));
  }
  if (r == 0)
    memset ((char *) buf + n, 0, count - n);
  return r;
}

/* The first extent that block status reports. */
struct first_extent {
  uint64_t length;
  unsigned type;
};

static int
take_first_extent (void *opaque, uint64_t offset, uint64_t length,
                   unsigned type)
{
  struct first_extent *e = opaque;

  e->length = length;
  e->type = type;
  return 1;                     /* enough */
}

int
source_zeros_at (struct source *src, uint64_t offset, uint64_t count,
                 uint64_t *zeros)
{
  struct first_extent e = { 0 };
  int r;

  if (offset >= src->size) {
    *zeros = count;
    return 0;
  }
  *zeros = 0;
  if (src->raw) {
    uint64_t length;
    bool hole;

    /* A file that cannot tell, or fails to, is data. */
    if (src->raw->ops->extent &&
        src->raw->ops->extent (src->raw, offset, count, &length, &hole) == 0 &&
        hole)
      *zeros = length;
    return 0;
  }
  r = qed_image_block_status (src->qed, count < src->size - offset ? count
                              : src->size - offset, offset,
                              take_first_extent, &e);
  if (r < 0)
    return r;
  if (e.type & QED_EXTENT_ZERO)
    /* Up to the end of the image, the zeros go on past it. */
    *zeros = offset + e.length == src->size ? count
      : e.length < count ? e.length : count;
  return 0;
}

int
source_write (struct source *src, const void *buf, uint64_t count,
              uint64_t offset)
{
  int r;

  if (src->qed)
    return qed_image_write (src->qed, buf, count, offset, 0);
  if ((r = src->raw->ops->pwrite (src->raw, buf, count, offset)) < 0)
    fail (src->name, "writing %" PRIu64 " bytes at offset %" PRIu64 ": %s",
          count, offset, strerror (-r));
  return r;
}

int
source_zero (struct source *src, uint64_t count, uint64_t offset)
{
  static const char zeros[64 * 1024];
  int r = -EOPNOTSUPP;

  /* In a QED image whole clusters become zero clusters, or give their
   * host space back.
   */
  if (src->qed)
    return qed_image_zero (src->qed, count, offset, QED_MAY_TRIM);
  if (src->raw->ops->punch)
    r = src->raw->ops->punch (src->raw, offset, count);
  if (r == -EOPNOTSUPP) {
    uint64_t n;

    for (r = 0; r == 0 && count > 0; offset += n, count -= n) {
      n = count < sizeof zeros ? count : sizeof zeros;
      r = src->raw->ops->pwrite (src->raw, zeros, n, offset);
    }
  }
  if (r < 0)
    fail (src->name, "writing zeros at offset %" PRIu64 ": %s", offset,
          strerror (-r));
  return r;
}

int
source_grow (struct source *src, uint64_t size)
{
  int r;

  if (src->qed)
    r = qed_image_resize (src->qed, size, false);
  else if ((r = src->raw->ops->truncate (src->raw, size)) < 0)
    fail (src->name, "growing to %" PRIu64 " bytes: %s", size,
          strerror (-r));
  if (r == 0)
    src->size = src->qed ? qed_image_size (src->qed) : size;
  return r;
}

int
source_flush (struct source *src)
{
  int r;

  if (src->qed)
    return qed_image_flush (src->qed);
  if ((r = src->raw->ops->flush (src->raw)) < 0)
    fail (src->name, "flush: %s", strerror (-r));
  return r;
}

int
source_close (struct source *src)
{
  int r = 0;

  if (src->qed)
    r = close_image (src->name, src->qed);
  if (src->raw) {
    if (src->writable && source_flush (src) < 0)
      r = 1;
    src->raw->ops->close (src->raw);
  }
  free (src->name);
  *src = (struct source) { NULL };
  return r;
}
