/* nbdkit-qed tests: the L2 cache under a small budget.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * 4 KiB clusters and one-cluster tables: every L1 entry has its own
 * 4 KiB L2 table, so the number of L2 preads a workload needs is easy
 * to predict.  A budget of l2_cache_size bytes holds at most
 * l2_cache_size / 4096 of these tables; touching more in a cycle must
 * re-read them, touching fewer must not.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "memfile.h"
#include "test.h"

#define CLUSTER 4096u
#define NELEMS (CLUSTER / 8)                    /* table_size 1 */
#define SPAN ((uint64_t) NELEMS * CLUSTER)      /* 2 MiB per L1 entry */
#define NRANGES 64
#define SIZE (NRANGES * SPAN)                   /* 128 MiB */
#define POPULATED 32                            /* ranges with data */
#define TABLE_BYTES CLUSTER

#define SMALL_CACHE (64 * 1024)
#define SMALL_TABLES (SMALL_CACHE / TABLE_BYTES)        /* 16 */
#define BIG_CACHE (1024 * 1024)

static unsigned char *model;

static struct qed_image *
open_image (struct memfile *mf, size_t cache)
{
  struct qed_open_options opts = {
    .access = QED_READ_WRITE, .l2_cache_size = cache,
  };
  struct qed_image *img;

  CHECK_OK (qed_image_open_file (memfile_file (mf), NULL, &opts, &img));
  return img;
}

/* A cluster with data in L1 range r. */
static uint64_t
data_offset (unsigned r)
{
  return r * SPAN + (r * 7 % NELEMS) * (uint64_t) CLUSTER;
}

/* Read one cluster of each of ranges [first, first + n); returns the
 * number of preads beyond the one data pread each needs.
 */
static uint64_t
table_reads (struct memfile *mf, struct qed_image *img, unsigned first,
             unsigned n)
{
  unsigned char buf[CLUSTER];
  uint64_t before = memfile_count (mf, MF_PREAD), preads;

  for (unsigned r = first; r < first + n; r++) {
    CHECK_OK (qed_image_read (img, buf, CLUSTER, data_offset (r)));
    CHECK (memcmp (buf, model + data_offset (r), CLUSTER) == 0);
  }
  preads = memfile_count (mf, MF_PREAD) - before;
  CHECK (preads >= n);
  return preads - n;
}

static void
populate (struct memfile *mf)
{
  struct qed_image *img = open_image (mf, 0);

  for (unsigned r = 0; r < POPULATED; r++)
    test_model_write (model, img, data_offset (r), CLUSTER, r + 1);
  /* More clusters in range 0, some contiguous. */
  test_model_write (model, img, 100 * CLUSTER + 17, 5 * CLUSTER, 100);
  test_model_write (model, img, 300 * CLUSTER, CLUSTER, 101);
  CHECK_OK (qed_image_close (img));
}

static void
test_budget (struct memfile *mf)
{
  struct qed_image *img = open_image (mf, SMALL_CACHE);
  unsigned char buf[CLUSTER];
  uint64_t before, misses;

  /* Everything reads back through a cache much smaller than the
   * tables.
   */
  test_model_check (model, SIZE, img);

  /* One region again and again: its table is read once. */
  CHECK (table_reads (mf, img, 3, 1) <= 1);
  for (int i = 0; i < 10; i++)
    CHECK (table_reads (mf, img, 3, 1) == 0);
  before = memfile_count (mf, MF_PREAD);
  for (int i = 0; i < 10; i++) {
    CHECK_OK (qed_image_read (img, buf, CLUSTER, 300 * CLUSTER));
    CHECK (memcmp (buf, model + 300 * CLUSTER, CLUSTER) == 0);
  }
  CHECK (memfile_count (mf, MF_PREAD) - before <= 10 + 1);

  /* Half the budget in a cycle: after the first pass, all hits. */
  table_reads (mf, img, 0, SMALL_TABLES / 2);
  for (int pass = 0; pass < 3; pass++)
    CHECK (table_reads (mf, img, 0, SMALL_TABLES / 2) == 0);

  /* Twice the budget in a cycle: a pass must miss every table the
   * cache cannot have held since the last pass.
   */
  table_reads (mf, img, 0, 2 * SMALL_TABLES);
  for (int pass = 0; pass < 3; pass++) {
    misses = table_reads (mf, img, 0, 2 * SMALL_TABLES);
    if (misses < SMALL_TABLES) {
      fprintf (stderr, "a cycle over %u tables re-read only %" PRIu64
               " with room for %u\n", 2 * SMALL_TABLES, misses,
               SMALL_TABLES);
      exit (EXIT_FAILURE);
    }
  }
  CHECK_OK (qed_image_close (img));

  /* A budget larger than all the tables: one read each, ever. */
  img = open_image (mf, BIG_CACHE);
  CHECK (table_reads (mf, img, 0, POPULATED) <= POPULATED);
  for (int pass = 0; pass < 3; pass++)
    CHECK (table_reads (mf, img, 0, POPULATED) == 0);
  test_model_check (model, SIZE, img);
  CHECK_OK (qed_image_close (img));
}

