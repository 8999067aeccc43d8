/* nbdkit-qed tests: the allocation path, seen in the file's bytes.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The L1 and L2 tables are parsed here from the memfile (not through
 * the engine), to see where new clusters and tables go, that every
 * entry points inside the file as soon as a write returns, that
 * concurrent writers allocate a cluster once, and that reads issue one
 * pread per contiguous run.
 */

#include <config.h>

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qed-format.h"
#include "memfile.h"
#include "test.h"

#define CLUSTER 4096u
#define TABLE 4u
#define NELEMS (TABLE * CLUSTER / 8)            /* entries per table */
#define L1_SPAN ((uint64_t) NELEMS * CLUSTER)   /* bytes per L1 entry */
#define SIZE (48 * 1024 * 1024)                 /* 6 L1 entries */

static unsigned char *model;

/* The file as the tables describe it. */
static uint64_t
get64 (const unsigned char *p)
{
  uint64_t v;
  memcpy (&v, p, 8);
  return le64toh (v);
}

static void
file_header (struct memfile *mf, struct qed_header *h)
{
  size_t size;
  const unsigned char *p = memfile_data (mf, &size);

  CHECK (size >= QED_HEADER_STRUCT_SIZE);
  qed_header_decode (p, h);
}

/* The file's size, less the zeros that the engine grows it by ahead of
 * its clusters (at most a MiB; see "Notes on the design" in
 * engine/internal.h): where the last cluster in use ends.
 */
static uint64_t
file_size (struct memfile *mf)
{
  size_t size;
  const unsigned char *p = memfile_data (mf, &size);
  struct qed_header h;
  uint64_t tbytes, end;

  qed_header_decode (p, &h);
  tbytes = (uint64_t) h.table_size * h.cluster_size;
  end = (uint64_t) h.header_size * h.cluster_size;
  if (h.l1_table_offset + tbytes > end)
    end = h.l1_table_offset + tbytes;
  for (uint64_t i = 0; i < tbytes / 8; i++) {
    uint64_t t = get64 (p + h.l1_table_offset + i * 8);

    if (t == 0)
      continue;
    if (t + tbytes > end)
      end = t + tbytes;
    for (uint64_t j = 0; j < tbytes / 8; j++) {
      uint64_t e = get64 (p + t + j * 8);

      if (e > QED_ENTRY_ZERO && e + h.cluster_size > end)
        end = e + h.cluster_size;
    }
  }
  CHECK (end <= size && size - end <= 1024 * 1024);
  return end;
}

/* The geometry, from the header in the file. */
struct geom {
  uint64_t cluster, table, nelems, l1n;
};

static void
file_geom (struct memfile *mf, struct geom *g)
{
  struct qed_header h;
  uint64_t span;

  file_header (mf, &h);
  g->cluster = h.cluster_size;
  g->table = h.table_size;
  g->nelems = g->table * g->cluster / 8;
  span = g->nelems * g->cluster;
  g->l1n = (h.image_size + span - 1) / span;
  CHECK (h.l1_table_offset == g->cluster);
}

static uint64_t
l1_entry (struct memfile *mf, uint64_t index)
{
  struct qed_header h;
  size_t size;
  const unsigned char *p;

  file_header (mf, &h);
  p = memfile_data (mf, &size);
  CHECK (h.l1_table_offset + (index + 1) * 8 <= size);
  return get64 (p + h.l1_table_offset + index * 8);
}

/* The L2 entry of virtual cluster vc (0 when there is no table). */
static uint64_t
l2_entry (struct memfile *mf, uint64_t vc)
{
  struct geom g;
  uint64_t table;
  size_t size;
  const unsigned char *p;

  file_geom (mf, &g);
  table = l1_entry (mf, vc / g.nelems);
  if (table == 0)
    return 0;
  p = memfile_data (mf, &size);
  CHECK (table + (vc % g.nelems + 1) * 8 <= size);
  return get64 (p + table + (vc % g.nelems) * 8);
}

/* Every table and data cluster is aligned, after the header, wholly
 * inside the file, and referenced once.
 */
#define check_layout(mf) test_check_layout (mf)

static void
write_clusters (struct memfile *mf, struct qed_image *img, uint64_t vc,
                uint64_t n, uint64_t seed)
{
  test_model_write (model, img, vc * CLUSTER, n * CLUSTER, seed);
  check_layout (mf);
}

/* New clusters are appended in order; n clusters in one request are
 * n contiguous host clusters; a new L1 range gets a new, otherwise
 * empty, table.
 */
