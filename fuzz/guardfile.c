/* nbdkit-qed fuzzers: a file layer that watches the engine.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "guardfile.h"

#define HEADER_AREA 4096u       /* the smallest header area */
#define HEADER_STRUCT 64u

struct guard {
  struct qed_file file;         /* first, so a qed_file * converts */
  struct qed_file *inner;
  struct guard_options opts;
  uint64_t enospc;
};

static void
fatal (const char *what, uint64_t offset, uint64_t count)
{
  fprintf (stderr, "guardfile: %s: offset=%" PRIu64 " count=%" PRIu64 "\n",
           what, offset, count);
  abort ();
}

static int
g_pread (struct qed_file *f, void *buf, size_t count, uint64_t offset)
{
  struct guard *g = (struct guard *) f;
  uint64_t size;

  if (g->inner->ops->get_size (g->inner, &size) == 0 &&
      (offset > size || count > size - offset))
    fatal ("read beyond the end of the file", offset, count);
  return g->inner->ops->pread (g->inner, buf, count, offset);
}

static void
check_change (struct guard *g, const char *what, uint64_t offset,
              uint64_t count)
{
  if (g->opts.read_only)
    fatal (what, offset, count);
}

static int
g_pwrite (struct qed_file *f, const void *buf, size_t count, uint64_t offset)
{
  struct guard *g = (struct guard *) f;

  check_change (g, "write through a read-only open", offset, count);
  if (offset < HEADER_AREA && count > 0 &&
      !(offset == 0 && count == HEADER_STRUCT))
    fatal ("write into the header area", offset, count);
  if (g->opts.max_size &&
      (offset > g->opts.max_size || count > g->opts.max_size - offset)) {
    g->enospc++;
    return -ENOSPC;
  }
  return g->inner->ops->pwrite (g->inner, buf, count, offset);
}

static int
g_flush (struct qed_file *f)
{
  struct guard *g = (struct guard *) f;

  return g->inner->ops->flush (g->inner);
}

static int
g_get_size (struct qed_file *f, uint64_t *size)
{
  struct guard *g = (struct guard *) f;

  return g->inner->ops->get_size (g->inner, size);
}

static int
g_truncate (struct qed_file *f, uint64_t size)
{
  struct guard *g = (struct guard *) f;

  check_change (g, "truncate through a read-only open", size, 0);
  if (size < HEADER_AREA)
    fatal ("truncate into the header area", size, 0);
  if (g->opts.max_size && size > g->opts.max_size) {
    g->enospc++;
    return -ENOSPC;
  }
  return g->inner->ops->truncate (g->inner, size);
}

static int
g_punch (struct qed_file *f, uint64_t offset, uint64_t count)
{
  struct guard *g = (struct guard *) f;

  check_change (g, "punch through a read-only open", offset, count);
  if (offset < HEADER_AREA && count > 0)
    fatal ("punch into the header area", offset, count);
  return g->inner->ops->punch (g->inner, offset, count);
}

static void
g_close (struct qed_file *f)
{
  struct guard *g = (struct guard *) f;

  g->inner->ops->close (g->inner);
  free (g);
}

/* Over a memfile, which cannot lock: neither can the guard. */
static const struct qed_file_ops guard_ops = {
  .pread = g_pread,
  .get_size = g_get_size,
  .close = g_close,
  .pwrite = g_pwrite,
  .flush = g_flush,
  .truncate = g_truncate,
  .punch = g_punch,
};

struct qed_file *
guard_new (struct qed_file *inner, const struct guard_options *opts)
{
  struct guard *g = calloc (1, sizeof *g);

  if (g == NULL)
    abort ();
  g->file.ops = &guard_ops;
  g->file.writable = inner->writable && !opts->read_only;
  g->inner = inner;
  g->opts = *opts;
  return &g->file;
}

uint64_t
guard_enospc_count (struct qed_file *f)
{
  return ((struct guard *) f)->enospc;
}
