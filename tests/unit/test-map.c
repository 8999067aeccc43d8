/* nbdkit-qed tests: the map of an image and its backing chain.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * A chain three deep in memfiles, top.qed over mid.qed (shorter) over
 * base.raw (shorter still, not a whole number of sectors, with holes):
 * qed_image_map must give exactly the extents qemu-img map gives such a
 * chain (the rules are in tests/nbd/test-qed-img-map.sh, which compares
 * with QEMU itself), every host offset must hold the bytes the image
 * reads there, and block status must agree with the map.  Then the
 * edges: partial ranges, stopping, invalid entries, files that cannot
 * find holes or fail to, and holes of a real sparse file.
 */

#include <config.h>

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "memfile.h"
#include "test.h"

#define C 4096u                         /* cluster size */
#define MIB (1024 * 1024)
#define TOP_SIZE (24 * MIB)
#define MID_SIZE (16 * MIB)
#define BASE_SIZE (10 * MIB + 100)
#define L1_SPAN (8 * MIB)               /* 4K clusters, table_size 4 */

/* An opener serving memfiles by name. */
struct named {
  const char *name;
  struct memfile *mf;
};
static struct named files[3];

static int
named_resolve (const struct qed_opener *o, const char *name,
               const char *base, char **resolved)
{
  *resolved = strdup (name);
  return *resolved ? 0 : -ENOMEM;
}

static int
named_open (const struct qed_opener *o, const char *name, unsigned flags,
            struct qed_file **filep)
{
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
    if (files[i].name && strcmp (files[i].name, name) == 0) {
      *filep = memfile_file (files[i].mf);
      return 0;
    }
  return -ENOENT;
}

static const struct qed_opener opener = {
  .resolve = named_resolve, .open = named_open,
};

static struct memfile *
new_qed (const char *name, uint64_t size, const char *backing,
         const char *backing_format)
{
  struct memfile *mf = memfile_new (NULL, 0);
  struct qed_create_options copts = {
    .size = size, .cluster_size = C, .table_size = 4,
    .backing_file = backing, .backing_format = backing_format,
  };

  CHECK_OK (qed_create_file (memfile_file (mf), &copts));
  return mf;
}

static struct qed_image *
open_named (const char *name, enum qed_access access)
{
  struct qed_open_options opts = { .access = access, .opener = &opener };
  struct qed_image *img;

  CHECK_OK (qed_image_open (name, &opts, &img));
  return img;
}

static void
write_pattern (struct qed_image *img, uint64_t offset, size_t n,
               uint64_t seed)
{
  unsigned char *buf = malloc (n);

  CHECK (buf != NULL);
  test_fill_pattern (buf, n, seed);
  CHECK_OK (qed_image_write (img, buf, n, offset, 0));
  free (buf);
}

/* The extents a map reported. */
#define MAX_EXTENTS 64
struct extents {
  struct qed_map_extent e[MAX_EXTENTS];
  size_t n;
  int stop_at;                  /* return this from call stop_after */
  size_t stop_after;
};

static int
collect (void *opaque, const struct qed_map_extent *e)
{
  struct extents *x = opaque;

  CHECK (x->n < MAX_EXTENTS);
  x->e[x->n++] = *e;
  return x->stop_after && x->n == x->stop_after ? x->stop_at : 0;
}

struct expect {
  uint64_t offset, length;
  unsigned depth;
  bool present, zero, data, has_host;
};

static void
check_extents_at (int line, const struct extents *x,
                  const struct expect *want, size_t nwant)
{
  for (size_t i = 0; i < x->n || i < nwant; i++) {
    const struct qed_map_extent *e = i < x->n ? &x->e[i] : NULL;
    const struct expect *w = i < nwant ? &want[i] : NULL;

    if (e && w && e->offset == w->offset && e->length == w->length &&
        e->depth == w->depth && e->present == w->present &&
        e->zero == w->zero && e->data == w->data &&
        e->has_host == w->has_host)
      continue;
    fprintf (stderr, "line %d: extent %zu:\n", line, i);
    if (e)
      fprintf (stderr, "  got  %" PRIu64 "+%" PRIu64 " depth %u present %d"
               " zero %d data %d has_host %d\n", e->offset, e->length,
               e->depth, e->present, e->zero, e->data, e->has_host);
    if (w)
      fprintf (stderr, "  want %" PRIu64 "+%" PRIu64 " depth %u present %d"
               " zero %d data %d has_host %d\n", w->offset, w->length,
               w->depth, w->present, w->zero, w->data, w->has_host);
    exit (EXIT_FAILURE);
  }
}
#define check_extents(x, want) \
  check_extents_at (__LINE__, x, want, sizeof want / sizeof want[0])

