/* nbdkit-qed: block status.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <errno.h>

#include "internal.h"

/* Adjacent extents of one type are reported as one. */
struct merger {
  qed_extent_fn fn;
  void *opaque;
  uint64_t offset, length;
  unsigned type;
  int stop;                     /* fn asked to stop */
};

static int
merge (void *opaque, uint64_t offset, uint64_t length, unsigned type)
{
  struct merger *m = opaque;

  if (m->stop)
    return m->stop;
  if (m->length > 0 && m->type == type && m->offset + m->length == offset) {
    m->length += length;
    return 0;
  }
  if (m->length > 0 && (m->stop = m->fn (m->opaque, m->offset, m->length,
                                          m->type)) != 0)
    return m->stop;
  m->offset = offset;
  m->length = length;
  m->type = type;
  return 0;
}

static unsigned
run_type (enum run_kind kind)
{
  switch (kind) {
  case RUN_ZERO:
    return QED_EXTENT_HOLE | QED_EXTENT_ZERO;
  case RUN_UNALLOC:
    return QED_EXTENT_HOLE | QED_EXTENT_ZERO;   /* without a backing file */
  default:
    /* Data, and bad entries too: never claim zeros that are not. */
    return 0;
  }
}

int
qed_image_block_status (struct qed_image *img, uint64_t count,
                        uint64_t offset, qed_extent_fn fn, void *opaque)
{
  PASS_GATE_FOR_CURRENT_SCOPE (img);
  struct merger m = { .fn = fn, .opaque = opaque };
  int r = check_range (img, count, offset, "block status");

  if (r < 0)
    return r;
  while (count > 0 && m.stop == 0) {
    struct run run;

    r = lookup_run_taking_lock (img, offset, count, &run);
    if (r < 0)
      return r;

    if (run.kind == RUN_UNALLOC && img->backing)
      /* What the chain holds there. */
      r = backing_status (img->backing, run.length, offset, merge, &m);
    else
      r = merge (&m, offset, run.length, run_type (run.kind));
    if (r < 0)
      return r;
    offset += run.length;
    count -= run.length;
  }
  if (m.stop == 0 && m.length > 0)
    m.stop = fn (opaque, m.offset, m.length, m.type);
  return m.stop < 0 ? m.stop : 0;
}