static void
test_append_order (struct memfile *mf, struct qed_image *img)
{
  uint64_t end = file_size (mf), t0, t1, d, d7;
  size_t size;
  const unsigned char *p;

  CHECK (end == CLUSTER * (1 + TABLE));
  CHECK (l1_entry (mf, 0) == 0);

  /* The first write in L1 range 0: a table and a data cluster, both
   * new, side by side at the old end of the file.
   */
  write_clusters (mf, img, 3, 1, 1);
  t0 = l1_entry (mf, 0);
  d = l2_entry (mf, 3);
  CHECK (file_size (mf) == end + (TABLE + 1) * CLUSTER);
  CHECK (t0 >= end && d >= end);
  CHECK (t0 + TABLE * CLUSTER <= d || d + CLUSTER <= t0);
  p = memfile_data (mf, &size);
  for (uint64_t j = 0; j < NELEMS; j++)
    CHECK (get64 (p + t0 + j * 8) == (j == 3 ? d : 0));
  end = file_size (mf);

  /* Into the existing table: one cluster each, in request order. */
  write_clusters (mf, img, 7, 1, 2);
  d7 = l2_entry (mf, 7);
  CHECK (d7 == end);
  CHECK (file_size (mf) == end + CLUSTER);
  end += CLUSTER;
  write_clusters (mf, img, 5, 1, 3);
  CHECK (l2_entry (mf, 5) == end);
  end += CLUSTER;
  CHECK (l1_entry (mf, 0) == t0);

  /* Six clusters in one request. */
  write_clusters (mf, img, 10, 6, 4);
  for (unsigned i = 0; i < 6; i++)
    CHECK (l2_entry (mf, 10 + i) == end + i * CLUSTER);
  end += 6 * CLUSTER;
  CHECK (file_size (mf) == end);

  /* New, allocated, new: the allocated one is written in place. */
  write_clusters (mf, img, 6, 3, 5);
  CHECK (l2_entry (mf, 6) == end);
  CHECK (l2_entry (mf, 7) == d7);
  CHECK (l2_entry (mf, 8) == end + CLUSTER);
  end += 2 * CLUSTER;
  CHECK (file_size (mf) == end);

  /* Across the 4 KiB slices of the L2 table. */
  write_clusters (mf, img, 510, 5, 6);
  for (unsigned i = 0; i < 5; i++)
    CHECK (l2_entry (mf, 510 + i) == end + i * CLUSTER);
  end += 5 * CLUSTER;
  CHECK (file_size (mf) == end);

  /* Across the end of L1 range 0: range 1 gets its table. */
  write_clusters (mf, img, NELEMS - 2, 4, 7);
  t1 = l1_entry (mf, 1);
  CHECK (t1 != 0 && t1 != t0 && t1 >= end);
  CHECK (l2_entry (mf, NELEMS - 2) >= end);
  CHECK (l2_entry (mf, NELEMS - 1) == l2_entry (mf, NELEMS - 2) + CLUSTER);
  CHECK (l2_entry (mf, NELEMS + 1) == l2_entry (mf, NELEMS) + CLUSTER);
  CHECK (file_size (mf) == end + (4 + TABLE) * CLUSTER);
  p = memfile_data (mf, &size);
  for (uint64_t j = 2; j < NELEMS; j++)
    CHECK (get64 (p + t1 + j * 8) == 0);
  end = file_size (mf);

  /* Rewriting allocated clusters allocates nothing. */
  write_clusters (mf, img, 5, 4, 8);
  test_model_write (model, img, 10 * CLUSTER + 1, 6 * CLUSTER - 2, 9);
  CHECK (file_size (mf) == end);
  /* Clusters 4 and 9 are still holes: filling them appends. */
  write_clusters (mf, img, 3, 13, 10);
  CHECK (l2_entry (mf, 4) == end && l2_entry (mf, 9) == end + CLUSTER);
  end += 2 * CLUSTER;
  CHECK (file_size (mf) == end);
  test_model_check (model, SIZE, img);
}

/* A small unaligned write into a new cluster writes the data, not the
 * padding around it, yet the cluster lies wholly inside the file.
 */