/* Each host offset holds what the image reads there, in the file of
 * the extent's depth (past a raw file's end, the image reads zeros).
 */
static void
check_hosts (struct qed_image *img, const struct extents *x)
{
  for (size_t i = 0; i < x->n; i++) {
    const struct qed_map_extent *e = &x->e[i];
    unsigned char *buf = malloc (e->length);
    const unsigned char *data;
    size_t size, inside;

    CHECK (buf != NULL);
    CHECK (e->depth < 3 && e->file &&
           strcmp (e->file, files[e->depth].name) == 0);
    if (!e->has_host) {
      free (buf);
      continue;
    }
    CHECK_OK (qed_image_read (img, buf, e->length, e->offset));
    data = memfile_data (files[e->depth].mf, &size);
    inside = e->host >= size ? 0
      : e->length < size - e->host ? e->length : size - e->host;
    CHECK (memcmp (buf, data + e->host, inside) == 0);
    for (size_t j = inside; j < e->length; j++)
      CHECK (buf[j] == 0);
    free (buf);
  }
}

/* Block status says data where the map does, holes and zeros
 * elsewhere, merged.
 */
struct status {
  uint64_t offset[MAX_EXTENTS], length[MAX_EXTENTS];
  unsigned type[MAX_EXTENTS];
  size_t n;
};

static int
collect_status (void *opaque, uint64_t offset, uint64_t length,
                unsigned type)
{
  struct status *s = opaque;

  CHECK (s->n < MAX_EXTENTS);
  s->offset[s->n] = offset;
  s->length[s->n] = length;
  s->type[s->n++] = type;
  return 0;
}

static void
check_status_agrees (struct qed_image *img, const struct extents *x)
{
  struct status s = { .n = 0 };
  size_t j = 0;

  CHECK_OK (qed_image_block_status (img, qed_image_size (img), 0,
                                    collect_status, &s));
  for (size_t i = 0; i < x->n; j++) {
    unsigned type = x->e[i].data ? 0 : QED_EXTENT_HOLE | QED_EXTENT_ZERO;
    uint64_t end = x->e[i].offset;

    CHECK (j < s.n && s.offset[j] == x->e[i].offset && s.type[j] == type);
    while (i < x->n && (x->e[i].data ? 0 : 3u) == type)
      end += x->e[i++].length;
    CHECK (s.offset[j] + s.length[j] == end);
  }
  CHECK (j == s.n);
}

static struct memfile *top, *mid, *base;

static void
make_chain (void)
{
  static unsigned char base_bytes[BASE_SIZE];
  struct qed_image *img;

  test_fill_pattern (base_bytes + 16 * C, 2 * C, 1);      /* under mid */
  test_fill_pattern (base_bytes + 32 * C, 8 * C, 2);
  test_fill_pattern (base_bytes + 2 * MIB, 5000, 3);      /* 2 blocks */
  test_fill_pattern (base_bytes + 10 * MIB, 100, 4);      /* the end */
  base = memfile_new (base_bytes, sizeof base_bytes);
  memfile_holes (base, 4096);

  mid = new_qed ("mid.qed", MID_SIZE, "base.raw", "raw");
  top = new_qed ("top.qed", TOP_SIZE, "mid.qed", NULL);
  files[0] = (struct named) { "top.qed", top };
  files[1] = (struct named) { "mid.qed", mid };
  files[2] = (struct named) { "base.raw", base };

  img = open_named ("mid.qed", QED_READ_WRITE);
  write_pattern (img, 16 * C, 2 * C, 5);
  CHECK_OK (qed_image_zero (img, C, 20 * C, 0));
  write_pattern (img, 1 * MIB, C, 6);
  CHECK_OK (qed_image_close (img));

  img = open_named ("top.qed", QED_READ_WRITE);
  write_pattern (img, 0, 2 * C, 7);
  write_pattern (img, 3 * C, C, 8);     /* then 2: not contiguous */
  write_pattern (img, 2 * C, C, 9);
  write_pattern (img, 17 * C, C, 10);   /* over mid's data */
  CHECK_OK (qed_image_zero (img, 2 * C, 8 * C, 0));
  CHECK_OK (qed_image_zero (img, 4 * C, L1_SPAN - 2 * C, 0));
  CHECK_OK (qed_image_close (img));
}

