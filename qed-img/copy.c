/* qed-img: the loop that convert, rebase and commit share: make a
 * range of one image read as another does, a piece at a time, leaving
 * alone what reads the same already, with progress.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The range is read in chunks; a chunk is cut into pieces at the
 * boundaries of units (the clusters of the image written, or blocks of
 * a raw file), and each piece is skipped, zeroed or written as a
 * whole, consecutive pieces with the same fate together.  Whole runs
 * that block status knows to read as zeros are not read at all.
 */

#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "qed-img.h"

/* Bytes read at once (a chunk never crosses a multiple of it). */
#define COPY_CHUNK (2 * 1024 * 1024)

enum fate { SKIP, ZERO, WRITE };

static bool
is_zero (const char *p, size_t n)
{
  return n == 0 || (p[0] == 0 && memcmp (p, p + 1, n - 1) == 0);
}

int
copy_start (struct copy *c, bool progress, uint64_t total)
{
  bool compare = c->current && !c->write_all;

  c->buf = malloc (COPY_CHUNK);
  c->current_buf = compare ? malloc (COPY_CHUNK) : NULL;
  if (c->buf == NULL || (compare && c->current_buf == NULL)) {
    copy_end (c);
    return fail (NULL, "out of memory");
  }
  progress_start (&c->progress, progress, total);
  return 0;
}

void
copy_end (struct copy *c)
{
  free (c->buf);
  free (c->current_buf);
  c->buf = c->current_buf = NULL;
}

/* What becomes of n bytes that read as from in c->from and as current
 * where they are now.
 */
static enum fate
piece_fate (const struct copy *c, const char *from, const char *current,
            size_t n)
{
  bool zero = is_zero (from, n);

  if (!c->write_all && (current ? memcmp (from, current, n) == 0 : zero))
    return SKIP;
  return zero ? ZERO : WRITE;
}

static int
apply (struct copy *c, enum fate fate, const char *data, uint64_t count,
       uint64_t offset)
{
  switch (fate) {
  case ZERO:
    return source_zero (c->to, count, offset);
  case WRITE:
    return source_write (c->to, data, count, offset);
  default:
    return 0;
  }
}

/* Read one chunk and settle each of its pieces. */
static int
copy_chunk (struct copy *c, uint64_t offset, uint64_t count)
{
  const char *current = c->current_buf;
  uint64_t end = offset + count, run_start = offset, piece_end;
  enum fate run = SKIP;
  int r;

  if ((r = source_read (c->from, c->buf, count, offset)) < 0 ||
      (current && (r = source_read (c->current, c->current_buf, count,
                                    offset)) < 0))
    return r;
  for (uint64_t pos = offset; pos < end; pos = piece_end) {
    uint64_t unit_end = pos - pos % c->unit + c->unit;
    enum fate fate;

    piece_end = unit_end < end ? unit_end : end;
    fate = piece_fate (c, c->buf + (pos - offset),
                       current ? current + (pos - offset) : NULL,
                       piece_end - pos);
    if (fate != run) {
      if ((r = apply (c, run, c->buf + (run_start - offset),
                      pos - run_start, run_start)) < 0)
        return r;
      run = fate;
      run_start = pos;
    }
  }
  return apply (c, run, c->buf + (run_start - offset), end - run_start,
                run_start);
}

/* How many bytes from offset need no reading: they read as zeros in
 * c->from, and (unless everything is written) in c->current too.
 */
static int
zeros_ahead (struct copy *c, uint64_t offset, uint64_t count, uint64_t *n)
{
  int r = source_zeros_at (c->from, offset, count, n);

  if (r == 0 && *n > 0 && c->current && !c->write_all)
    r = source_zeros_at (c->current, offset, *n, n);
  return r;
}

int
copy_range (struct copy *c, uint64_t offset, uint64_t count)
{
  uint64_t end = offset + count;

  while (offset < end) {
    uint64_t n;
    int r = zeros_ahead (c, offset, end - offset, &n);

    if (r < 0)
      return r;
    if (n > 0) {
      /* The same zeros on both sides need nothing, unless everything
       * is written.
       */
      if (c->write_all && (r = source_zero (c->to, n, offset)) < 0)
        return r;
    }
    else {
      uint64_t chunk_end = offset - offset % COPY_CHUNK + COPY_CHUNK;

      n = (chunk_end < end ? chunk_end : end) - offset;
      if ((r = copy_chunk (c, offset, n)) < 0)
        return r;
    }
    offset += n;
    progress_update (&c->progress, offset);
  }
  return 0;
}

/* The first extent of a map: whether it is allocated in the image
 * itself (data or zero clusters, not its backing files'), and its
 * length.
 */
struct first_map {
  bool in_image;
  uint64_t length;
};

static int
take_first_map (void *opaque, const struct qed_map_extent *e)
{
  struct first_map *m = opaque;

  m->in_image = e->depth == 0 && e->present;
  m->length = e->length;
  return 1;                     /* enough */
}

int
copy_allocated (struct copy *c, struct source *image, bool in_image)
{
  uint64_t size = image->size;

  for (uint64_t offset = 0; offset < size; ) {
    struct first_map m = { 0 };
    int r = qed_image_map (image->qed, size - offset, offset, take_first_map,
                           &m);

    if (r < 0)
      return r;
    if (m.in_image == in_image && (r = copy_range (c, offset, m.length)) < 0)
      return r;
    offset += m.length;
    progress_update (&c->progress, offset);
  }
  return 0;
}