static void
test_no_padding (struct memfile *mf, struct qed_image *img)
{
  static const struct { uint64_t offset; size_t n; } w[] = {
    { 20 * CLUSTER + 1000, 100 },               /* table exists */
    { 2 * L1_SPAN + 5 * CLUSTER + 17, 3000 },   /* new table too */
    { 30 * CLUSTER + 1, CLUSTER - 2 },          /* one byte each side */
    { 40 * CLUSTER + CLUSTER - 1, 2 },          /* across two clusters */
  };

  for (size_t i = 0; i < sizeof w / sizeof w[0]; i++) {
    uint64_t end = file_size (mf);
    uint64_t bytes = memfile_bytes_written (mf);
    uint64_t clusters = (w[i].offset + w[i].n - 1) / CLUSTER
      - w[i].offset / CLUSTER + 1;
    uint64_t grown;

    test_model_write (model, img, w[i].offset, w[i].n, 100 + i);
    check_layout (mf);
    grown = file_size (mf) - end;
    CHECK (grown == clusters * CLUSTER ||
           grown == (clusters + TABLE) * CLUSTER);
    /* The data, at most a header, the L2 entries, an L1 entry and a
     * byte or two to extend the file; the padding would be thousands
     * of bytes more (except in w[2], there for the layout checks).
     */
    bytes = memfile_bytes_written (mf) - bytes;
    if (bytes > w[i].n + QED_HEADER_STRUCT_SIZE + 8 * clusters + 8 + 2) {
      fprintf (stderr, "write %zu of %zu bytes wrote %" PRIu64 " bytes\n",
               i, w[i].n, bytes);
      exit (EXIT_FAILURE);
    }
  }
  test_model_check (model, SIZE, img);
}

/* The clusters around [offset, offset + n) read as data there and
 * zeros elsewhere.
 */
static void
check_only (struct qed_image *img, uint64_t offset, const unsigned char *data,
            size_t n)
{
  unsigned char buf[3 * CLUSTER];
  uint64_t start = offset / CLUSTER * CLUSTER;

  size_t len = (offset - start + n + CLUSTER - 1) / CLUSTER * CLUSTER;

  CHECK (len <= sizeof buf);
  CHECK_OK (qed_image_read (img, buf, len, start));
  for (size_t i = 0; i < len; i++)
    if (i < offset - start || i >= offset - start + n)
      CHECK (buf[i] == 0);
    else
      CHECK (buf[i] == data[i - (offset - start)]);
}

/* A partial cluster at the end of the file (here garbage) is where the
 * next cluster goes: its old bytes must not show through, whether a
 * data cluster or a new L2 table lands on them.
 */
static void
test_partial_tail (void)
{
  struct memfile *mf = test_new_image (SIZE, CLUSTER, TABLE);
  struct qed_image *img;
  unsigned char *garbage, data[100];
  size_t size;
  const unsigned char *p;
  struct qed_check_result res;

  img = test_open_image (mf);
  test_fill_pattern (data, sizeof data, 7);
  CHECK_OK (qed_image_write (img, data, sizeof data, 0, 0));
  CHECK_OK (qed_image_close (img));

  for (unsigned tail = 1; tail < 2 * CLUSTER; tail += 1365)
    for (int new_table = 0; new_table <= 1; new_table++) {
      uint64_t offset = new_table ? L1_SPAN + CLUSTER - 50 : CLUSTER + 2000;
      struct memfile *mf2;

      /* The file plus tail bytes of garbage. */
      p = memfile_data (mf, &size);
      garbage = malloc (size + tail);
      CHECK (garbage != NULL);
      memcpy (garbage, p, size);
      memset (garbage + size, 0xee, tail);
      mf2 = memfile_new (garbage, size + tail);
      free (garbage);

      img = test_open_image (mf2);
      CHECK_OK (qed_image_write (img, data, sizeof data, offset, 0));
      check_only (img, offset, data, sizeof data);
      check_only (img, 0, data, sizeof data);
      check_layout (mf2);
      if (new_table) {
        uint64_t t = l1_entry (mf2, 1);
        p = memfile_data (mf2, &size);
        for (uint64_t j = 0; j < NELEMS; j++)
          CHECK (get64 (p + t + j * 8) == (j == 0 ? l2_entry (mf2, NELEMS)
                                           : j == 1
                                           ? l2_entry (mf2, NELEMS + 1)
                                           : 0));
      }
      CHECK_OK (qed_image_check (img, false, &res));
      CHECK (res.corruptions == 0 && res.check_errors == 0);
      CHECK_OK (qed_image_close (img));

      /* Again after reopening. */
      img = test_open_image (mf2);
      check_only (img, offset, data, sizeof data);
      CHECK_OK (qed_image_close (img));
      memfile_free (mf2);
    }
  memfile_free (mf);
}

/* Many threads writing into one fresh cluster, or each into its own
 * cluster of one fresh L1 range, at the same moment.
 */
#define THREADS 16

struct racer {
  struct qed_image *img;
  pthread_barrier_t *barrier;
  uint64_t offset;
  size_t n;
  uint64_t seed;
};

