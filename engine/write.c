/* nbdkit-qed: writes, zeroing and trimming.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "internal.h"

static const char zero_buf[64 * 1024];

int
write_zeros (struct qed_image *img, uint64_t host, uint64_t count)
{
  while (count > 0) {
    size_t n = count < sizeof zero_buf ? count : sizeof zero_buf;
    int r = img->file->ops->pwrite (img->file, zero_buf, n, host);
    if (r < 0)
      return r;
    host += n;
    count -= n;
  }
  return 0;
}

static int
check_write (struct qed_image *img, uint64_t count, uint64_t offset)
{
  if (!qed_image_is_writable (img)) {
    qed_error ("%s: the image is read-only", image_name (img));
    return -EROFS;
  }
  return check_range (img, count, offset, "request");
}

static int
pwrite_logged (struct qed_image *img, const void *buf, uint64_t count,
               uint64_t host)
{
  int r = img->file->ops->pwrite (img->file, buf, count, host);

  if (r < 0)
    qed_error ("%s: writing %" PRIu64 " bytes at 0x%" PRIx64 ": %s",
               image_name (img), count, host, strerror (-r));
  return r;
}

/* Copies (copy-on-write, and moving clusters in the file) go through
 * a buffer of at most this many bytes, so that memory does not grow
 * with the cluster size times the requests in flight.
 */
#define FILL_CHUNK (1024 * 1024)

int
copy_host (struct qed_image *img, uint64_t from, uint64_t to, uint64_t count)
{
  CLEANUP_FREE char *buf = malloc (count < FILL_CHUNK ? count : FILL_CHUNK);
  int r = 0;

  if (buf == NULL)
    return -ENOMEM;
  for (uint64_t done = 0; r == 0 && done < count; ) {
    size_t n = count - done < FILL_CHUNK ? count - done : FILL_CHUNK;

    r = img->file->ops->pread (img->file, buf, n, from + done);
    if (r == 0)
      r = img->file->ops->pwrite (img->file, buf, n, to + done);
    if (r < 0)
      qed_error ("%s: copying %" PRIu64 " bytes from 0x%" PRIx64 " to 0x%"
                 PRIx64 ": %s", image_name (img), count, from, to,
                 strerror (-r));
    done += n;
  }
  return r;
}

static bool
is_zero (const char *p, size_t n)
{
  return n == 0 || (p[0] == 0 && memcmp (p, p + 1, n - 1) == 0);
}

/* Fill [offset, offset + count) of a new allocation from the backing
 * file, or with zeros.  Zeros need no write where the file did not
 * reach at open: that space reads as zeros already (the committer
 * extends the file over new clusters before linking them).
 */
static int
fill (struct qed_image *img, const struct alloc *a, uint64_t offset,
      uint64_t count, bool from_backing)
{
  uint64_t host = alloc_host_of (img, a, offset);
  CLEANUP_FREE char *buf = NULL;
  int r;

  if (count == 0)
    return 0;
  if (from_backing) {
    buf = malloc (count < FILL_CHUNK ? count : FILL_CHUNK);
    if (buf == NULL)
      return -ENOMEM;
    while (count > 0) {
      size_t n = count < FILL_CHUNK ? count : FILL_CHUNK;

      r = backing_read (img->backing, buf, n, offset);
      if (r < 0)
        return r;
      /* Holes in the backing file stay holes. */
      if ((host < img->sparse_from || !is_zero (buf, n)) &&
          (r = pwrite_logged (img, buf, n, host)) < 0)
        return r;
      offset += n;
      host += n;
      count -= n;
    }
    return 0;
  }
  if (host < img->sparse_from) {
    uint64_t n = img->sparse_from - host < count ? img->sparse_from - host
      : count;
    r = write_zeros (img, host, n);
    if (r < 0)
      qed_error ("%s: writing zeros at 0x%" PRIx64 ": %s",
                 image_name (img), host, strerror (-r));
    return r;
  }
  return 0;
}

