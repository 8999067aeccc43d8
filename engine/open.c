/* nbdkit-qed: opening, enabling writes, checking and closing images:
 * the calls that work on the image as a whole.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* The L2 cache's default size.  Through the host's page cache a miss
 * is a copy of 4 KiB from memory (the kernel keeps the tables too), so
 * a small cache is as fast as a large one at a fraction of the memory
 * (bench/bench.sh SECTIONS=l2curve); with direct I/O a miss is a read
 * from the disk, and the cache maps about 250 GiB of 64 KiB clusters.
 */
#define DEFAULT_L2_CACHE_SIZE (4u * 1024 * 1024)
#define DEFAULT_L2_CACHE_SIZE_DIRECT (32u * 1024 * 1024)

static void
image_free (struct qed_image *img)
{
  struct pending_table *pt, *next;

  backing_close (img->backing);
  for (pt = img->pending; pt; pt = next) {
    next = pt->next;
    free (pt->slices);
    free (pt);
  }
  if (img->cache.buckets)
    l2_cache_free (&img->cache);
  new_links_free (&img->new_links);
  free (img->failed);
  free (img->l1);
  free (img->l1_bad);
  free (img->tables);
  free (img->backing_name);
  if (img->file)
    img->file->ops->close (img->file);
  pthread_cond_destroy (&img->slice_loaded);
  pthread_cond_destroy (&img->alloc_done);
  pthread_cond_destroy (&img->commit_done);
  pthread_cond_destroy (&img->bg_wake);
  pthread_rwlock_destroy (&img->lookup_lock);
  pthread_mutex_destroy (&img->lock);
  gate_destroy (&img->gate);
  free (img->path);
  free (img);
}

static unsigned
log2_of (uint64_t v)
{
  return 63 - __builtin_clzll (v);
}

/* A file without QED's magic: when it is an image in a format we know
 * of, say so, and fail with -EMEDIUMTYPE, so that the caller can say
 * what serves it.  0 otherwise (the header's validation names the
 * wrong magic).
 */
static int
not_qed (struct qed_image *img, uint64_t file_size)
{
  unsigned char buf[OTHER_FORMAT_PROBE_BYTES];
  size_t n = file_size < sizeof buf ? file_size : sizeof buf;
  const char *format;

  if (img->file->ops->pread (img->file, buf, n, 0) < 0 ||
      (format = other_format (buf, n)) == NULL)
    return 0;
  qed_error ("%s: this is a %s image, not a QED image", image_name (img),
             format);
  return -EMEDIUMTYPE;
}

/* Read and validate the header, set up the geometry. */
static int
read_header (struct qed_image *img, uint64_t file_size)
{
  unsigned char buf[QED_HEADER_STRUCT_SIZE];
  struct qed_header *h = &img->header;
  char msg[256];
  int r;

  if (file_size < QED_HEADER_STRUCT_SIZE) {
    qed_error ("%s: the file is too short (%" PRIu64 " bytes) to be a QED"
               " image", image_name (img), file_size);
    return -EINVAL;
  }
  r = img->file->ops->pread (img->file, buf, sizeof buf, 0);
  if (r < 0) {
    qed_error ("%s: reading the header: %s", image_name (img), strerror (-r));
    return r;
  }
  qed_header_decode (buf, h);
  if (h->magic != QED_MAGIC && (r = not_qed (img, file_size)) < 0)
    return r;
  r = qed_header_validate (h, file_size, msg, sizeof msg);
  if (r < 0) {
    qed_error ("%s: %s", image_name (img), msg);
    return r;
  }

  img->cluster_size = h->cluster_size;
  img->cluster_bits = log2_of (h->cluster_size);
  img->table_bytes = (uint64_t) h->table_size * h->cluster_size;
  img->table_bits = log2_of (img->table_bytes / 8);
  img->header_bytes = (uint64_t) h->header_size * h->cluster_size;
  img->l1_entries = l1_entries_for (img, h->image_size);
  img->alloc_end = img->open_end = cluster_start (img, file_size);
  img->sparse_from = img->file_end = file_size;

  if (h->features & QED_F_BACKING_FILE) {
    img->backing_name = calloc (1, h->backing_filename_size + 1);
    if (img->backing_name == NULL)
      return -ENOMEM;
    r = img->file->ops->pread (img->file, img->backing_name,
                               h->backing_filename_size,
                               h->backing_filename_offset);
    if (r < 0) {
      qed_error ("%s: reading the backing file name: %s", image_name (img),
                 strerror (-r));
      return r;
    }
    if (strlen (img->backing_name) != h->backing_filename_size) {
      qed_error ("%s: invalid backing file name: it contains a NUL byte"
                 " (backing_filename_offset %" PRIu32
                 ", backing_filename_size %" PRIu32 ")", image_name (img),
                 h->backing_filename_offset, h->backing_filename_size);
      return -EINVAL;
    }
  }
  return 0;
}