/* What qemu-img map --output=json shows for the chain. */
static const struct expect chain_map[] = {
  { 0, 2 * C, 0, true, false, true, true },
  { 2 * C, C, 0, true, false, true, true },
  { 3 * C, C, 0, true, false, true, true },
  { 4 * C, 4 * C, 2, true, true, false, true },         /* raw hole */
  { 8 * C, 2 * C, 0, true, true, false, false },        /* zero clusters */
  { 10 * C, 6 * C, 2, true, true, false, true },
  { 16 * C, C, 1, true, false, true, true },            /* mid's data */
  { 17 * C, C, 0, true, false, true, true },
  { 18 * C, 2 * C, 2, true, true, false, true },
  { 20 * C, C, 1, true, true, false, false },           /* mid's zeros */
  { 21 * C, 11 * C, 2, true, true, false, true },
  { 32 * C, 8 * C, 2, true, false, true, true },        /* raw data */
  { 40 * C, MIB - 40 * C, 2, true, true, false, true },
  { MIB, C, 1, true, false, true, true },
  { MIB + C, MIB - C, 2, true, true, false, true },
  { 2 * MIB, 2 * C, 2, true, false, true, true },
  { 2 * MIB + 2 * C, L1_SPAN - 2 * MIB - 4 * C, 2, true, true, false, true },
  /* Zero clusters across an L2 table boundary: one extent. */
  { L1_SPAN - 2 * C, 4 * C, 0, true, true, false, false },
  { L1_SPAN + 2 * C, 10 * MIB - L1_SPAN - 2 * C, 2, true, true, false,
    true },
  { 10 * MIB, 100, 2, true, false, true, true },        /* to the end */
  { 10 * MIB + 100, 412, 2, true, true, false, true },  /* its sector */
  { 10 * MIB + 512, MID_SIZE - 10 * MIB - 512, 1, false, true, false,
    false },                                            /* past base */
  { MID_SIZE, TOP_SIZE - MID_SIZE, 0, false, true, false, false },
};

static void
test_chain (void)
{
  struct qed_image *img = open_named ("top.qed", QED_READ_ONLY);
  struct extents x = { .n = 0 };

  CHECK_OK (qed_image_map (img, TOP_SIZE, 0, collect, &x));
  check_extents (&x, chain_map);
  check_hosts (img, &x);
  /* Raw bytes are at their own offsets. */
  for (size_t i = 0; i < x.n; i++)
    if (x.e[i].depth == 2)
      CHECK (x.e[i].host == x.e[i].offset);
  /* Top's first clusters, written in one request, then 3 before 2. */
  CHECK (x.e[1].host == x.e[0].host + 3 * C);
  CHECK (x.e[2].host == x.e[0].host + 2 * C);
  check_status_agrees (img, &x);
  CHECK_OK (qed_image_close (img));
}

/* A range that starts and ends inside extents is cut to it, hosts
 * moved along.
 */