int
write_new_clusters (struct qed_image *img, struct alloc *a,
                    const void *buf, uint64_t count, uint64_t offset)
{
  uint64_t start = a->first << img->cluster_bits;
  uint64_t end = start + ((uint64_t) a->count << img->cluster_bits);
  bool from_backing = a->was == RUN_UNALLOC && img->backing != NULL;
  int r;

  r = fill (img, a, start, offset - start, from_backing);
  if (r == 0 && buf) {
    r = pwrite_logged (img, buf, count, alloc_host_of (img, a, offset));
    if (r == 0)
      a->written_end = alloc_host_of (img, a, offset + count);
  }
  else if (r == 0)
    r = fill (img, a, offset, count, false);
  if (r == 0)
    r = fill (img, a, offset + count, end - offset - count, from_backing);
  return r;
}

/* Does the run already read as zeros without anything being done? */
static bool
reads_as_zero (const struct qed_image *img, enum run_kind kind)
{
  return kind == RUN_ZERO || (kind == RUN_UNALLOC && img->backing == NULL);
}

/* Does what the run reads as have to change into new clusters?
 * zeroing: the request writes zeros, so what reads as zeros already
 * needs nothing.
 */
static bool
needs_new_clusters (const struct qed_image *img, enum run_kind kind,
                    bool zeroing)
{
  if (kind == RUN_DATA || kind == RUN_BAD)
    return false;
  return !zeroing || !reads_as_zero (img, kind);
}

/* Look up the run at offset and, if it needs new clusters, reserve
 * them in a (zero clusters when zero_clusters), first waiting for any
 * other request allocating its first cluster.
 */
static int
lookup_and_reserve (struct qed_image *img, uint64_t offset, uint64_t count,
                    bool zeroing, bool zero_clusters, struct run *run,
                    struct alloc *a)
{
  int r;

  if (lookup_run_shared (img, offset, count, run) &&
      !needs_new_clusters (img, run->kind, zeroing))
    return 0;
  table_lock (img);
  for (;;) {
    r = lookup_run (img, offset, count, run);
    if (r < 0 || !needs_new_clusters (img, run->kind, zeroing))
      break;
    /* New clusters, or a new table, grow the file. */
    if (!zero_clusters || run->slice == NULL) {
      r = alloc_may_grow (img);
      if (r < 0)
        break;
      if (r > 0) {              /* the lock was dropped */
        run_release (img, run);
        continue;
      }
    }
    r = alloc_reserve (img, run, zero_clusters, a);
    if (r != -EAGAIN)
      break;
    run_release (img, run);
    table_wait (img, &img->alloc_done);
  }
  run_release (img, run);
  table_unlock (img);
  return r;
}

/* Write data into one run from offset.  Returns the number of bytes
 * done, or a negative errno.
 */
static int64_t
write_run (struct qed_image *img, const void *buf, uint64_t count,
           uint64_t offset)
{
  struct run run;
  struct alloc a;
  int r = lookup_and_reserve (img, offset, count, false, false, &run, &a);

  if (r < 0)
    return r;

  switch (run.kind) {
  case RUN_DATA:
    r = pwrite_logged (img, buf, run.length, run.host);
    break;
  case RUN_BAD:
    r = -EIO;
    break;
  default:
    r = write_new_clusters (img, &a, buf, run.length, offset);
    r = alloc_commit (img, &a, r);
  }
  return r < 0 ? r : (int64_t) run.length;
}

int
qed_image_write (struct qed_image *img, const void *buf, uint64_t count,
                 uint64_t offset, unsigned flags)
{
  PASS_GATE_FOR_CURRENT_SCOPE (img);
  const char *p = buf;
  int r = check_write (img, count, offset);

  while (r == 0 && count > 0) {
    int64_t n = write_run (img, p, count, offset);
    if (n < 0)
      return n;
    p += n;
    offset += n;
    count -= n;
  }
  if (r == 0 && (flags & QED_FUA))
    r = image_flush (img);
  return r;
}

/* The piece of a zero request handled in one step: a part of one
 * cluster, or whole clusters.
 */
static uint64_t
zero_piece (const struct qed_image *img, uint64_t count, uint64_t offset,
            bool *whole)
{
  uint64_t to_boundary = img->cluster_size - cluster_offset (img, offset);

  *whole = cluster_offset (img, offset) == 0 && count >= img->cluster_size;
  if (*whole)
    return count - cluster_offset (img, count);
  return count < to_boundary ? count : to_boundary;
}

