/* nbdkit-qed tests: resizing images and emptying them.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Growing: the new range reads as zeros, past a backing file that is
 * longer than the old size and past stale bytes in the old last
 * cluster, up to the largest size the tables can map (beyond, the file
 * stays byte for byte the same).  Shrinking: what stays in range reads
 * as before and the file ends up without a leak, whatever the layout
 * of the clusters (counted from the tables parsed here, not only by
 * the engine's check).  Emptying: the image reads as its backing file
 * and the file holds the header and the L1 table.  Requests from other
 * threads stay right across resizes.  And a crash at every write of a
 * shrink, a grow and an emptying loses nothing in range.
 */

#include <config.h>

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "memfile.h"
#include "qed-format.h"
#include "test.h"

#define BASE_SIZE (8 * 1024 * 1024)

static char *base_path;
static unsigned char *base;             /* what base_path holds */

static uint64_t
span_of (uint32_t cs, uint32_t ts)      /* bytes one L2 table maps */
{
  return (uint64_t) ts * cs / 8 * cs;
}

/* The sizes in the tests are multiples of this: an L2 table's range
 * where it is small (4 KiB clusters), so that resizes cross them; else
 * (from 512 MiB with 64 KiB clusters) a part of the first one.
 */
static uint64_t
unit_of (uint32_t cs, uint32_t ts)
{
  uint64_t span = span_of (cs, ts);

  return span <= BASE_SIZE ? span : 32 * cs;
}