static void
test_partial (void)
{
  struct qed_image *img = open_named ("top.qed", QED_READ_ONLY);
  struct extents all = { .n = 0 }, x = { .n = 0 };
  static const struct expect want[] = {
    { C + 100, C - 100, 0, true, false, true, true },
    { 2 * C, C, 0, true, false, true, true },
    { 3 * C, C, 0, true, false, true, true },
    { 4 * C, C + 7, 2, true, true, false, true },
  };

  CHECK_OK (qed_image_map (img, C, 0, collect, &all));
  CHECK (all.n == 1);
  CHECK_OK (qed_image_map (img, 4 * C + 7 - 100, C + 100, collect, &x));
  check_extents (&x, want);
  CHECK (x.e[0].host == all.e[0].host + C + 100);
  CHECK (x.e[3].host == 4 * C);
  check_hosts (img, &x);

  /* Empty, and out of range. */
  x.n = 0;
  CHECK_OK (qed_image_map (img, 0, 5 * C, collect, &x));
  CHECK (x.n == 0);
  CHECK_ERR (qed_image_map (img, 2, TOP_SIZE - 1, collect, &x), EINVAL);
  CHECK_ERR (qed_image_map (img, 1, TOP_SIZE, collect, &x), EINVAL);
  CHECK (x.n == 0);
  CHECK_OK (qed_image_close (img));
}

/* fn stops the map: with 0 for a positive value, else with it. */
static void
test_stop (void)
{
  struct qed_image *img = open_named ("top.qed", QED_READ_ONLY);
  struct extents x = { .stop_at = 1, .stop_after = 1 };

  CHECK_OK (qed_image_map (img, TOP_SIZE, 0, collect, &x));
  CHECK (x.n == 1);
  x = (struct extents) { .stop_at = -EINTR, .stop_after = 5 };
  CHECK_ERR (qed_image_map (img, TOP_SIZE, 0, collect, &x), EINTR);
  CHECK (x.n == 5);
  /* The last extent, reported at the end, can stop it too. */
  x = (struct extents) { .stop_at = -EINTR, .stop_after = 23 };
  CHECK_ERR (qed_image_map (img, TOP_SIZE, 0, collect, &x), EINTR);
  CHECK (x.n == 23);
  CHECK_OK (qed_image_close (img));
}

/* A raw file that cannot find holes, or fails to, is data. */
static void
test_raw_without_holes (void)
{
  struct qed_image *img = open_named ("top.qed", QED_READ_ONLY);
  struct extents x = { .n = 0 };
  static const struct expect want[] = {
    { 4 * C, 4 * C, 2, true, false, true, true },
    { 8 * C, 2 * C, 0, true, true, false, false },
    { 10 * C, 6 * C, 2, true, false, true, true },
  };
  uint64_t before = memfile_count (base, MF_EXTENT);

  memfile_fail (base, MF_EXTENT, 0, EIO, true);
  CHECK_OK (qed_image_map (img, 12 * C, 4 * C, collect, &x));
  check_extents (&x, want);
  CHECK (memfile_count (base, MF_EXTENT) > before);
  memfile_fail (base, 0, 0, 0, false);

  /* The same without the capability; holes again with it. */
  memfile_without (base, MF_EXTENT);
  x.n = 0;
  CHECK_OK (qed_image_map (img, 12 * C, 4 * C, collect, &x));
  check_extents (&x, want);
  memfile_holes (base, 4096);
  x.n = 0;
  CHECK_OK (qed_image_map (img, 12 * C, 4 * C, collect, &x));
  CHECK (x.n == 3 && x.e[0].zero && !x.e[0].data);
  CHECK_OK (qed_image_close (img));
}

/* Unallocated down to a QED image at the bottom: that image's depth,
 * not present; past a shorter QED backing file, the overlay's.
 */
static void
test_qed_bottom (void)
{
  struct memfile *a = new_qed ("a.qed", 4 * MIB, "b.qed", NULL);
  struct memfile *b = new_qed ("b.qed", 2 * MIB, NULL, NULL);
  struct named saved[3];
  struct qed_image *img;
  struct extents x = { .n = 0 };
  static const struct expect want[] = {
    { 0, C, 1, true, false, true, true },
    { C, 2 * MIB - C, 1, false, true, false, false },
    { 2 * MIB, 2 * MIB, 0, false, true, false, false },
  };

  memcpy (saved, files, sizeof files);
  memset (files, 0, sizeof files);
  files[0] = (struct named) { "a.qed", a };
  files[1] = (struct named) { "b.qed", b };
  img = open_named ("b.qed", QED_READ_WRITE);
  write_pattern (img, 0, C, 11);
  CHECK_OK (qed_image_close (img));

  img = open_named ("a.qed", QED_READ_ONLY);
  CHECK_OK (qed_image_map (img, 4 * MIB, 0, collect, &x));
  check_extents (&x, want);
  check_hosts (img, &x);
  check_status_agrees (img, &x);
  CHECK_OK (qed_image_close (img));

  memcpy (files, saved, sizeof files);
  memfile_free (a);
  memfile_free (b);
}

