/* nbdkit-qed: the map of an image and its backing chain.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * image_extents walks the chain: for each run of an image, its data,
 * its zero clusters, or (unallocated) what its backing file holds
 * there, down to the bottom of the chain.  Block status (status.c)
 * reduces the extents to NBD's types; qed_image_map reports them as
 * qemu-img map does.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>

#include "internal.h"

int
image_extents (struct qed_image *img, unsigned depth, uint64_t count,
               uint64_t offset, chain_extent_fn fn, void *opaque)
{
  while (count > 0) {
    struct chain_extent e = {
      .map = { .offset = offset, .depth = depth, .file = img->path },
    };
    struct run run;
    int r;

    r = lookup_run_taking_lock (img, offset, count, &run);
    if (r < 0)
      return r;

    e.map.length = run.length;
    switch (run.kind) {
    case RUN_DATA:
      e.map.present = e.map.data = e.map.has_host = true;
      e.map.host = run.host;
      break;
    case RUN_ZERO:
      e.map.present = e.map.zero = true;
      break;
    case RUN_UNALLOC:
      /* Not present here: the backing file's, or the end of the chain. */
      e.map.zero = true;
      break;
    case RUN_BAD:
      e.map.present = e.map.data = e.bad = true;
      break;
    }
    if (run.kind == RUN_UNALLOC && img->backing)
      r = backing_extents (img, depth, run.length, offset, fn, opaque);
    else
      r = fn (opaque, &e);
    if (r != 0)
      return r;
    offset += run.length;
    count -= run.length;
  }
  return 0;
}

/* qemu-img map shows adjacent extents as one when everything it
 * prints about them but the length agrees, and the host offsets
 * continue.  (It compares the file names too, which depth decides.)
 */
struct map_merger {
  qed_map_fn fn;
  void *opaque;
  struct qed_map_extent pending;        /* length 0: none yet */
};

static bool
continues (const struct qed_map_extent *a, const struct qed_map_extent *b)
{
  return a->depth == b->depth && a->present == b->present &&
    a->zero == b->zero && a->data == b->data &&
    a->has_host == b->has_host &&
    (!a->has_host || a->host + a->length == b->host);
}

static int
map_merge (void *opaque, const struct chain_extent *e)
{
  struct map_merger *m = opaque;
  int r;

  if (e->bad) {
    qed_error ("%s: map: an invalid table entry maps virtual offset %"
               PRIu64, e->map.file ? e->map.file : "image", e->map.offset);
    return -EIO;
  }
  if (m->pending.length > 0 && continues (&m->pending, &e->map)) {
    m->pending.length += e->map.length;
    return 0;
  }
  if (m->pending.length > 0 && (r = m->fn (m->opaque, &m->pending)) != 0)
    return r;
  m->pending = e->map;
  return 0;
}

int
qed_image_map (struct qed_image *img, uint64_t count, uint64_t offset,
               qed_map_fn fn, void *opaque)
{
  PASS_GATE_FOR_CURRENT_SCOPE (img);
  struct map_merger m = { .fn = fn, .opaque = opaque };
  int r = check_range (img, count, offset, "map");

  if (r == 0)
    r = image_extents (img, 0, count, offset, map_merge, &m);
  if (r == 0 && m.pending.length > 0)
    r = fn (opaque, &m.pending);
  return r < 0 ? r : 0;
}