static void *
racer (void *arg)
{
  struct racer *r = arg;
  unsigned char *buf = malloc (r->n);

  CHECK (buf != NULL);
  test_fill_pattern (buf, r->n, r->seed);
  pthread_barrier_wait (r->barrier);
  CHECK_OK (qed_image_write (r->img, buf, r->n, r->offset, 0));
  free (buf);
  return NULL;
}

static void
race (struct qed_image *img, uint64_t base, uint64_t stride, size_t n,
      uint64_t seed)
{
  pthread_t th[THREADS];
  struct racer r[THREADS];
  pthread_barrier_t barrier;

  CHECK (pthread_barrier_init (&barrier, NULL, THREADS) == 0);
  for (unsigned i = 0; i < THREADS; i++) {
    r[i] = (struct racer) {
      .img = img, .barrier = &barrier, .offset = base + i * stride,
      .n = n, .seed = seed + i,
    };
    CHECK (pthread_create (&th[i], NULL, racer, &r[i]) == 0);
  }
  for (unsigned i = 0; i < THREADS; i++)
    CHECK (pthread_join (th[i], NULL) == 0);
  CHECK (pthread_barrier_destroy (&barrier) == 0);
  for (unsigned i = 0; i < THREADS; i++)
    test_fill_pattern (model + r[i].offset, r[i].n, r[i].seed);
}

static void
test_races (struct memfile *mf, struct qed_image *img)
{
  unsigned char *buf = malloc (L1_SPAN);

  CHECK (buf != NULL);
  /* One cluster, 16 slices of it, in a range with a table (0) and in
   * range 3 (whose table the first round makes); repeated to give the
   * race a chance.  race_new_tables has more of the second kind.
   */
  for (unsigned round = 0; round < 16; round++) {
    uint64_t vc = round % 2 ? 3 * NELEMS + 100 + round : 600 + round;
    uint64_t end = file_size (mf);
    bool had_table = l1_entry (mf, vc / NELEMS) != 0;

    race (img, vc * CLUSTER, CLUSTER / THREADS, CLUSTER / THREADS,
          1000 + round * THREADS);
    check_layout (mf);
    CHECK (l2_entry (mf, vc) > QED_ENTRY_ZERO);
    CHECK (file_size (mf) == end + CLUSTER * (had_table ? 1 : 1 + TABLE));
    CHECK_OK (qed_image_read (img, buf, CLUSTER, vc * CLUSTER));
    CHECK (memcmp (buf, model + vc * CLUSTER, CLUSTER) == 0);
  }

  /* Unaligned pieces straddling cluster boundaries: each thread's
   * piece shares clusters with its neighbours'.
   */
  for (unsigned round = 0; round < 6; round++) {
    uint64_t base = (1000 + round * 40) * (uint64_t) CLUSTER + 123;
    uint64_t end = file_size (mf);
    uint64_t first = base / CLUSTER;
    uint64_t last = (base + THREADS * 1500 - 1) / CLUSTER;

    race (img, base, 1500, 1500, 5000 + round * THREADS);
    check_layout (mf);
    CHECK (file_size (mf) == end + (last - first + 1) * CLUSTER);
    CHECK_OK (qed_image_read (img, buf, THREADS * 1500, base));
    CHECK (memcmp (buf, model + base, THREADS * 1500) == 0);
  }

  /* Each thread its own cluster of L1 range 4, whose table is new,
   * spread over the table's four 4 KiB slices: one table, one cluster
   * each.
   */
  {
    uint64_t end = file_size (mf);
    uint64_t vc = 4 * NELEMS + 5, stride = NELEMS / THREADS;

    CHECK (l1_entry (mf, 4) == 0);
    race (img, vc * CLUSTER, stride * CLUSTER, CLUSTER, 9000);
    check_layout (mf);
    CHECK (l1_entry (mf, 4) >= end);
    CHECK (file_size (mf) == end + (THREADS + TABLE) * CLUSTER);
    for (unsigned i = 0; i < THREADS; i++)
      CHECK (l2_entry (mf, vc + i * stride) >= end);
  }
  free (buf);
  test_model_check (model, SIZE, img);
}

/* A disk whose size is not a multiple of the cluster size: its last
 * cluster is allocated whole and only its first bytes are the disk's.
 */