/* 8 threads at once, each reading and writing its own L1 ranges (r %
 * 8 == id), half of which have no table yet.
 */
#define THREADS 8

struct worker {
  struct qed_image *img;
  unsigned id;
};

/* Write a pattern at offset (write) or read it back against the model;
 * each thread has ranges of its own, so the model is exact.
 */
static void
write_or_verify (struct worker *w, unsigned char *buf, size_t n,
                 uint64_t offset, bool write, uint64_t seed)
{
  if (write) {
    test_fill_pattern (buf, n, seed);
    CHECK_OK (qed_image_write (w->img, buf, n, offset, 0));
    memcpy (model + offset, buf, n);
    return;
  }
  CHECK_OK (qed_image_read (w->img, buf, n, offset));
  if (memcmp (buf, model + offset, n) != 0) {
    fprintf (stderr, "thread %u: read of %zu at %" PRIu64 " differs\n",
             w->id, n, offset);
    exit (EXIT_FAILURE);
  }
}

static void *
worker (void *arg)
{
  struct worker *w = arg;
  uint64_t state = 1000 + w->id;
  unsigned char *buf = malloc (3 * CLUSTER);

  CHECK (buf != NULL);
  for (int i = 0; i < 300; i++) {
    unsigned r = (test_rand (&state) % (NRANGES / THREADS)) * THREADS + w->id;
    size_t n = 1 + test_rand (&state) % (3 * CLUSTER);
    /* Clusters near the start of the range, so they get reused. */
    uint64_t offset = r * SPAN + test_rand (&state) % (64 * CLUSTER);

    write_or_verify (w, buf, n, offset, test_rand (&state) % 2, state);
  }
  free (buf);
  return NULL;
}

/* Run THREADS threads of fn on the image, then check it, also after
 * reopening.
 */
static void
run_threads (struct memfile *mf, void *(*fn) (void *))
{
  struct qed_image *img = open_image (mf, SMALL_CACHE);
  pthread_t th[THREADS];
  struct worker w[THREADS];
  struct qed_check_result res;

  for (unsigned i = 0; i < THREADS; i++) {
    w[i] = (struct worker) { .img = img, .id = i };
    CHECK (pthread_create (&th[i], NULL, fn, &w[i]) == 0);
  }
  for (unsigned i = 0; i < THREADS; i++)
    CHECK (pthread_join (th[i], NULL) == 0);
  test_model_check (model, SIZE, img);
  CHECK_OK (qed_image_check (img, false, &res));
  CHECK (res.corruptions == 0 && res.leaks == 0 && res.check_errors == 0);
  CHECK_OK (qed_image_close (img));

  img = open_image (mf, SMALL_CACHE);
  test_model_check (model, SIZE, img);
  CHECK_OK (qed_image_close (img));
}

/* 8 threads sharing every table: thread id owns the clusters with
 * vc % 8 == id, all over the disk, so the threads allocate in the same
 * slices while the small cache evicts them.
 */
static void *
sharer (void *arg)
{
  struct worker *w = arg;
  uint64_t state = 2000 + w->id;
  unsigned char *buf = malloc (CLUSTER);

  CHECK (buf != NULL);
  for (int i = 0; i < 400; i++) {
    uint64_t vc = (test_rand (&state) % (SIZE / CLUSTER / THREADS))
      * THREADS + w->id;
    uint64_t in = test_rand (&state) % CLUSTER;
    size_t n = 1 + test_rand (&state) % (CLUSTER - in);
    uint64_t offset = vc * CLUSTER + in;

    write_or_verify (w, buf, n, offset, test_rand (&state) % 3, state);
  }
  free (buf);
  return NULL;
}

/* Tables held in the cache for a while (here: new tables left
 * unlinked by failed writes) may take it past its budget, but once
 * they are let go the budget holds again.
 */