/* An invalid entry fails the map (block status calls it data). */
static void
test_bad_entry (void)
{
  struct memfile *mf = test_new_image (MIB, C, 4);
  struct qed_file *f = memfile_file (mf);
  struct qed_image *img = test_open_image (mf);
  struct qed_open_options ro = { .access = QED_READ_ONLY };
  struct extents x = { .n = 0 };
  struct status s = { .n = 0 };
  uint64_t l1e, bad = htole64 (UINT64_C (1) << 40);

  write_pattern (img, 0, C, 12);
  CHECK_OK (qed_image_close (img));
  CHECK_OK (f->ops->pread (f, &l1e, 8, C));     /* the L1 table's first */
  CHECK_OK (f->ops->pwrite (f, &bad, 8, le64toh (l1e) + 5 * 8));

  /* Read-only: opened for writing, the image would be repaired. */
  CHECK_OK (qed_image_open_file (f, NULL, &ro, &img));
  test_clear_log ();
  CHECK_ERR (qed_image_map (img, MIB, 0, collect, &x), EIO);
  CHECK (test_log_contains ("map: an invalid table entry maps virtual"
                            " offset 20480"));
  /* Nothing after it was reported (nor the extent it ended). */
  CHECK (x.n == 1 && x.e[0].length == C && x.e[0].data);
  CHECK_OK (qed_image_block_status (img, MIB, 0, collect_status, &s));
  CHECK (s.n == 4 && s.offset[2] == 5 * C && s.length[2] == C &&
         s.type[2] == 0);
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
}

/* The POSIX file layer finds the holes of a sparse file. */
static void
test_posix_holes (void)
{
  char *raw = test_path ("sparse.raw"), *qed = test_path ("over.qed");
  struct qed_create_options copts = {
    .size = 2 * MIB, .backing_file = raw, .backing_format = "raw",
  };
  struct qed_open_options opts = { .access = QED_READ_ONLY };
  struct qed_image *img;
  struct extents x = { .n = 0 };
  static const struct expect want[] = {
    { 0, 256 * 1024, 1, true, true, false, true },
    { 256 * 1024, 4096, 1, true, false, true, true },
    { 260 * 1024, MIB - 260 * 1024, 1, true, true, false, true },
    { MIB, MIB, 0, false, true, false, false },
  };
  char block[4096];
  int fd;

  memset (block, 0x5a, sizeof block);
  fd = open (raw, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  CHECK (fd >= 0);
  CHECK (ftruncate (fd, MIB) == 0);
  CHECK (pwrite (fd, block, sizeof block, 256 * 1024) == sizeof block);
  CHECK (fsync (fd) == 0);
  /* Some file systems store no holes. */
  if (lseek (fd, 0, SEEK_DATA) != 256 * 1024) {
    fprintf (stderr, "test-map: %s has no holes: skipped\n", raw);
    close (fd);
    free (raw);
    free (qed);
    return;
  }
  close (fd);

  CHECK_OK (qed_create (qed, &copts));
  CHECK_OK (qed_image_open (qed, &opts, &img));
  CHECK_OK (qed_image_map (img, 2 * MIB, 0, collect, &x));
  check_extents (&x, want);
  CHECK (strcmp (x.e[0].file, raw) == 0 && strcmp (x.e[3].file, qed) == 0);
  CHECK_OK (qed_image_close (img));
  free (raw);
  free (qed);
}

int
main (void)
{
  test_capture_log ();
  make_chain ();
  test_chain ();
  test_partial ();
  test_stop ();
  test_raw_without_holes ();
  test_qed_bottom ();
  test_bad_entry ();
  test_posix_holes ();
  memfile_free (top);
  memfile_free (mid);
  memfile_free (base);
  return 0;
}