static void
test_disk_end (void)
{
  const uint64_t size = 10 * CLUSTER + 512;
  struct memfile *mf = test_new_image (size, CLUSTER, TABLE);
  struct qed_image *img;
  struct qed_check_result res;
  unsigned char data[CLUSTER], buf[2 * CLUSTER];
  uint64_t end;

  img = test_open_image (mf);
  CHECK (qed_image_size (img) == size);
  test_fill_pattern (data, sizeof data, 31);
  end = file_size (mf);
  CHECK_OK (qed_image_write (img, data, 512, 10 * CLUSTER, 0));
  check_layout (mf);
  CHECK (file_size (mf) == end + (1 + TABLE) * CLUSTER);
  CHECK (l2_entry (mf, 10) != 0);
  /* Up to the last byte, from the cluster before. */
  CHECK_OK (qed_image_write (img, data, CLUSTER, 9 * CLUSTER + 512, 0));
  CHECK_ERR (qed_image_write (img, data, 2, size - 1, 0), EINVAL);
  CHECK_OK (qed_image_read (img, buf, CLUSTER + 512, 9 * CLUSTER));
  for (size_t i = 0; i < 512; i++)
    CHECK (buf[i] == 0);
  CHECK (memcmp (buf + 512, data, CLUSTER) == 0);
  CHECK_OK (qed_image_check (img, false, &res));
  CHECK (res.corruptions == 0 && res.leaks == 0 && res.check_errors == 0);
  CHECK_OK (qed_image_close (img));
  check_layout (mf);
  memfile_free (mf);
}

/* Many threads into one fresh cluster of a fresh L1 range, 16 times,
 * in an image with one-cluster tables (so many ranges).
 */
static void
test_race_new_tables (void)
{
  const uint64_t c = 4096, size = 32 * 1024 * 1024, span = 512 * c;
  struct memfile *mf = test_new_image (size, c, 1);
  struct qed_image *img;
  struct qed_check_result res;
  unsigned char *saved = model, buf[4096];

  model = calloc (1, size);
  CHECK (model != NULL);
  img = test_open_image (mf);
  for (unsigned round = 0; round < size / span; round++) {
    uint64_t end = file_size (mf);
    uint64_t vc = round * 512 + (round * 37) % 500;

    CHECK (l1_entry (mf, round) == 0);
    if (round % 2)
      race (img, vc * c, c / THREADS, c / THREADS, 20000 + round * THREADS);
    else                        /* 16 threads into 3 clusters */
      race (img, vc * c + 1000, 500, 500, 20000 + round * THREADS);
    check_layout (mf);
    CHECK (l1_entry (mf, round) >= end);
    CHECK (file_size (mf) == end + c * (round % 2 ? 2 : 4));
    CHECK_OK (qed_image_read (img, buf, c, vc * c));
    CHECK (memcmp (buf, model + vc * c, c) == 0);
  }
  CHECK_OK (qed_image_check (img, false, &res));
  CHECK (res.corruptions == 0 && res.leaks == 0 && res.check_errors == 0);
  CHECK_OK (qed_image_close (img));
  img = test_open_image (mf);
  for (uint64_t off = 0; off < size; off += sizeof buf) {
    CHECK_OK (qed_image_read (img, buf, sizeof buf, off));
    CHECK (memcmp (buf, model + off, sizeof buf) == 0);
  }
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
  free (model);
  model = saved;
}

/* A read touches, in one L2 slice: 4 contiguous data clusters, 2 zero
 * clusters, 2 unallocated ones, 2 data clusters in reverse host order,
 * then 2 contiguous ones: 4 runs of data, 4 preads.
 */