static void
test_budget_after_pins (void)
{
  struct qed_create_options copts = {
    .size = SIZE, .cluster_size = CLUSTER, .table_size = 1,
  };
  struct memfile *mf = memfile_new (NULL, 0);
  struct qed_image *img;
  unsigned char buf[CLUSTER];
  uint64_t misses;
  const unsigned held = 2 * SMALL_TABLES;
  const unsigned cycle = SMALL_TABLES + SMALL_TABLES / 2;

  memset (model, 0, SIZE);
  CHECK_OK (qed_create_file (memfile_file (mf), &copts));
  populate (mf);
  img = open_image (mf, SMALL_CACHE);

  /* Allocating writes into ranges without a table, each failing. */
  test_fill_pattern (buf, sizeof buf, 77);
  for (unsigned r = POPULATED; r < POPULATED + held; r++) {
    memfile_fail (mf, MF_PWRITE, 0, ENOSPC, false);
    CHECK_ERR (qed_image_write (img, buf, CLUSTER, data_offset (r), 0),
               ENOSPC);
  }
  memfile_fail (mf, 0, 0, 0, false);
  /* Now they succeed, and the tables are linked and let go. */
  for (unsigned r = POPULATED; r < POPULATED + held; r++) {
    CHECK_OK (qed_image_write (img, buf, CLUSTER, data_offset (r), 0));
    memcpy (model + data_offset (r), buf, CLUSTER);
  }
  test_model_check (model, SIZE, img);

  /* A cycle over more tables than the budget must miss. */
  table_reads (mf, img, 0, cycle);
  for (int pass = 0; pass < 3; pass++) {
    misses = table_reads (mf, img, 0, cycle);
    if (misses < cycle - SMALL_TABLES) {
      fprintf (stderr, "after %u tables were held: a cycle over %u tables"
               " re-read %" PRIu64 " with a budget of %u (the cache kept"
               " more than its budget)\n", held, cycle, misses,
               SMALL_TABLES);
      exit (EXIT_FAILURE);
    }
  }
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
}

/* The default budget: 4 MiB (under a thousand 4 KiB slices) through the
 * page cache, 32 MiB with direct I/O.  Slices of an image with more of
 * them than the first holds, read in a cycle: the second pass misses
 * most of them by default, none with direct.
 */
static void
test_default_budget (void)
{
  const unsigned nslices = 3000;
  const uint64_t slice_span = (uint64_t) CLUSTER / 8 * CLUSTER; /* 2 MiB */
  struct qed_create_options copts = {
    .size = nslices * slice_span, .cluster_size = CLUSTER, .table_size = 16,
  };
  struct memfile *mf = memfile_new (NULL, 0);
  unsigned char buf[512] = { 1 };
  uint64_t before, misses[2];

  CHECK_OK (qed_create_file (memfile_file (mf), &copts));
  for (int direct = 0; direct <= 1; direct++) {
    struct qed_open_options opts = {
      .access = QED_READ_WRITE, .direct = direct,
    };
    struct qed_image *img;

    CHECK_OK (qed_image_open_file (memfile_file (mf), NULL, &opts, &img));
    for (int pass = 0; pass < 2; pass++) {
      before = memfile_count (mf, MF_PREAD);
      for (unsigned i = 0; i < nslices; i++) {
        if (direct == 0 && pass == 0)
          CHECK_OK (qed_image_write (img, buf, sizeof buf, i * slice_span, 0));
        else
          CHECK_OK (qed_image_read (img, buf, sizeof buf, i * slice_span));
      }
      misses[direct] = memfile_count (mf, MF_PREAD) - before;
    }
    CHECK_OK (qed_image_close (img));
  }
  /* Each read is a data pread, and a slice pread when it misses. */
  if (misses[0] < nslices + nslices / 2 || misses[1] != nslices) {
    fprintf (stderr, "second pass over %u slices: %" PRIu64 " preads by"
             " default, %" PRIu64 " with direct\n", nslices, misses[0],
             misses[1]);
    exit (EXIT_FAILURE);
  }
  memfile_free (mf);
}

int
main (void)
{
  struct qed_create_options copts = {
    .size = SIZE, .cluster_size = CLUSTER, .table_size = 1,
  };
  struct memfile *mf = memfile_new (NULL, 0);

  test_capture_log ();
  model = calloc (1, SIZE);
  CHECK (model != NULL);
  CHECK_OK (qed_create_file (memfile_file (mf), &copts));
  populate (mf);

  test_budget (mf);
  run_threads (mf, worker);
  run_threads (mf, sharer);
  test_budget (mf);
  memfile_free (mf);

  test_default_budget ();
  /* Last. */
  test_budget_after_pins ();
  free (model);
  return 0;
}