void
whole_image_begin (struct qed_image *img)
{
  gate_close (&img->gate);
  table_lock (img);
  token_take (img);
  table_unlock (img);
}

void
whole_image_end (struct qed_image *img)
{
  table_lock (img);
  token_give (img);
  table_unlock (img);
  gate_open (&img->gate);
}

/* The counts that are not zero, in words: "1 corruption, 2 leaked
 * clusters and 1 unreadable table".
 */
static const char *
describe_counts (char *buf, size_t size, uint64_t corruptions,
                 uint64_t leaks, uint64_t check_errors)
{
  const struct { uint64_t n; const char *one, *many; } counts[] = {
    { corruptions, "corruption", "corruptions" },
    { leaks, "leaked cluster", "leaked clusters" },
    { check_errors, "unreadable table", "unreadable tables" },
  };
  size_t len = 0, left = 0;

  for (size_t i = 0; i < 3; i++)
    left += counts[i].n != 0;
  buf[0] = '\0';
  for (size_t i = 0; i < 3 && len < size; i++) {
    if (counts[i].n == 0)
      continue;
    left--;
    len += snprintf (buf + len, size - len, "%" PRIu64 " %s%s", counts[i].n,
                     qed_plural (counts[i].n, counts[i].one, counts[i].many),
                     left > 1 ? ", " : left == 1 ? " and " : "");
  }
  return buf;
}

/* Say what the check found, what the repair (if repaired) did, and
 * what happens next: they are notices, since the image is served.
 */
static void
report_check (struct qed_image *img, const struct qed_check_result *res,
              bool repaired)
{
  char found[128];

  if (res->corruptions_fixed || res->leaks_fixed)
    qed_notice ("%s: repaired the image: fixed %s", image_name (img),
                describe_counts (found, sizeof found, res->corruptions_fixed,
                                 res->leaks_fixed, 0));
  if (repaired) {
    if (res->corruptions || res->check_errors)
      qed_notice ("%s: the repair left %s: requests on what they map fail",
                  image_name (img),
                  describe_counts (found, sizeof found, res->corruptions, 0,
                                   res->check_errors));
  }
  else if (res->corruptions || res->leaks || res->check_errors)
    qed_notice ("%s: the check found %s; %s", image_name (img),
                describe_counts (found, sizeof found, res->corruptions,
                                 res->leaks, res->check_errors),
                img->access == QED_WRITE_ON_DEMAND
                ? "the image will be repaired before the first write"
                : "it is not repaired: the image is opened read-only");
  if (!res->corruptions && !res->leaks && !res->check_errors &&
      !res->corruptions_fixed && !res->leaks_fixed)
    qed_debug ("%s: check found the image consistent", image_name (img));
}