static void
test_runs (struct memfile **mfp, struct qed_image **imgp)
{
  const uint64_t base = 1800;                   /* in range 0, slice 3 */
  struct memfile *mf = *mfp, *mf2;
  struct qed_image *img = *imgp;
  uint64_t before;
  unsigned char *buf = malloc (12 * CLUSTER), *copy;
  const unsigned char *p;
  size_t size;
  uint64_t table;

  CHECK (buf != NULL);
  for (uint64_t i = 0; i < 12; i++)
    CHECK (l2_entry (mf, base + i) == 0);
  test_model_write (model, img, base * CLUSTER, 4 * CLUSTER, 20);
  test_model_write (model, img, (base + 9) * CLUSTER, CLUSTER, 21);
  test_model_write (model, img, (base + 8) * CLUSTER, CLUSTER, 22);
  test_model_write (model, img, (base + 10) * CLUSTER, 2 * CLUSTER, 23);
  check_layout (mf);
  CHECK (l2_entry (mf, base + 8) == l2_entry (mf, base + 9) + CLUSTER);
  CHECK (l2_entry (mf, base + 10) == l2_entry (mf, base + 8) + CLUSTER);

  /* Zero clusters: set in the table on disk, then reopened. */
  CHECK_OK (qed_image_close (img));
  p = memfile_data (mf, &size);
  copy = malloc (size);
  CHECK (copy != NULL);
  memcpy (copy, p, size);
  table = l1_entry (mf, 0);
  for (uint64_t i = 4; i < 6; i++) {
    uint64_t one = htole64 (QED_ENTRY_ZERO);
    memcpy (copy + table + (base + i) * 8, &one, 8);
  }
  mf2 = memfile_new (copy, size);
  free (copy);
  memfile_free (mf);
  *mfp = mf = mf2;
  *imgp = img = test_open_image (mf);
  CHECK (l2_entry (mf, base + 4) == QED_ENTRY_ZERO);

  /* Warm the cache, then count. */
  CHECK_OK (qed_image_read (img, buf, 12 * CLUSTER, base * CLUSTER));
  before = memfile_count (mf, MF_PREAD);
  CHECK_OK (qed_image_read (img, buf, 12 * CLUSTER, base * CLUSTER));
  CHECK (memfile_count (mf, MF_PREAD) - before == 4);
  CHECK (memcmp (buf, model + base * CLUSTER, 12 * CLUSTER) == 0);

  /* Unaligned ends, same runs. */
  before = memfile_count (mf, MF_PREAD);
  CHECK_OK (qed_image_read (img, buf, 12 * CLUSTER - 3000,
                            base * CLUSTER + 1000));
  CHECK (memfile_count (mf, MF_PREAD) - before == 4);
  CHECK (memcmp (buf, model + base * CLUSTER + 1000,
                 12 * CLUSTER - 3000) == 0);

  /* Zero and unallocated clusters alone: no I/O at all. */
  before = memfile_count (mf, MF_PREAD);
  CHECK_OK (qed_image_read (img, buf, 4 * CLUSTER, (base + 4) * CLUSTER));
  CHECK (memfile_count (mf, MF_PREAD) == before);
  for (size_t i = 0; i < 4 * CLUSTER; i++)
    CHECK (buf[i] == 0);

  /* A range without an L2 table: no I/O either. */
  CHECK (l1_entry (mf, 5) == 0);
  before = memfile_count (mf, MF_PREAD);
  CHECK_OK (qed_image_read (img, buf, 12 * CLUSTER, 5 * L1_SPAN + 1000));
  CHECK (memfile_count (mf, MF_PREAD) == before);
  free (buf);
}

/* Zeroing unallocated clusters without a backing file changes nothing
 * in the file.
 */
static void
test_zero_unallocated (struct memfile *mf, struct qed_image *img)
{
  size_t size;
  const unsigned char *p = memfile_data (mf, &size);
  unsigned char *before = malloc (size);
  uint64_t writes = memfile_count (mf, MF_PWRITE | MF_TRUNCATE | MF_PUNCH);
  uint64_t vc = 1806;                            /* unallocated */
  size_t size2;

  CHECK (before != NULL);
  memcpy (before, p, size);
  CHECK (l2_entry (mf, vc) == 0 && l2_entry (mf, vc + 1) == 0);
  CHECK_OK (qed_image_zero (img, 2 * CLUSTER, vc * CLUSTER, 0));
  CHECK_OK (qed_image_zero (img, 2 * CLUSTER, vc * CLUSTER,
                            QED_FAST_ZERO | QED_MAY_TRIM));
  CHECK_OK (qed_image_zero (img, 100, vc * CLUSTER + 50, 0));
  /* Zero clusters already read as zeros too. */
  CHECK_OK (qed_image_zero (img, 2 * CLUSTER, (vc - 2) * CLUSTER, 0));
  /* A whole L1 range without a table, and most of one. */
  CHECK (l1_entry (mf, 5) == 0);
  CHECK_OK (qed_image_zero (img, L1_SPAN, 5 * L1_SPAN, 0));
  CHECK_OK (qed_image_zero (img, L1_SPAN - 3 * CLUSTER - 10,
                            5 * L1_SPAN + CLUSTER + 10, QED_FAST_ZERO));
  CHECK (memfile_count (mf, MF_PWRITE | MF_TRUNCATE | MF_PUNCH) == writes);
  p = memfile_data (mf, &size2);
  CHECK (size2 == size && memcmp (p, before, size) == 0);
  free (before);
  test_model_check (model, SIZE, img);
}

/* An entry that points at the cluster starting at the end of the file
 * (or at a partial last cluster) reads as an error.  Once the file had
 * grown over that place, after a clean close and reopen, the entry
 * would be valid and share the cluster with the range that was given
 * it.  The writable open repairs such an entry before the file grows.
 */