/* Would zeroing the range only change metadata or punch holes? */
static int
zero_is_fast (struct qed_image *img, uint64_t count, uint64_t offset,
              unsigned flags)
{
  while (count > 0) {
    struct run run;
    bool whole;
    uint64_t n = zero_piece (img, count, offset, &whole);
    int r;

    r = lookup_run_taking_lock (img, offset, n, &run);
    if (r < 0)
      return r;
    if (!reads_as_zero (img, run.kind) && run.kind != RUN_BAD &&
        !(whole && (run.kind == RUN_UNALLOC ||
                    (run.kind == RUN_DATA && (flags & QED_MAY_TRIM)))))
      return -ENOTSUP;
    offset += run.length;
    count -= run.length;
  }
  return 0;
}

static int
punch_or_write_zeros (struct qed_image *img, uint64_t host, uint64_t count,
                      unsigned flags)
{
  int r = -EOPNOTSUPP;

  if (flags & QED_MAY_TRIM)
    r = file_punch (img->file, host, count);
  if (r == -EOPNOTSUPP) {
    if (flags & QED_FAST_ZERO)
      return -ENOTSUP;
    r = write_zeros (img, host, count);
  }
  if (r < 0)
    qed_error ("%s: zeroing %" PRIu64 " bytes at 0x%" PRIx64 ": %s",
               image_name (img), count, host, strerror (-r));
  return r;
}

/* Zero one run (or part of it) from offset.  Returns the number of
 * bytes done, or a negative errno.
 */
static int64_t
zero_run (struct qed_image *img, uint64_t count, uint64_t offset,
          unsigned flags)
{
  struct run run;
  struct alloc a;
  bool whole;
  uint64_t n = zero_piece (img, count, offset, &whole);
  /* Unallocated over a backing file: whole clusters become zero
   * clusters, a partial one is allocated and written with zeros.
   */
  int r = lookup_and_reserve (img, offset, n, true, whole, &run, &a);

  if (r < 0)
    return r;

  if (run.kind == RUN_BAD)
    r = -EIO;
  else if (run.kind == RUN_DATA)
    r = whole ? punch_or_write_zeros (img, run.host, run.length, flags)
      : write_zeros (img, run.host, run.length);
  else if (needs_new_clusters (img, run.kind, true)) {
    r = whole ? 0 : write_new_clusters (img, &a, NULL, run.length, offset);
    r = alloc_commit (img, &a, r);
  }
  return r < 0 ? r : (int64_t) run.length;
}

int
qed_image_zero (struct qed_image *img, uint64_t count, uint64_t offset,
                unsigned flags)
{
  PASS_GATE_FOR_CURRENT_SCOPE (img);
  int r = check_write (img, count, offset);

  if (r == 0 && (flags & QED_FAST_ZERO))
    r = zero_is_fast (img, count, offset, flags);
  while (r == 0 && count > 0) {
    int64_t n = zero_run (img, count, offset, flags);
    if (n < 0)
      return n;
    offset += n;
    count -= n;
  }
  if (r == 0 && (flags & QED_FUA))
    r = image_flush (img);
  return r;
}

int
qed_image_trim (struct qed_image *img, uint64_t count, uint64_t offset,
                unsigned flags)
{
  PASS_GATE_FOR_CURRENT_SCOPE (img);
  uint64_t end;
  int r = check_write (img, count, offset);

  if (r < 0)
    return r;
  /* Only clusters the request covers wholly. */
  end = cluster_start (img, offset + count);
  offset = cluster_start (img, offset + img->cluster_size - 1);
  while (offset < end) {
    struct run run;

    r = lookup_run_taking_lock (img, offset, end - offset, &run);
    if (r < 0)
      return r;
    if (run.kind == RUN_DATA) {
      r = file_punch (img->file, run.host, run.length);
      if (r < 0 && r != -EOPNOTSUPP) {
        qed_error ("%s: trimming %" PRIu64 " bytes at 0x%" PRIx64 ": %s",
                   image_name (img), run.length, run.host, strerror (-r));
        return r;
      }
    }
    offset += run.length;
  }
  if (flags & QED_FUA)
    return image_flush (img);
  return 0;
}

int
qed_image_flush (struct qed_image *img)
{
  PASS_GATE_FOR_CURRENT_SCOPE (img);

  return image_flush (img);
}

int
image_flush (struct qed_image *img)
{
  int r = img->file->ops->flush (img->file);

  if (r < 0)
    qed_error ("%s: flush: %s", image_name (img), strerror (-r));
  return r;
}