int
image_open (struct qed_file *file, const char *path,
            const struct qed_open_options *opts, unsigned depth,
            const uint64_t *chain_ids, size_t nids, struct qed_image **imgp)
{
  struct qed_image *img;
  pthread_condattr_t attr;
  pthread_rwlockattr_t rwattr;
  uint64_t file_size, *ids;
  size_t cache_size;
  int r;

  img = calloc (1, sizeof *img);
  if (img == NULL) {
    file->ops->close (file);
    return -ENOMEM;
  }
  img->file = file;
  gate_init (&img->gate);
  pthread_mutex_init (&img->lock, NULL);
  pthread_rwlockattr_init (&rwattr);
  pthread_rwlockattr_setkind_np (&rwattr,
                                 PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init (&img->lookup_lock, &rwattr);
  pthread_rwlockattr_destroy (&rwattr);
  pthread_cond_init (&img->slice_loaded, NULL);
  pthread_cond_init (&img->alloc_done, NULL);
  pthread_cond_init (&img->commit_done, NULL);
  pthread_condattr_init (&attr);
  pthread_condattr_setclock (&attr, CLOCK_MONOTONIC);
  pthread_cond_init (&img->bg_wake, &attr);
  pthread_condattr_destroy (&attr);
  img->access = opts->access;
  img->opener = opts->opener ? opts->opener : &qed_posix_opener;
  img->no_locking = opts->no_locking;
  img->always_check = opts->always_check;
  img->header_only = opts->header_only;
  img->direct = opts->direct;
  if (path && (img->path = strdup (path)) == NULL) {
    r = -ENOMEM;
    goto fail;
  }

  if (!img->no_locking && (r = file_lock (file, QED_LOCK_SHARED)) < 0)
    goto fail;
  r = file->ops->get_size (file, &file_size);
  if (r < 0) {
    qed_error ("%s: %s", image_name (img), strerror (-r));
    goto fail;
  }
  if ((r = read_header (img, file_size)) < 0 ||
      (r = table_load_l1 (img)) < 0)
    goto fail;
  if (opts->l2_cache_size)
    cache_size = opts->l2_cache_size;
  else
    cache_size = opts->direct ? DEFAULT_L2_CACHE_SIZE_DIRECT
      : DEFAULT_L2_CACHE_SIZE;
  if (l2_cache_init (&img->cache, cache_size) == -1) {
    qed_error ("%s: cannot allocate an L2 cache of %zu bytes: %s",
               image_name (img), cache_size, strerror (ENOMEM));
    r = -ENOMEM;
    goto fail;
  }

  if ((img->header.features & QED_F_BACKING_FILE) && !img->header_only) {
    if (opts->no_backing) {
      qed_error ("%s: the image has a backing file (%s) and backing files"
                 " are disabled", image_name (img), img->backing_name);
      r = -EPERM;
      goto fail;
    }
    /* This image and its descendants, to catch loops. */
    ids = malloc ((nids + 1) * 2 * sizeof *ids);
    if (ids == NULL) {
      r = -ENOMEM;
      goto fail;
    }
    if (nids > 0)
      memcpy (ids, chain_ids, nids * 2 * sizeof *ids);
    if (file->ops->identity && file->ops->identity (file, &ids[2 * nids]) == 0)
      nids++;
    r = backing_open (img, opts, depth, ids, nids);
    free (ids);
    if (r < 0)
      goto fail;
  }
  else if (opts->backing && !img->header_only) {
    qed_error ("%s: a backing file was given, but the image has none",
               image_name (img));
    r = -EINVAL;
    goto fail;
  }

  if (img->access == QED_READ_WRITE) {
    r = qed_image_enable_writes (img);
    /* The lock's message was a notice: here it ends the open. */
    if (r == -EBUSY)
      qed_error ("%s: cannot open the image for writing: it is in use",
                 image_name (img));
  }
  else if (img->always_check) {
    struct qed_check_result res;

    whole_image_begin (img);
    r = check_image (img, false, &res);
    whole_image_end (img);
    if (r == 0)
      report_check (img, &res, false);
  }
  if (r < 0)
    goto fail;
  *imgp = img;
  return 0;

 fail:
  image_free (img);
  return r;
}

int
qed_image_open_file (struct qed_file *file, const char *name,
                     const struct qed_open_options *opts,
                     struct qed_image **imgp)
{
  return image_open (file, name, opts, 0, NULL, 0, imgp);
}

int
qed_image_open (const char *name, const struct qed_open_options *opts,
                struct qed_image **imgp)
{
  const struct qed_opener *opener = opts->opener ? opts->opener
    : &qed_posix_opener;
  struct qed_file *file;
  int r;

  r = opener->open (opener, name,
                    (opts->access != QED_READ_ONLY ? QED_OPEN_WRITE : 0) |
                    (opts->direct ? QED_OPEN_DIRECT : 0), &file);
  if (r < 0) {
    qed_error ("%s: %s", name, strerror (-r));
    return r;
  }
  return image_open (file, name, opts, 0, NULL, 0, imgp);
}

/* Called with the image to ourselves. */
static int
enable_writes (struct qed_image *img)
{
  struct qed_header *h = &img->header;
  int r;

  if (img->writable)
    return 0;
  if (img->writes_impossible)
    return -EROFS;
  if (img->access == QED_READ_ONLY || !img->file->writable) {
    /* On demand, writes are wanted if they can be had: the image is
     * then read, which is no error.
     */
    qed_log (img->access == QED_WRITE_ON_DEMAND ? QED_LOG_NOTICE
             : QED_LOG_ERROR,
             "%s: cannot write: the image was opened read-only",
             image_name (img));
    __atomic_store_n (&img->writes_impossible, true, __ATOMIC_RELEASE);
    return -EROFS;
  }
  if (!img->no_locking &&
      (r = file_lock (img->file, QED_LOCK_EXCLUSIVE)) < 0)
    return r;

  if (h->autoclear_features & ~(uint64_t) QED_AUTOCLEAR_FEATURE_MASK) {
    h->autoclear_features &= QED_AUTOCLEAR_FEATURE_MASK;
    r = header_write (img);
    if (r == 0)
      r = img->file->ops->flush (img->file);
    if (r < 0)
      goto fail;
  }
  /* Entries pointing past the end are cleared when the file is first
   * about to grow, not here (see "Entries past the end" in
   * internal.h); a repair clears them too.
   */
  if ((h->features & QED_F_NEED_CHECK) || img->always_check) {
    struct qed_check_result res;

    r = check_image (img, true, &res);
    if (r < 0)
      goto fail;
    report_check (img, &res, true);
    /* Whatever pointed past the end was cleared (and nothing else
     * would have been): no need to look again.
     */
    if (res.corruptions == 0 && res.check_errors == 0) {
      table_lock (img);
      img->past_end = PAST_END_CLEAR;
      table_unlock (img);
    }
  }
  /* Read without locks by qed_image_is_writable. */
  __atomic_store_n (&img->writable, true, __ATOMIC_RELEASE);
  return 0;

 fail:
  if (!img->no_locking)
    file_lock (img->file, QED_LOCK_SHARED);
  return r;
}

int
qed_image_enable_writes (struct qed_image *img)
{
  int r;

  /* Settled: no need to stop the requests. */
  if (qed_image_is_writable (img))
    return 0;
  if (__atomic_load_n (&img->writes_impossible, __ATOMIC_ACQUIRE))
    return -EROFS;

  whole_image_begin (img);
  r = enable_writes (img);
  whole_image_end (img);
  return r;
}

int
qed_image_clear_past_end (struct qed_image *img)
{
  int r = -EROFS;

  whole_image_begin (img);
  if (img->writable)
    r = past_end_clear_now (img);
  else
    qed_error ("%s: cannot clear table entries: the image is read-only",
               image_name (img));
  whole_image_end (img);
  return r;
}

int
qed_image_check (struct qed_image *img, bool repair,
                 struct qed_check_result *res)
{
  int r;

  whole_image_begin (img);
  if (repair && !img->writable) {
    qed_error ("%s: cannot repair: the image is read-only", image_name (img));
    r = -EROFS;
  }
  else
    r = check_image (img, repair, res);
  whole_image_end (img);
  return r;
}

/* New L2 tables that earlier failed writes left unlinked go too: the
 * change may have truncated their space, and allocation starts again
 * from the end of the file.  Allocates nothing (table_load_l1 reuses
 * the arrays), so that a repair out of memory can still reload.
 */
int
image_reload (struct qed_image *img)
{
  struct pending_table *pt, *next;
  uint64_t size;
  int r;

  trim_grown_tail_alone (img);
  if ((r = img->file->ops->get_size (img->file, &size)) < 0)
    return r;
  table_lock (img);
  for (pt = img->pending; pt; pt = next) {
    next = pt->next;
    for (size_t i = 0; i < pt->nslices; i++)
      slice_put (img, pt->slices[i]);
    free (pt->slices);
    free (pt);
  }
  img->pending = NULL;
  img->alloc_end = img->open_end = cluster_start (img, size);
  img->past_end = PAST_END_UNCHECKED;
  free (img->failed);
  img->failed = NULL;
  img->nfailed = 0;
  img->sparse_from = img->file_end = size;
  new_links_free (&img->new_links);
  l2_cache_drop_all (&img->cache);
  table_unlock (img);
  return table_load_l1 (img);
}

bool
qed_image_is_writable (const struct qed_image *img)
{
  return __atomic_load_n (&img->writable, __ATOMIC_ACQUIRE);
}

int
qed_image_close (struct qed_image *img)
{
  int r = 0;

  stop_background (img);
  whole_image_begin (img);
  if (img->writable) {
    trim_grown_tail_alone (img);
    r = image_flush (img);
    if (r == 0)
      r = need_check_clear (img);
  }
  image_free (img);
  return r;
}

uint64_t
qed_image_size (const struct qed_image *img)
{
  /* A resize may change it meanwhile (requests read it inside the
   * gate, which orders them after the resize).
   */
  return __atomic_load_n (&img->header.image_size, __ATOMIC_ACQUIRE);
}

uint32_t
qed_image_cluster_size (const struct qed_image *img)
{
  return img->cluster_size;
}

bool
qed_image_has_backing (const struct qed_image *img)
{
  return img->backing != NULL;
}

void
qed_image_get_info (const struct qed_image *img, struct qed_image_info *info)
{
  const struct qed_header *h = &img->header;

  *info = (struct qed_image_info) {
    .size = h->image_size,
    .cluster_size = h->cluster_size,
    .table_size = h->table_size,
    .header_size = h->header_size,
    .features = h->features,
    .compat_features = h->compat_features,
    .autoclear_features = h->autoclear_features,
    .backing_name = img->backing_name,
    .backing_raw = (h->features & QED_F_BACKING_FORMAT_NO_PROBE) != 0,
    .need_check = (h->features & QED_F_NEED_CHECK) != 0,
  };
}
