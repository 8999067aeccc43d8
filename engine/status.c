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
};

/* Everything but data reads as zeros and is no data in the chain: a
 * zero cluster, unallocated space at the end of the chain, a hole of
 * a raw backing file.  Bad entries count as data: block status never
 * claims zeros that are not.
 */
static unsigned
extent_type (const struct chain_extent *e)
{
  return e->map.data ? 0 : QED_EXTENT_HOLE | QED_EXTENT_ZERO;
}

static int
merge (void *opaque, const struct chain_extent *e)
{
  struct merger *m = opaque;
  unsigned type = extent_type (e);
  int r;

  if (m->length > 0 && m->type == type) {
    m->length += e->map.length;
    return 0;
  }
  if (m->length > 0 && (r = m->fn (m->opaque, m->offset, m->length,
                                   m->type)) != 0)
    return r;
  m->offset = e->map.offset;
  m->length = e->map.length;
  m->type = type;
  return 0;
}

int
qed_image_block_status (struct qed_image *img, uint64_t count,
                        uint64_t offset, qed_extent_fn fn, void *opaque)
{
  PASS_GATE_FOR_CURRENT_SCOPE (img);
  struct merger m = { .fn = fn, .opaque = opaque };
  int r = check_range (img, count, offset, "block status");

  if (r == 0)
    r = image_extents (img, 0, count, offset, merge, &m);
  if (r == 0 && m.length > 0)
    r = fn (opaque, m.offset, m.length, m.type);
  return r < 0 ? r : 0;
}
