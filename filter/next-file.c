/* nbdkit-qed: the QED file the filter decodes, read from the plugin
 * below through nbdkit's next context.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Locking: the context's calls are made with nf->lock held when
 * nf->serialize is set, so that a plugin that takes one request at a
 * time (curl and ssh in nbdkit 1.32) never sees two, although every
 * connection reads through this one context.  Under the stricter
 * thread models nbdkit already runs one request at a time in the
 * whole server; under PARALLEL the plugin takes concurrent calls.
 * Everything else in struct next_file is set at open and only read
 * afterwards.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include <nbdkit-filter.h>

#include "next-file.h"

/* The largest request sent to a plugin that states no maximum: NBD's
 * usual limit, which every plugin accepts.
 */
#define MAX_REQUEST (32 * 1024 * 1024)

struct next_file {
  struct qed_file file;
  nbdkit_next *next;
  uint64_t size;                /* of the export, read once at open */
  uint32_t max_request;         /* bytes per call into the plugin */
  bool serialize;
  pthread_mutex_t lock;         /* see the locking note above */
};

static void
lock_next (struct next_file *nf)
{
  if (nf->serialize)
    pthread_mutex_lock (&nf->lock);
}

static void
unlock_next (struct next_file *nf)
{
  if (nf->serialize)
    pthread_mutex_unlock (&nf->lock);
}

/* nbdkit's next calls take a uint32_t count: how much of count the
 * next call may carry.
 */
static uint32_t
chunk (const struct next_file *nf, uint64_t count)
{
  return count < nf->max_request ? count : nf->max_request;
}

static int
next_pread (struct qed_file *f, void *buf, size_t count, uint64_t offset)
{
  struct next_file *nf = (struct next_file *) f;
  char *p = buf;

  /* nbdkit asserts that next calls stay inside the export. */
  if (offset > nf->size || count > nf->size - offset) {
    nbdkit_error ("reading %zu bytes at %" PRIu64 ": past the end of the"
                  " plugin's export (%" PRIu64 " bytes)",
                  count, offset, nf->size);
    return -EIO;
  }
  while (count > 0) {
    uint32_t n = chunk (nf, count);
    int err = 0, r;

    lock_next (nf);
    r = nf->next->pread (nf->next, p, n, offset, 0, &err);
    unlock_next (nf);
    if (r == -1)                /* the plugin said why */
      return -(err ? err : EIO);
    p += n;
    offset += n;
    count -= n;
  }
  return 0;
}

static int
next_get_size (struct qed_file *f, uint64_t *size)
{
  *size = ((struct next_file *) f)->size;
  return 0;
}

/* Have the plugin start reading the range into its cache (the file
 * plugin: posix_fadvise), clipped to the export.
 */
static int
next_prefetch (struct qed_file *f, uint64_t offset, uint64_t count)
{
  struct next_file *nf = (struct next_file *) f;

  if (offset >= nf->size)
    return 0;
  if (count > nf->size - offset)
    count = nf->size - offset;
  while (count > 0) {
    uint32_t n = chunk (nf, count);
    int err = 0, r;

    lock_next (nf);
    r = nf->next->cache (nf->next, n, offset, 0, &err);
    unlock_next (nf);
    if (r == -1)
      return -(err ? err : EIO);
    offset += n;
    count -= n;
  }
  return 0;
}

/* Finalize and close the shared context. */
static void
next_close (struct qed_file *f)
{
  struct next_file *nf = (struct next_file *) f;

  nf->next->finalize (nf->next);
  nbdkit_next_context_close (nf->next);
  pthread_mutex_destroy (&nf->lock);
  free (nf);
}

static const struct qed_file_ops next_ops = {
  .pread = next_pread,
  .get_size = next_get_size,
  .close = next_close,
};

/* The same, for plugins that cache natively. */
static const struct qed_file_ops next_caching_ops = {
  .pread = next_pread,
  .get_size = next_get_size,
  .close = next_close,
  .prefetch = next_prefetch,
};

/* Ask the plugin its size, block sizes and cache support. */
static int
query_plugin (struct next_file *nf)
{
  nbdkit_next *next = nf->next;
  uint32_t minimum, preferred, maximum;
  int64_t size;
  int cache;

  if ((size = next->get_size (next)) == -1 ||
      next->block_size (next, &minimum, &preferred, &maximum) == -1 ||
      (cache = next->can_cache (next)) == -1)
    return -EIO;                /* nbdkit or the plugin said why */
  /* QED tables and headers are read at any byte offset. */
  if (minimum > 1) {
    nbdkit_error ("the plugin accepts only requests aligned to %" PRIu32
                  " bytes, and QED needs any alignment: put"
                  " --filter=blocksize after --filter=qed", minimum);
    return -EINVAL;
  }
  nf->size = size;
  nf->max_request = maximum > 0 && maximum < MAX_REQUEST
    ? maximum : MAX_REQUEST;
  nf->file.ops = cache == NBDKIT_CACHE_NATIVE ? &next_caching_ops : &next_ops;
  return 0;
}

int
next_file_open (nbdkit_backend *backend, bool serialize,
                struct qed_file **filep)
{
  struct next_file *nf;
  int r;

  nf = calloc (1, sizeof *nf);
  if (nf == NULL) {
    nbdkit_error ("calloc: %m");
    return -ENOMEM;
  }
  nf->serialize = serialize;
  pthread_mutex_init (&nf->lock, NULL);
  /* Read-only: the filter never writes, and a plugin that cannot
   * write (curl without write support) still opens.
   */
  nf->next = nbdkit_next_context_open (backend, 1, "", 1);
  if (nf->next == NULL) {       /* the plugin said why */
    pthread_mutex_destroy (&nf->lock);
    free (nf);
    return -EIO;
  }
  if (nf->next->prepare (nf->next) == -1)
    r = -EIO;
  else
    r = query_plugin (nf);
  if (r < 0) {
    nf->file.ops = &next_ops;
    next_close (&nf->file);
    return r;
  }
  *filep = &nf->file;
  return 0;
}