static void
test_entry_past_end (bool partial)
{
  struct memfile *mf = test_new_image (SIZE, CLUSTER, TABLE);
  struct qed_image *img;
  struct qed_check_result res;
  struct geom g;
  unsigned char a[CLUSTER], b[CLUSTER];
  uint64_t end, e, table;
  size_t size;

  img = test_open_image (mf);
  memset (a, 'a', sizeof a);
  CHECK_OK (qed_image_write (img, a, sizeof a, 0, 0));
  CHECK_OK (qed_image_close (img));

  /* Point virtual cluster 5 at the end of the file, or at a partial
   * last cluster; NEED_CHECK stays clear.
   */
  file_geom (mf, &g);
  table = l1_entry (mf, 0);
  memfile_data (mf, &size);
  end = size;
  if (partial) {
    CHECK_OK (memfile_file (mf)->ops->truncate (memfile_file (mf),
                                                end + 100));
  }
  e = htole64 (end);
  CHECK_OK (memfile_file (mf)->ops->pwrite (memfile_file (mf), &e, 8,
                                            table + 5 * 8));

  test_clear_log ();
  img = test_open_image (mf);
  /* The open does not look for it: the entry reads as an error. */
  CHECK (!test_log_contains ("past the end"));
  CHECK (qed_image_read (img, a, sizeof a, 5 * CLUSTER) == -EIO);
  /* An in-place write does not grow the file: still not looked for. */
  memset (b, 'a', sizeof b);
  CHECK_OK (qed_image_write (img, b, sizeof b, 0, 0));
  CHECK (!test_log_contains ("past the end"));
  /* The first write that grows the file clears it first; from then on
   * (and after any reopen) the range is a hole, not an alias.
   */
  memset (b, 'b', sizeof b);
  CHECK_OK (qed_image_write (img, b, sizeof b, 9 * CLUSTER, 0));
  CHECK (test_log_contains ("1 table entry points past the end of the file;"
                            " cleared before the file grows"));
  CHECK_OK (qed_image_read (img, a, sizeof a, 5 * CLUSTER));
  CHECK (a[0] == 0 && memcmp (a, a + 1, sizeof a - 1) == 0);
  CHECK_OK (qed_image_close (img));
  img = test_open_image (mf);
  CHECK_OK (qed_image_read (img, a, sizeof a, 5 * CLUSTER));
  CHECK (memcmp (a, b, sizeof a) != 0);
  memset (a, 'c', sizeof a);
  CHECK_OK (qed_image_write (img, a, sizeof a, 5 * CLUSTER, 0));
  CHECK_OK (qed_image_read (img, b, sizeof b, 9 * CLUSTER));
  CHECK (b[0] == 'b' && b[CLUSTER - 1] == 'b');
  CHECK_OK (qed_image_check (img, false, &res));
  CHECK (res.corruptions == 0 && res.check_errors == 0);
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
}

/* The first growth clears a past-end entry while other requests run:
 * reads of its range fail or read zeros, never another range's data;
 * in-place writes go on; every new cluster is a cluster of its own.
 */
struct past_end_racer {
  struct qed_image *img;
  pthread_barrier_t *barrier;
  unsigned i;
};

static void *
past_end_racer (void *p)
{
  struct past_end_racer *r = p;
  unsigned char buf[CLUSTER], got[CLUSTER];

  pthread_barrier_wait (r->barrier);
  if (r->i % 2 == 0) {
    memset (buf, 'A' + r->i, sizeof buf);
    CHECK_OK (qed_image_write (r->img, buf, sizeof buf,
                               (20 + r->i) * CLUSTER, 0));
    return NULL;
  }
  memset (buf, 'a', sizeof buf);
  for (unsigned k = 0; k < 50; k++) {
    int r_read = qed_image_read (r->img, got, sizeof got, 5 * CLUSTER);
    CHECK (r_read == -EIO ||
           (r_read == 0 && got[0] == 0 &&
            memcmp (got, got + 1, sizeof got - 1) == 0));
    CHECK_OK (qed_image_write (r->img, buf, sizeof buf, 0, 0));
  }
  return NULL;
}

static void
check_past_end_race (struct qed_image *img)
{
  unsigned char got[CLUSTER];

  for (unsigned i = 0; i < THREADS; i += 2) {
    CHECK_OK (qed_image_read (img, got, sizeof got, (20 + i) * CLUSTER));
    CHECK (got[0] == 'A' + i && got[CLUSTER - 1] == 'A' + i);
  }
  CHECK_OK (qed_image_read (img, got, sizeof got, 5 * CLUSTER));
  CHECK (got[0] == 0 && memcmp (got, got + 1, sizeof got - 1) == 0);
  CHECK_OK (qed_image_read (img, got, sizeof got, 0));
  CHECK (got[0] == 'a' && got[CLUSTER - 1] == 'a');
}