static void
write_base (const unsigned char *data, size_t n)
{
  int fd = open (base_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

  CHECK (fd >= 0 && write (fd, data, n) == (ssize_t) n && close (fd) == 0);
}

/* A new image in memory, over base_path (raw) if with_backing. */
static struct memfile *
new_image (uint64_t size, uint32_t cs, uint32_t ts, bool with_backing)
{
  struct memfile *mf = memfile_new (NULL, 0);
  struct qed_create_options copts = {
    .size = size, .cluster_size = cs, .table_size = ts,
    .backing_file = with_backing ? base_path : NULL,
    .backing_format = "raw",
  };

  CHECK_OK (qed_create_file (memfile_file (mf), &copts));
  return mf;
}

/* A model of the disk: the backing file's bytes, or zeros. */
static unsigned char *
new_model (uint64_t size, bool with_backing)
{
  unsigned char *m = calloc (1, size);

  CHECK (m != NULL);
  if (with_backing)
    memcpy (m, base, size < BASE_SIZE ? size : BASE_SIZE);
  return m;
}

static uint64_t
file_size (struct memfile *mf)
{
  size_t size;

  memfile_data (mf, &size);
  return size;
}

/* A copy of the file's bytes, to see that a refusal changed nothing. */
static unsigned char *
snapshot (struct memfile *mf, size_t *size)
{
  const unsigned char *p = memfile_data (mf, size);
  unsigned char *copy = malloc (*size);

  CHECK (copy != NULL);
  memcpy (copy, p, *size);
  return copy;
}

static void
check_unchanged (struct memfile *mf, const unsigned char *before, size_t n)
{
  size_t size;
  const unsigned char *p = memfile_data (mf, &size);

  CHECK (size == n && memcmp (p, before, n) == 0);
}

static struct qed_header
header_of (struct memfile *mf)
{
  size_t size;
  struct qed_header h;

  qed_header_decode (memfile_data (mf, &size), &h);
  return h;
}

static uint64_t
get64 (struct memfile *mf, uint64_t offset)
{
  uint64_t v;
  CHECK_OK (memfile_file (mf)->ops->pread (memfile_file (mf), &v, 8, offset));
  return le64toh (v);
}

static void
put64 (struct memfile *mf, uint64_t offset, uint64_t v)
{
  uint64_t le = htole64 (v);

  CHECK_OK (memfile_file (mf)->ops->pwrite (memfile_file (mf), &le, 8,
                                            offset));
}

/* Where the L2 entry of virtual cluster vc is (0: no table). */
static uint64_t
l2_entry_at (struct memfile *mf, uint64_t vc)
{
  struct qed_header h = header_of (mf);
  uint64_t nelems = (uint64_t) h.table_size * h.cluster_size / 8;
  uint64_t table = get64 (mf, h.l1_table_offset + vc / nelems * 8);

  return table ? table + vc % nelems * 8 : 0;
}

/* The range reads as zeros. */
static void
check_zeros_at (int line, struct qed_image *img, uint64_t offset,
                uint64_t count)
{
  unsigned char *buf = malloc (count ? count : 1);

  CHECK (buf != NULL);
  CHECK_OK (qed_image_read (img, buf, count, offset));
  for (uint64_t i = 0; i < count; i++)
    if (buf[i]) {
      fprintf (stderr, "line %d: byte %" PRIu64 " reads %02x, not 0\n",
               line, offset + i, buf[i]);
      exit (EXIT_FAILURE);
    }
  free (buf);
}
#define check_zeros(img, offset, count) \
  check_zeros_at (__LINE__, img, offset, count)

/* No corruption, no leak (the engine's check), and the file holds
 * exactly the clusters the tables use (parsed here).
 */
static void
check_leak_free_at (int line, struct memfile *mf, struct qed_image *img)
{
  struct qed_check_result res;
  uint64_t in_use = test_check_layout_at (line, mf);

  CHECK_OK (qed_image_check (img, false, &res));
  if (res.corruptions || res.leaks || res.check_errors ||
      file_size (mf) != in_use * qed_image_cluster_size (img)) {
    fprintf (stderr, "line %d: %" PRIu64 " corruptions, %" PRIu64 " leaks,"
             " %" PRIu64 " check errors; the file has %" PRIu64 " bytes,"
             " the tables use %" PRIu64 " clusters\n", line, res.corruptions,
             res.leaks, res.check_errors, file_size (mf), in_use);
    exit (EXIT_FAILURE);
  }
}
#define check_leak_free(mf, img) check_leak_free_at (__LINE__, mf, img)

/* Close and reopen: the size and the data are on disk. */
static struct qed_image *
reopen (struct memfile *mf, struct qed_image *img, uint64_t size)
{
  CHECK_OK (qed_image_close (img));
  CHECK (header_of (mf).image_size == size);
  img = test_open_image (mf);
  CHECK (qed_image_size (img) == size);
  return img;
}

/* Random writes of 1 to 3 clusters (and a bit) all over [0, size). */
static void
scatter (unsigned char *model, struct qed_image *img, uint64_t size,
         uint32_t cs, unsigned n, uint64_t seed)
{
  uint64_t s = seed;

  for (unsigned i = 0; i < n && size > 0; i++) {
    uint64_t off = test_rand (&s) % size;
    uint64_t len = 1 + test_rand (&s) % (3 * cs + 100);

    if (len > size - off)
      len = size - off;
    test_model_write (model, img, off, len, seed + i);
  }
}

/* Growing without a backing file: the bytes past the old end in an
 * allocated last cluster, made stale here as a shrink or another
 * program would leave them, read as zeros.
 */
static void
test_grow_stale_tail (uint32_t cs, uint32_t ts)
{
  const uint64_t unit = unit_of (cs, ts);
  const uint64_t old_size = unit + 5 * cs + 1536, new_size = 3 * unit + 1000;
  const uint64_t rounded = 3 * unit + 1024;
  struct memfile *mf = new_image (old_size, cs, ts, false);
  struct qed_image *img = test_open_image (mf);
  unsigned char *model = new_model (rounded, false), junk[65536];
  uint64_t host;

  scatter (model, img, old_size, cs, 20, cs);
  test_model_write (model, img, old_size - cs - 7, cs + 7, 1);
  host = get64 (mf, l2_entry_at (mf, old_size / cs));
  CHECK (host > QED_ENTRY_ZERO);
  memset (junk, 0xaa, sizeof junk);
  CHECK_OK (memfile_file (mf)->ops->pwrite (memfile_file (mf), junk,
                                            cs - old_size % cs,
                                            host + old_size % cs));

  CHECK_OK (qed_image_resize (img, new_size, false));
  CHECK (qed_image_size (img) == rounded);
  test_model_check (model, rounded, img);
  img = reopen (mf, img, rounded);
  test_model_check (model, rounded, img);
  check_leak_free (mf, img);
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
  free (model);
}

/* Growing over a backing file longer than the image: the new range
 * reads as zeros, not as the backing file; the old range as before,
 * whether its last cluster is allocated or not.  With a garbage tail,
 * the file ends with part of a cluster (as a crash or another program
 * can leave it), where the first new cluster or table goes.
 */
static void
test_grow_over_backing (uint32_t cs, uint32_t ts, bool last_allocated,
                        bool garbage_tail)
{
  const uint64_t unit = unit_of (cs, ts);
  const uint64_t old_size = (BASE_SIZE / 4 / unit) * unit + 3 * cs + 1536;
  const uint64_t new_size = BASE_SIZE + unit / 2 + 512;
  struct memfile *mf = new_image (old_size, cs, ts, true);
  struct qed_image *img = test_open_image (mf);
  unsigned char *model = new_model (new_size, true);

  memset (model + old_size, 0, new_size - old_size);
  scatter (model, img, old_size - cs, cs, 10, 3);
  if (last_allocated)
    test_model_write (model, img, old_size - 100, 100, 4);
  if (garbage_tail) {
    unsigned char junk[100];

    memset (junk, 0x77, sizeof junk);
    CHECK_OK (qed_image_close (img));
    CHECK_OK (memfile_file (mf)->ops->pwrite (memfile_file (mf), junk,
                                              sizeof junk, file_size (mf)));
    img = test_open_image (mf);
  }

  CHECK_OK (qed_image_resize (img, new_size, false));
  CHECK (qed_image_size (img) == new_size);
  test_model_check (model, new_size, img);
  check_leak_free (mf, img);
  /* The new range keeps reading as zeros when written around. */
  test_model_write (model, img, old_size + cs, 10, 5);
  test_model_check (model, new_size, img);
  img = reopen (mf, img, new_size);
  test_model_check (model, new_size, img);
  check_leak_free (mf, img);
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
  free (model);
}

/* A new L2 table whose first entries stay unallocated, where the file
 * ended with part of a cluster of garbage: the table reads as zeros
 * there, not as the garbage.
 */
static void
test_grow_table_over_tail (void)
{
  const uint32_t cs = 4096, ts = 4;
  const uint64_t old_size = 600 * cs;
  struct memfile *mf = new_image (old_size, cs, ts, true);
  struct qed_image *img;
  unsigned char *model = new_model (BASE_SIZE, true), junk[100];

  memset (model + old_size, 0, BASE_SIZE - old_size);
  memset (junk, 0x77, sizeof junk);
  CHECK_OK (memfile_file (mf)->ops->pwrite (memfile_file (mf), junk,
                                            sizeof junk, file_size (mf)));
  img = test_open_image (mf);
  CHECK_OK (qed_image_resize (img, BASE_SIZE, false));
  test_model_check (model, BASE_SIZE, img);
  check_leak_free (mf, img);
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
  free (model);
}

/* Opened for its header alone, an image does not know what its
 * backing file holds past its end: it does not grow, but shrinks.
 */
static void
test_header_only (void)
{
  struct qed_open_options opts = {
    .access = QED_READ_WRITE, .header_only = true,
  };
  struct memfile *mf = new_image (4 << 20, 4096, 1, true);
  struct qed_image *img = test_open_image (mf);
  unsigned char *model = new_model (4 << 20, true), *before;
  size_t n;

  scatter (model, img, 4 << 20, 4096, 10, 17);
  CHECK_OK (qed_image_close (img));
  before = snapshot (mf, &n);
  CHECK_OK (qed_image_open_file (memfile_file (mf), NULL, &opts, &img));
  CHECK_ERR (qed_image_resize (img, 8 << 20, false), EINVAL);
  check_unchanged (mf, before, n);
  CHECK_OK (qed_image_resize (img, 2 << 20, true));
  CHECK_OK (qed_image_close (img));
  img = test_open_image (mf);
  CHECK (qed_image_size (img) == 2 << 20);
  test_model_check (model, 2 << 20, img);
  check_leak_free (mf, img);
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
  free (model);
  free (before);
}

/* Past what the L1 table can map: refused, saying the maximum, and
 * the file is byte for byte as it was; up to it is fine.
 */
static void
test_grow_limit (void)
{
  const uint64_t max = span_of (4096, 1) * 512;        /* 1 GiB */
  struct memfile *mf = new_image (1 << 20, 4096, 1, false);
  struct qed_image *img = test_open_image (mf);
  unsigned char *model = new_model (1 << 20, false), *before;
  size_t n;

  CHECK (qed_image_size_limit (4096, 1) == max);
  scatter (model, img, 1 << 20, 4096, 10, 6);
  CHECK_OK (qed_image_flush (img));
  before = snapshot (mf, &n);
  test_clear_log ();
  CHECK_ERR (qed_image_resize (img, max + 1, false), EINVAL);
  CHECK (test_log_contains ("1073741824 bytes"));
  CHECK_ERR (qed_image_resize (img, UINT64_MAX, true), EINVAL);
  check_unchanged (mf, before, n);
  CHECK (qed_image_size (img) == 1 << 20);

  CHECK_OK (qed_image_resize (img, max, false));
  CHECK (qed_image_size (img) == max);
  check_zeros (img, max - 4096, 4096);
  test_model_check (model, 1 << 20, img);
  img = reopen (mf, img, max);
  check_leak_free (mf, img);
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
  free (model);
  free (before);
}

/* Refusals change nothing: shrinking without leave, a corrupt image, a
 * read-only one.  Sizes round up to 512 bytes.
 */
static void
test_refusals (void)
{
  struct memfile *mf = new_image (4 << 20, 4096, 1, false);
  struct qed_image *img = test_open_image (mf);
  struct qed_open_options ro = { .access = QED_READ_ONLY };
  unsigned char *model = new_model (4 << 20, false), *before;
  size_t n;
  uint64_t entry;

  scatter (model, img, 4 << 20, 4096, 30, 7);
  test_model_write (model, img, 0, 2 * 4096, 8);
  CHECK_OK (qed_image_flush (img));
  before = snapshot (mf, &n);
  CHECK_ERR (qed_image_resize (img, 1 << 20, false), EINVAL);
  CHECK_ERR (qed_image_resize (img, (4 << 20) - 1000, false), EINVAL);
  check_unchanged (mf, before, n);
  CHECK_OK (qed_image_resize (img, (4 << 20) - 511, false));  /* rounds up */
  check_unchanged (mf, before, n);
  CHECK_OK (qed_image_close (img));
  free (before);

  /* Two entries sharing a cluster: not consistent, not shrunk. */
  entry = get64 (mf, l2_entry_at (mf, 0));
  CHECK (entry > QED_ENTRY_ZERO);
  put64 (mf, l2_entry_at (mf, 1), entry);
  before = snapshot (mf, &n);
  img = test_open_image (mf);
  CHECK_ERR (qed_image_resize (img, 1 << 20, true), EIO);
  CHECK (qed_image_size (img) == 4 << 20);
  CHECK_OK (qed_image_close (img));
  check_unchanged (mf, before, n);
  free (before);

  before = snapshot (mf, &n);
  CHECK_OK (qed_image_open_file (memfile_file (mf), NULL, &ro, &img));
  CHECK_ERR (qed_image_resize (img, 8 << 20, false), EROFS);
  CHECK_ERR (qed_image_resize (img, 1 << 20, true), EROFS);
  CHECK_ERR (qed_image_make_empty (img), EROFS);
  CHECK_OK (qed_image_close (img));
  check_unchanged (mf, before, n);
  free (before);
  memfile_free (mf);

  /* Rounding, as qed_create rounds: 1000001 is 1000448 bytes. */
  mf = new_image (1 << 20, 4096, 4, false);
  img = test_open_image (mf);
  CHECK_OK (qed_image_resize (img, 1000001, true));
  CHECK (qed_image_size (img) == 1000448);
  img = reopen (mf, img, 1000448);
  CHECK_OK (qed_image_resize (img, 1000448 * 2 + 1, false));
  CHECK (qed_image_size (img) == 1000448 * 2 + 512);
  check_leak_free (mf, img);
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
  free (model);
}

/* Shrink an image with data all over it and around the cut to cut
 * bytes, then grow it back: what stayed reads as before, the rest as
 * zeros, and the file never has a leak.
 */
static void
test_shrink_at (uint32_t cs, uint32_t ts, bool with_backing, uint64_t cut)
{
  const uint64_t size = 4 * unit_of (cs, ts);
  struct memfile *mf = new_image (size, cs, ts, with_backing);
  struct qed_image *img = test_open_image (mf);
  unsigned char *model = new_model (size, with_backing);
  uint64_t before, around = cut > 2 * cs + 100 ? cut - 2 * cs - 100 : 0;
  unsigned char byte;

  scatter (model, img, size, cs, 60, cut);
  test_model_write (model, img, around, 4 * cs + 200, cut + 1);
  test_model_write (model, img, size - cs, cs, cut + 2);
  before = file_size (mf);

  CHECK_OK (qed_image_resize (img, cut, true));
  CHECK (qed_image_size (img) == cut);
  CHECK (file_size (mf) < before);
  test_model_check (model, cut, img);
  check_leak_free (mf, img);
  /* Requests see the new size. */
  CHECK_ERR (qed_image_read (img, &byte, 1, cut), EINVAL);
  img = reopen (mf, img, cut);
  test_model_check (model, cut, img);
  check_leak_free (mf, img);

  /* Writes go where they should after the clusters moved. */
  scatter (model, img, cut, cs, 10, cut + 3);
  test_model_check (model, cut, img);

  CHECK_OK (qed_image_resize (img, size, false));
  memset (model + cut, 0, size - cut);
  test_model_check (model, size, img);
  check_leak_free (mf, img);
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
  free (model);
}

static void
test_shrink (uint32_t cs, uint32_t ts, bool with_backing)
{
  const uint64_t unit = unit_of (cs, ts);

  test_shrink_at (cs, ts, with_backing, unit + unit / 2 + 1536);
  test_shrink_at (cs, ts, with_backing, 2 * unit);
  test_shrink_at (cs, ts, with_backing, 3 * unit - 5 * cs);
  test_shrink_at (cs, ts, with_backing, 512);
  test_shrink_at (cs, ts, with_backing, 0);
}

/* Layouts where the tables that stay after a shrink to kept L2 tables'
 * ranges get in the way of the tables that move (written with 4 KiB
 * clusters and a fresh image).
 *
 * Fragmented: between the tables that stay lie a kept data cluster and
 * a dropped one, a gap too small for a table.  The compaction must
 * move tables that could stay, to make room.
 */
static void
fragment (unsigned char *model, struct qed_image *img, uint32_t ts,
          uint64_t kept)
{
  const uint64_t span = span_of (4096, ts), dropped = (kept + 1) * span;

  test_model_write (model, img, dropped, 4096, 1);
  for (uint64_t i = 0; i < kept; i++) {
    test_model_write (model, img, i * span + (i % 7) * 4096, 4096, 10 + i);
    test_model_write (model, img, dropped + (i + 1) * 4096, 4096, 100 + i);
  }
}

/* Straddling (2 tables kept): the dropped table lies before the last
 * kept one, which then straddles the new end of the file: its first
 * clusters are needed below the end for data.
 */
static void
straddle (unsigned char *model, struct qed_image *img, uint32_t ts)
{
  const uint64_t span = span_of (4096, ts);

  test_model_write (model, img, 2 * span, 4096, 1);
  test_model_write (model, img, 3 * 4096, 4096, 2);
  test_model_write (model, img, span + 5 * 4096, ts * 4096 - 4096, 3);
}

static void
test_shrink_fragmented (uint32_t ts, uint64_t kept, bool straddling)
{
  const uint32_t cs = 4096;
  const uint64_t span = span_of (cs, ts), size = (kept + 2) * span;
  struct memfile *mf = new_image (size, cs, ts, false);
  struct qed_image *img = test_open_image (mf);
  unsigned char *model = new_model (size, false);
  uint64_t in_use = 1 + ts + kept * ts;

  if (straddling)
    straddle (model, img, ts);
  else
    fragment (model, img, ts, kept);
  CHECK (test_check_layout (mf) * cs == file_size (mf));
  CHECK_OK (qed_image_flush (img));

  CHECK_OK (qed_image_resize (img, kept * span, true));
  test_model_check (model, kept * span, img);
  check_leak_free (mf, img);
  in_use += straddling ? 1 + (ts - 1) : kept;
  CHECK (file_size (mf) == in_use * cs);
  img = reopen (mf, img, kept * span);
  test_model_check (model, kept * span, img);
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
  free (model);
}

/* Move the L1 table to the end of the file (a layout other programs
 * may write): its old place leaks.
 */
static void
move_l1_to_end (struct memfile *mf)
{
  struct qed_header h = header_of (mf);
  struct qed_file *f = memfile_file (mf);
  uint64_t bytes = (uint64_t) h.table_size * h.cluster_size;
  uint64_t to = file_size (mf);
  unsigned char *t = malloc (bytes), hdr[QED_HEADER_STRUCT_SIZE];

  CHECK (t != NULL && to % h.cluster_size == 0);
  CHECK_OK (f->ops->pread (f, t, bytes, h.l1_table_offset));
  CHECK_OK (f->ops->pwrite (f, t, bytes, to));
  memset (t, 0x55, bytes);
  CHECK_OK (f->ops->pwrite (f, t, bytes, h.l1_table_offset));
  h.l1_table_offset = to;
  qed_header_encode (&h, hdr);
  CHECK_OK (f->ops->pwrite (f, hdr, sizeof hdr, 0));
  free (t);
}

/* The L1 table lies past the new end: it moves too, and the header
 * follows it.
 */
static void
test_shrink_l1_moved (void)
{
  const uint32_t cs = 4096, ts = 2;
  const uint64_t size = 3 * span_of (cs, ts);
  struct memfile *mf = new_image (size, cs, ts, false);
  struct qed_image *img = test_open_image (mf);
  unsigned char *model = new_model (size, false);

  scatter (model, img, size, cs, 30, 9);
  CHECK_OK (qed_image_close (img));
  move_l1_to_end (mf);
  img = test_open_image (mf);
  test_model_check (model, size, img);
  CHECK_OK (qed_image_resize (img, size / 2, true));
  CHECK (header_of (mf).l1_table_offset < file_size (mf) - ts * cs);
  test_model_check (model, size / 2, img);
  check_leak_free (mf, img);
  img = reopen (mf, img, size / 2);
  test_model_check (model, size / 2, img);
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
  free (model);
}

/* Emptying: the image reads as its backing file, which holds what it
 * read (as after a commit), or as zeros; the file is the header and
 * the L1 table, which moves back after the header if it lay elsewhere.
 */
static void
test_make_empty (uint32_t cs, uint32_t ts, bool with_backing, bool l1_moved)
{
  const uint64_t size = BASE_SIZE;
  struct memfile *mf = new_image (size, cs, ts, with_backing);
  struct qed_image *img = test_open_image (mf);
  unsigned char *model = new_model (size, with_backing);

  scatter (model, img, size, cs, 40, 11);
  CHECK_OK (qed_image_zero (img, 3 * cs, cs, 0));
  memset (model + cs, 0, 3 * cs);
  if (l1_moved) {
    CHECK_OK (qed_image_close (img));
    move_l1_to_end (mf);
    img = test_open_image (mf);
  }
  test_model_check (model, size, img);
  if (with_backing)
    write_base (model, size);           /* the commit */
  else
    memset (model, 0, size);

  CHECK_OK (qed_image_make_empty (img));
  CHECK (file_size (mf) == (uint64_t) (1 + ts) * cs);
  CHECK (header_of (mf).l1_table_offset == cs);
  test_model_check (model, size, img);
  check_leak_free (mf, img);
  img = reopen (mf, img, size);
  test_model_check (model, size, img);
  /* Writable as before. */
  test_model_write (model, img, size / 3, 3 * cs, 12);
  test_model_check (model, size, img);
  check_leak_free (mf, img);
  CHECK_OK (qed_image_close (img));
  if (with_backing)
    write_base (base, BASE_SIZE);
  memfile_free (mf);
  free (model);
}

/* Threads write and read their own clusters, below every size the
 * image takes, while it shrinks and grows: their requests wait for
 * each resize and then find their clusters where they moved.
 */
#define THREADS 3
#define KEEP (256 * 4096)

struct worker {
  pthread_t thread;
  struct qed_image *img;
  unsigned char *model;
  unsigned t;
  bool *stop;
};

static void *
work (void *arg)
{
  struct worker *w = arg;
  unsigned char buf[4096];
  uint64_t s = w->t + 1;

  while (!__atomic_load_n (w->stop, __ATOMIC_ACQUIRE)) {
    uint64_t c = (test_rand (&s) % (KEEP / 4096 / THREADS)) * THREADS + w->t;

    if (test_rand (&s) % 2) {
      test_fill_pattern (buf, sizeof buf, test_rand (&s));
      CHECK_OK (qed_image_write (w->img, buf, sizeof buf, c * 4096, 0));
      memcpy (w->model + c * 4096, buf, sizeof buf);
    }
    else {
      CHECK_OK (qed_image_read (w->img, buf, sizeof buf, c * 4096));
      CHECK (memcmp (buf, w->model + c * 4096, sizeof buf) == 0);
    }
  }
  return NULL;
}

static void
test_concurrent_requests (void)
{
  const uint64_t size = 16 << 20;
  struct memfile *mf = new_image (size, 4096, 1, false);
  struct qed_image *img = test_open_image (mf);
  unsigned char *model = new_model (size, false);
  struct worker w[THREADS];
  bool stop = false;
  uint64_t s = 5;

  scatter (model, img, size, 4096, 100, 13);
  memfile_delay (mf, MF_PWRITE, 20);
  for (unsigned t = 0; t < THREADS; t++) {
    w[t] = (struct worker) { .img = img, .model = model, .t = t,
                             .stop = &stop };
    CHECK (pthread_create (&w[t].thread, NULL, work, &w[t]) == 0);
  }
  for (int i = 0; i < 8; i++) {
    uint64_t small = KEEP + test_rand (&s) % (4 << 20);

    CHECK_OK (qed_image_resize (img, small, true));
    CHECK_OK (qed_image_resize (img, size, false));
  }
  __atomic_store_n (&stop, true, __ATOMIC_RELEASE);
  for (unsigned t = 0; t < THREADS; t++)
    CHECK (pthread_join (w[t].thread, NULL) == 0);
  memfile_delay (mf, 0, 0);
  test_model_check (model, KEEP, img);
  check_leak_free (mf, img);
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
  free (model);
}

/* Crashes.  The operation recorded in mf is replayed up to every one
 * of its file operations, in every crash mode, and each image a crash
 * leaves is checked by check_crashed.
 */
struct crash_case {
  const char *name;
  const unsigned char *model;   /* the disk before, for the old size */
  uint64_t old_size, new_size;
  /* Emptying without a backing file: each L2 table's range reads as
   * before or as zeros.
   */
  uint64_t all_or_zeros;
  unsigned char *buf;           /* the larger size */
};

static bool
reads_as_before (const struct crash_case *cc, const unsigned char *buf,
                 uint64_t n)
{
  if (cc->all_or_zeros == 0)
    return memcmp (buf, cc->model, n) == 0;
  for (uint64_t off = 0; off < n; off += cc->all_or_zeros) {
    uint64_t len = n - off < cc->all_or_zeros ? n - off : cc->all_or_zeros;

    if (memcmp (buf + off, cc->model + off, len) != 0)
      for (uint64_t i = off; i < off + len; i++)
        if (buf[i])
          return false;
  }
  return true;
}

static void
quiet (enum qed_log_level level, const char *msg)
{
}

#define EXPECT(cond)                                                    \
  do {                                                                  \
    if (!(cond)) {                                                      \
      fprintf (stderr, "%s:%d: %s\n", __FILE__, __LINE__, #cond);       \
      ok = false;                                                       \
      goto out;                                                         \
    }                                                                   \
  } while (0)

/* The image has the old size or the new one; no corruption, and no
 * leak either once opened writable (the operation had NEED_CHECK set
 * while it could leak, so the open repaired); every byte in range
 * reads as before (the new range of a grow as zeros); a repair changes
 * none of that, and growing back after a shrink does not bring back
 * what lay past its end.
 */
static bool
check_crashed (struct memfile *crashed, const struct crash_case *cc)
{
  struct qed_image *img;
  struct qed_check_result res;
  uint64_t size, in_range;
  unsigned char *buf = cc->buf;
  bool ok = true;

  img = test_open_image (crashed);
  size = qed_image_size (img);
  EXPECT (size == cc->old_size || size == cc->new_size);
  EXPECT (qed_image_check (img, false, &res) == 0);
  EXPECT (res.corruptions == 0 && res.check_errors == 0 && res.leaks == 0);
  in_range = size < cc->old_size ? size : cc->old_size;
  for (int pass = 0; pass < 2; pass++) {
    EXPECT (qed_image_read (img, buf, size, 0) == 0);
    EXPECT (reads_as_before (cc, buf, in_range));
    for (uint64_t i = in_range; i < size; i++)
      EXPECT (buf[i] == 0);
    /* Then the same after a repair, which leaves no leak. */
    EXPECT (qed_image_check (img, true, &res) == 0);
    EXPECT (qed_image_check (img, false, &res) == 0);
    EXPECT (res.corruptions == 0 && res.leaks == 0);
  }
  if (size < cc->old_size) {
    EXPECT (qed_image_resize (img, cc->old_size, false) == 0);
    EXPECT (qed_image_read (img, buf, cc->old_size, 0) == 0);
    EXPECT (memcmp (buf, cc->model, size) == 0);
    for (uint64_t i = size; i < cc->old_size; i++)
      EXPECT (buf[i] == 0);
    /* What the crash left past the end went, and leaked nothing. */
    EXPECT (qed_image_check (img, false, &res) == 0);
    EXPECT (res.corruptions == 0 && res.leaks == 0);
  }
 out:
  if (qed_image_close (img) < 0)
    ok = false;
  return ok;
}

static unsigned
crash_everywhere (struct memfile *mf, const struct crash_case *cc)
{
  static const char *const modes[] = {
    "keep all", "drop all", "keep last", "random", "torn",
  };
  size_t n = memfile_recorded (mf);
  unsigned checked = 0;

  qed_set_log_function (quiet);
  for (size_t k = 0; k <= n; k++)
    for (int mode = MF_CRASH_KEEP_ALL; mode <= MF_CRASH_TORN; mode++) {
      struct memfile *crashed = memfile_crash (mf, k, mode, k);
      bool ok = check_crashed (crashed, cc);

      memfile_free (crashed);
      if (!ok) {
        fprintf (stderr, "%s: crash after %zu of %zu file operations (%zu"
                 " flushed), mode %s\n", cc->name, k, n,
                 memfile_flushed (mf, k), modes[mode]);
        exit (EXIT_FAILURE);
      }
      checked++;
    }
  test_capture_log ();
  printf ("%-34s %4zu file operations, %5u crashes checked\n", cc->name, n,
          checked);
  return checked;
}

enum crash_op {
  SHRINK, SHRINK_FRAGMENTED, SHRINK_STRADDLING, GROW, GROW_STALE_TAIL,
  MAKE_EMPTY,
};

/* Record one shrink, grow or emptying of an image holding data all
 * over, then crash it everywhere.
 */
static void
test_crash (const char *name, uint32_t cs, uint32_t ts, bool with_backing,
            uint64_t old_size, uint64_t new_size, enum crash_op op)
{
  struct memfile *mf = new_image (old_size, cs, ts, with_backing);
  struct qed_image *img = test_open_image (mf);
  unsigned char *model = new_model (old_size, with_backing);
  bool make_empty = op == MAKE_EMPTY;
  struct crash_case cc = {
    .name = name, .model = model, .old_size = old_size,
    .new_size = make_empty ? old_size : new_size,
    .all_or_zeros = make_empty && !with_backing ? span_of (cs, ts) : 0,
    .buf = malloc (old_size > new_size ? old_size : new_size),
  };

  if (op == SHRINK_FRAGMENTED)
    fragment (model, img, ts, new_size / span_of (cs, ts));
  else if (op == SHRINK_STRADDLING)
    straddle (model, img, ts);
  else  /* not the last cluster: a grow allocates it over a backing file */
    scatter (model, img, old_size - cs, cs, 40, old_size + new_size);
  CHECK (cc.buf != NULL);
  if (op == GROW_STALE_TAIL) {
    unsigned char junk[4096];
    uint64_t host;

    test_model_write (model, img, old_size - 10, 10, 1);
    host = get64 (mf, l2_entry_at (mf, old_size / cs));
    memset (junk, 0xaa, sizeof junk);
    CHECK_OK (memfile_file (mf)->ops->pwrite (memfile_file (mf), junk,
                                              cs - old_size % cs,
                                              host + old_size % cs));
  }
  CHECK_OK (qed_image_flush (img));
  if (make_empty && with_backing)
    write_base (model, old_size);
  memfile_record (mf);
  if (make_empty)
    CHECK_OK (qed_image_make_empty (img));
  else
    CHECK_OK (qed_image_resize (img, new_size, true));
  crash_everywhere (mf, &cc);
  CHECK_OK (qed_image_close (img));
  if (make_empty && with_backing)
    write_base (base, BASE_SIZE);
  memfile_free (mf);
  free (model);
  free (cc.buf);
}

int
main (void)
{
  uint64_t s = 99;

  test_capture_log ();
  base_path = test_path ("base.raw");
  base = malloc (BASE_SIZE);
  CHECK (base != NULL);
  for (size_t i = 0; i < BASE_SIZE; i++)
    base[i] = test_rand (&s) | 1;       /* never 0: zeros stand out */
  write_base (base, BASE_SIZE);

  test_grow_stale_tail (4096, 1);
  test_grow_stale_tail (65536, 4);
  for (int last = 0; last <= 1; last++) {
    test_grow_over_backing (4096, 1, last, false);
    test_grow_over_backing (4096, 4, last, false);
    test_grow_over_backing (65536, 1, last, false);
    test_grow_over_backing (4096, 1, last, true);
  }
  test_grow_table_over_tail ();
  test_header_only ();
  test_grow_limit ();
  test_refusals ();
  for (int b = 0; b <= 1; b++) {
    test_shrink (4096, 1, b);
    test_shrink (4096, 4, b);
    test_shrink (65536, 1, b);
  }
  test_shrink_fragmented (4, 30, false);
  test_shrink_fragmented (2, 30, false);
  test_shrink_fragmented (4, 2, true);
  test_shrink_fragmented (2, 2, true);
  test_shrink_l1_moved ();
  for (int b = 0; b <= 1; b++) {
    test_make_empty (4096, 1, b, false);
    test_make_empty (65536, 4, b, false);
    test_make_empty (4096, 2, b, true);
  }
  test_concurrent_requests ();

  test_crash ("shrink", 4096, 1, false, 6 << 20, 5 << 19, SHRINK);
  test_crash ("shrink, backing", 4096, 2, true, 6 << 20, (3 << 20) + 1536,
              SHRINK);
  test_crash ("shrink, fragmented", 4096, 4, false, 10 * span_of (4096, 4),
              8 * span_of (4096, 4), SHRINK_FRAGMENTED);
  test_crash ("shrink, straddling", 4096, 4, false, 4 * span_of (4096, 4),
              2 * span_of (4096, 4), SHRINK_STRADDLING);
  test_crash ("grow over a longer backing file", 4096, 1, true,
              (1 << 20) + 2560, 6 << 20, GROW);
  test_crash ("grow, stale tail", 4096, 1, false, (1 << 20) + 2560, 3 << 20,
              GROW_STALE_TAIL);
  test_crash ("make empty", 4096, 1, false, 4 << 20, 0, MAKE_EMPTY);
  test_crash ("make empty, backing", 4096, 4, true, 4 << 20, 0, MAKE_EMPTY);
  free (base);
  return 0;
}