static void
test_entry_past_end_race (void)
{
  struct memfile *mf = test_new_image (SIZE, CLUSTER, TABLE);
  struct qed_image *img;
  struct qed_check_result res;
  pthread_t th[THREADS];
  struct past_end_racer r[THREADS];
  pthread_barrier_t barrier;
  unsigned char a[CLUSTER];
  uint64_t e, table;
  size_t size;

  img = test_open_image (mf);
  memset (a, 'a', sizeof a);
  CHECK_OK (qed_image_write (img, a, sizeof a, 0, 0));
  CHECK_OK (qed_image_close (img));
  /* Virtual cluster 5 points where the third new cluster will go. */
  table = l1_entry (mf, 0);
  memfile_data (mf, &size);
  e = htole64 (size + 2 * CLUSTER);
  CHECK_OK (memfile_file (mf)->ops->pwrite (memfile_file (mf), &e, 8,
                                            table + 5 * 8));

  test_clear_log ();
  img = test_open_image (mf);
  CHECK (pthread_barrier_init (&barrier, NULL, THREADS) == 0);
  for (unsigned i = 0; i < THREADS; i++) {
    r[i] = (struct past_end_racer) { .img = img, .barrier = &barrier,
                                     .i = i };
    CHECK (pthread_create (&th[i], NULL, past_end_racer, &r[i]) == 0);
  }
  for (unsigned i = 0; i < THREADS; i++)
    CHECK (pthread_join (th[i], NULL) == 0);
  CHECK (pthread_barrier_destroy (&barrier) == 0);
  CHECK (test_log_contains ("1 table entry points past the end of the file;"
                            " cleared before the file grows"));
  check_past_end_race (img);
  CHECK_OK (qed_image_close (img));

  img = test_open_image (mf);
  check_past_end_race (img);
  CHECK_OK (qed_image_check (img, false, &res));
  CHECK (res.corruptions == 0 && res.leaks == 0 && res.check_errors == 0);
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
}

/* Without a backing file, once NEED_CHECK is set, the file grows a
 * MiB ahead of its clusters (see "Notes on the design" in
 * engine/internal.h); closing the image cuts that tail, and a check in
 * between does not count it as leaked.
 */
static void
test_grown_tail (void)
{
  struct memfile *mf = test_new_image (SIZE, CLUSTER, TABLE);
  struct qed_image *img = test_open_image (mf);
  struct qed_check_result res;
  unsigned char data[512];
  size_t size;

  test_fill_pattern (data, sizeof data, 3);
  for (uint64_t vc = 0; vc < 8; vc++)
    CHECK_OK (qed_image_write (img, data, sizeof data, vc * 3 * CLUSTER, 0));
  memfile_data (mf, &size);
  CHECK (size > file_size (mf));
  CHECK (size % (1024 * 1024) == 0);

  CHECK_OK (qed_image_check (img, false, &res));
  CHECK (res.corruptions == 0 && res.leaks == 0 && res.check_errors == 0);
  CHECK_OK (qed_image_write (img, data, sizeof data, 40 * CLUSTER, 0));
  CHECK_OK (qed_image_close (img));
  memfile_data (mf, &size);
  CHECK (size == file_size (mf));
  check_layout (mf);
  memfile_free (mf);
}

int
main (void)
{
  struct memfile *mf = test_new_image (SIZE, CLUSTER, TABLE);
  struct qed_image *img;
  struct qed_check_result res;

  test_capture_log ();
  model = calloc (1, SIZE);
  CHECK (model != NULL);
  img = test_open_image (mf);

  test_append_order (mf, img);
  test_no_padding (mf, img);
  test_races (mf, img);
  test_runs (&mf, &img);
  test_zero_unallocated (mf, img);
  test_entry_past_end (false);
  test_entry_past_end (true);
  test_entry_past_end_race ();

  /* Consistent, and the same after closing and reopening. */
  CHECK_OK (qed_image_check (img, false, &res));
  CHECK (res.corruptions == 0 && res.leaks == 0 && res.check_errors == 0);
  test_model_check (model, SIZE, img);
  CHECK_OK (qed_image_close (img));
  check_layout (mf);
  img = test_open_image (mf);
  test_model_check (model, SIZE, img);
  CHECK_OK (qed_image_check (img, false, &res));
  CHECK (res.corruptions == 0 && res.leaks == 0 && res.check_errors == 0);
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);

  test_partial_tail ();
  test_grown_tail ();
  test_disk_end ();
  test_race_new_tables ();
  free (model);
  return 0;
}
