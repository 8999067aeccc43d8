/* nbdkit-qed tests: I/O errors, injected with memfile_fail.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Each failing operation must reach the caller as its errno; nothing
 * acknowledged may be lost; the image must stay free of corruption
 * (leaked clusters are allowed) and the same request must succeed
 * once the fault is gone.  Allocating writes are failed at every one
 * of their writes and flushes in turn, so no step is left out however
 * the engine orders them.
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
#define TABLE 1u
#define NELEMS (TABLE * CLUSTER / 8)            /* 512 */
#define L1_SPAN ((uint64_t) NELEMS * CLUSTER)   /* 2 MiB */
#define SIZE (2 * L1_SPAN + 16 * CLUSTER)      /* 3 L1 entries */

static unsigned char *model;            /* what the image must read */
static unsigned char *base_model;       /* ... as the base image */
static unsigned char *base_bytes;       /* the base image file */
static size_t base_size;

static void
check_consistent_at (int line, struct qed_image *img)
{
  struct qed_check_result res;

  CHECK_OK (qed_image_check (img, false, &res));
  if (res.corruptions || res.check_errors) {
    fprintf (stderr, "line %d: check found %" PRIu64 " corruptions, %"
             PRIu64 " check errors\n", line, res.corruptions,
             res.check_errors);
    exit (EXIT_FAILURE);
  }
}
#define check_consistent(img) check_consistent_at (__LINE__, img)

/* The base image: data in L1 ranges 0 and 1, closed cleanly. */
static void
make_base (void)
{
  struct memfile *mf = test_new_image (SIZE, CLUSTER, TABLE);
  struct qed_image *img;
  const unsigned char *p;

  img = test_open_image (mf);
  test_model_write (model, img, 0, 3 * CLUSTER, 1);
  test_model_write (model, img, 10 * CLUSTER + 500, 1000, 2);
  test_model_write (model, img, 21 * CLUSTER, CLUSTER, 3);
  test_model_write (model, img, (NELEMS - 2) * CLUSTER, 2 * CLUSTER, 4);
  test_model_write (model, img, L1_SPAN + 5 * CLUSTER, 2 * CLUSTER, 5);
  CHECK_OK (qed_image_close (img));
  p = memfile_data (mf, &base_size);
  base_bytes = malloc (base_size);
  CHECK (base_bytes != NULL);
  memcpy (base_bytes, p, base_size);
  memcpy (base_model, model, SIZE);
  memfile_free (mf);
}

static struct memfile *
fresh_copy (void)
{
  memcpy (model, base_model, SIZE);
  return memfile_new (base_bytes, base_size);
}

/* Writes that allocate (some also write in place). */
static const struct shape {
  const char *what;
  uint64_t offset;
  size_t n;
} shapes[] = {
  { "partial, new L2 table", 2 * L1_SPAN + 7 * CLUSTER + 100, 100 },
  { "whole cluster, existing table", 30 * CLUSTER, CLUSTER },
  { "partial, existing table", 11 * CLUSTER + 1, 50 },
  { "across two tables, one new",
    L1_SPAN + (NELEMS - 1) * CLUSTER + 100, CLUSTER + 200 },
  { "allocated between new clusters", 20 * CLUSTER, 3 * CLUSTER },
  { "across an existing and a new table, aligned",
    L1_SPAN - 2 * CLUSTER, 4 * CLUSTER },
};
#define NSHAPES (sizeof shapes / sizeof shapes[0])

enum after { AFTER_NOTHING, AFTER_REOPEN, AFTER_REPAIR };

/* Fail the k-th operation in mask of one write of shape s (with flags);
 * returns false once the write had fewer than k + 1 of them.
 */
static bool
fail_one (const struct shape *s, unsigned mask, uint64_t k, int err,
          bool persistent, unsigned flags, enum after after)
{
  struct memfile *mf = fresh_copy ();
  struct qed_image *img = test_open_image (mf);
  unsigned char *buf = malloc (s->n);
  uint64_t before;
  bool fired;
  int r;

  CHECK (buf != NULL);
  test_fill_pattern (buf, s->n, 99);
  test_model_check (model, SIZE, img);
  fprintf (stderr, "%s: failing %s %" PRIu64 " with %s%s%s\n", s->what,
           mask == MF_PWRITE ? "pwrite" : "flush", k, strerror (err),
           persistent ? " (persistent)" : "",
           after == AFTER_REOPEN ? ", reopening"
           : after == AFTER_REPAIR ? ", repairing" : "");

  before = memfile_count (mf, mask);
  memfile_fail (mf, mask, k, err, persistent);
  r = qed_image_write (img, buf, s->n, s->offset, flags);
  fired = memfile_count (mf, mask) - before > k;
  memfile_fail (mf, 0, 0, 0, false);

  if (!fired) {
    /* Fewer operations than k + 1: nothing failed. */
    CHECK_OK (r);
  }
  else if (r != -err) {
    fprintf (stderr, "the write returned %d (%s)\n", r,
             r < 0 ? strerror (-r) : "success");
    exit (EXIT_FAILURE);
  }

  if (fired) {
    /* Nothing acknowledged is lost; the failed range is unspecified. */
    test_model_check_except (model, SIZE, img, s->offset, s->n);
    check_consistent (img);
    if (after == AFTER_REOPEN) {
      CHECK_OK (qed_image_close (img));
      img = test_open_image (mf);
      test_model_check_except (model, SIZE, img, s->offset, s->n);
    }
    else if (after == AFTER_REPAIR) {
      struct qed_check_result res;
      CHECK_OK (qed_image_check (img, true, &res));
      CHECK (res.corruptions == 0 && res.check_errors == 0);
      test_model_check_except (model, SIZE, img, s->offset, s->n);
    }
    /* The same write now succeeds. */
    CHECK_OK (qed_image_write (img, buf, s->n, s->offset, flags));
  }
  memcpy (model + s->offset, buf, s->n);
  test_model_check (model, SIZE, img);
  check_consistent (img);

  /* And all of it survives closing. */
  CHECK_OK (qed_image_close (img));
  img = test_open_image (mf);
  test_model_check (model, SIZE, img);
  check_consistent (img);
  CHECK_OK (qed_image_close (img));

  memfile_free (mf);
  free (buf);
  return fired;
}

/* A full disk: allocating writes fail in their data writes, from one
 * thread and then from several at once.  Their clusters (and new
 * tables) are given back: the file does not grow, and after the disk
 * has room again and the image is closed, nothing has leaked.
 */
struct failing_writer {
  pthread_t thread;
  struct qed_image *img;
  unsigned id;
};

static void *
write_on_full_disk (void *arg)
{
  struct failing_writer *w = arg;
  unsigned char buf[CLUSTER + 300];

  test_fill_pattern (buf, sizeof buf, w->id);
  for (unsigned i = 0; i < 20; i++) {
    uint64_t offset = (uint64_t) (40 + w->id * 40 + i) * CLUSTER + 200;
    if (i % 5 == 0)             /* now and then in a new table */
      offset = 2 * L1_SPAN + (uint64_t) (w->id * 3 + i / 5) * CLUSTER + 200;
    CHECK_ERR (qed_image_write (w->img, buf, sizeof buf, offset, 0), ENOSPC);
  }
  return NULL;
}

static void
test_full_disk_gives_back (void)
{
  struct memfile *mf = fresh_copy ();
  struct qed_image *img = test_open_image (mf);
  struct failing_writer w[4];
  struct qed_check_result res;
  size_t size;

  memfile_fail (mf, MF_PWRITE, 0, ENOSPC, true);
  for (size_t i = 0; i < NSHAPES; i++) {
    unsigned char buf[4 * CLUSTER + 200];
    CHECK (shapes[i].n <= sizeof buf);
    CHECK_ERR (qed_image_write (img, buf, shapes[i].n, shapes[i].offset, 0),
               ENOSPC);
  }
  for (unsigned i = 0; i < 4; i++) {
    w[i].img = img;
    w[i].id = i;
    CHECK (pthread_create (&w[i].thread, NULL, write_on_full_disk,
                           &w[i]) == 0);
  }
  for (unsigned i = 0; i < 4; i++)
    CHECK (pthread_join (w[i].thread, NULL) == 0);
  memfile_fail (mf, 0, 0, 0, false);
  memfile_data (mf, &size);
  CHECK (size == base_size);

  /* Room again: new writes land where the failed ones would have. */
  test_model_write (model, img, 2 * L1_SPAN + 3 * CLUSTER, 2 * CLUSTER, 7);
  test_model_write (model, img, 33 * CLUSTER, CLUSTER, 8);
  CHECK_OK (qed_image_close (img));
  img = test_open_image (mf);
  test_model_check (model, SIZE, img);
  CHECK_OK (qed_image_check (img, false, &res));
  CHECK (res.corruptions == 0 && res.check_errors == 0);
  if (res.leaks != 0) {
    fprintf (stderr, "%" PRIu64 " leaked clusters after a full disk\n",
             res.leaks);
    exit (EXIT_FAILURE);
  }
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
}

/* Every write of every shape, one at a time (and, with all, from
 * there on, and with EIO).
 */
static void
test_write_failures (enum after after, bool all)
{
  for (size_t i = 0; i < NSHAPES; i++) {
    uint64_t k;

    for (k = 0; fail_one (&shapes[i], MF_PWRITE, k, ENOSPC, false, 0,
                          after); k++)
      ;
    /* An allocating write has the data, L2 entry, and (for a new
     * table) the table and L1 writes at least.
     */
    CHECK (k >= 2);
    if (!all)
      continue;
    for (k = 0; fail_one (&shapes[i], MF_PWRITE, k, ENOSPC, true, 0,
                          after); k++)
      ;
    for (k = 0; fail_one (&shapes[i], MF_PWRITE, k, EIO, false, 0,
                          after); k++)
      ;
  }
}

/* Every flush of every shape, with FUA so there is at least one. */
static void
test_flush_failures (void)
{
  for (size_t i = 0; i < NSHAPES; i++) {
    uint64_t k;

    for (k = 0; fail_one (&shapes[i], MF_FLUSH, k, EIO, false, QED_FUA,
                          AFTER_NOTHING); k++)
      ;
    CHECK (k >= 1);
  }
}

/* Reads: a failing data pread is the read's error, once. */
static void
test_read_errors (void)
{
  struct memfile *mf = fresh_copy ();
  struct qed_image *img = test_open_image (mf);
  unsigned char buf[3 * CLUSTER];
  uint64_t before;

  /* Warm the cache: then the only pread of this read is the data. */
  CHECK_OK (qed_image_read (img, buf, sizeof buf, 0));
  before = memfile_count (mf, MF_PREAD);
  memfile_fail (mf, MF_PREAD, 0, EIO, false);
  CHECK_ERR (qed_image_read (img, buf, sizeof buf, 0), EIO);
  CHECK (memfile_count (mf, MF_PREAD) == before + 1);
  CHECK_OK (qed_image_read (img, buf, sizeof buf, 0));
  CHECK (memcmp (buf, model, sizeof buf) == 0);

  /* The second run of a read failing: the first was read, still EIO. */
  {
    unsigned char *big = malloc (9 * CLUSTER);

    CHECK (big != NULL);
    CHECK_OK (qed_image_read (img, big, 9 * CLUSTER, 2 * CLUSTER + 100));
    before = memfile_count (mf, MF_PREAD);
    CHECK_OK (qed_image_read (img, big, 9 * CLUSTER, 2 * CLUSTER + 100));
    CHECK (memfile_count (mf, MF_PREAD) == before + 2);   /* two runs */
    memfile_fail (mf, MF_PREAD, 1, EIO, false);
    CHECK_ERR (qed_image_read (img, big, 9 * CLUSTER, 2 * CLUSTER + 100),
               EIO);
    CHECK_OK (qed_image_read (img, big, 9 * CLUSTER, 2 * CLUSTER + 100));
    CHECK (memcmp (big, model + 2 * CLUSTER + 100, 9 * CLUSTER) == 0);
    free (big);
  }

  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
}

/* L2 slices that cannot be read: EIO for reads, writes and block
 * status, and everything works once the fault is gone.
 */
static int
count_extents (void *opaque, uint64_t offset, uint64_t length, unsigned type)
{
  (*(unsigned *) opaque)++;
  return 0;
}

static void
test_l2_errors (void)
{
  struct memfile *mf = fresh_copy ();
  struct qed_image *img = test_open_image (mf);   /* cold cache */
  unsigned char buf[CLUSTER], data[CLUSTER];
  uint64_t before;
  unsigned n = 0;

  /* Read: the slice read fails. */
  before = memfile_count (mf, MF_PREAD);
  memfile_fail (mf, MF_PREAD, 0, EIO, false);
  CHECK_ERR (qed_image_read (img, buf, CLUSTER, 21 * CLUSTER), EIO);
  CHECK (memfile_count (mf, MF_PREAD) == before + 1);
  CHECK_OK (qed_image_read (img, buf, CLUSTER, 21 * CLUSTER));
  CHECK (memcmp (buf, model + 21 * CLUSTER, CLUSTER) == 0);

  /* Persistently, then healed. */
  memfile_fail (mf, MF_PREAD, 0, EIO, true);
  for (int i = 0; i < 3; i++)
    CHECK_ERR (qed_image_read (img, buf, CLUSTER, L1_SPAN + 5 * CLUSTER),
               EIO);
  memfile_fail (mf, 0, 0, 0, false);
  CHECK_OK (qed_image_read (img, buf, CLUSTER, L1_SPAN + 5 * CLUSTER));
  CHECK (memcmp (buf, model + L1_SPAN + 5 * CLUSTER, CLUSTER) == 0);
  CHECK_OK (qed_image_close (img));

  /* Write, in place and allocating, and block status, each with a
   * cold cache.
   */
  img = test_open_image (mf);
  test_fill_pattern (data, sizeof data, 50);
  memfile_fail (mf, MF_PREAD, 0, EIO, true);
  CHECK_ERR (qed_image_write (img, data, 100, 21 * CLUSTER + 5, 0), EIO);
  CHECK_ERR (qed_image_write (img, data, CLUSTER, 40 * CLUSTER, 0), EIO);
  CHECK_ERR (qed_image_block_status (img, CLUSTER, 0, count_extents, &n),
             EIO);
  CHECK_ERR (qed_image_zero (img, CLUSTER, 21 * CLUSTER, QED_MAY_TRIM), EIO);
  memfile_fail (mf, 0, 0, 0, false);
  test_model_check (model, SIZE, img);
  check_consistent (img);
  CHECK_OK (qed_image_write (img, data, 100, 21 * CLUSTER + 5, 0));
  memcpy (model + 21 * CLUSTER + 5, data, 100);
  CHECK_OK (qed_image_write (img, data, CLUSTER, 40 * CLUSTER, 0));
  memcpy (model + 40 * CLUSTER, data, CLUSTER);
  n = 0;
  CHECK_OK (qed_image_block_status (img, CLUSTER, 0, count_extents, &n));
  CHECK (n >= 1);
  test_model_check (model, SIZE, img);
  check_consistent (img);
  CHECK_OK (qed_image_close (img));

  /* The L1 table cannot be read: open fails. */
  {
    struct qed_open_options opts = { .access = QED_READ_ONLY };
    memfile_fail (mf, MF_PREAD, 1, EIO, false);   /* the header reads */
    CHECK_ERR (qed_image_open_file (memfile_file (mf), NULL, &opts, &img),
               EIO);
    memfile_fail (mf, 0, 0, 0, false);
  }

  memfile_free (mf);
}

/* Many readers waiting for one slice whose read fails. */
#define THREADS 8

struct reader {
  struct qed_image *img;
  pthread_barrier_t *barrier;
  uint64_t offset;
  int r;
};

static void *
reader (void *arg)
{
  struct reader *rd = arg;
  unsigned char buf[CLUSTER];

  pthread_barrier_wait (rd->barrier);
  rd->r = qed_image_read (rd->img, buf, CLUSTER, rd->offset);
  if (rd->r == 0 && memcmp (buf, model + rd->offset, CLUSTER) != 0)
    rd->r = -EBADMSG;
  return NULL;
}

static void
readers (struct qed_image *img, int expect)
{
  pthread_t th[THREADS];
  struct reader rd[THREADS];
  pthread_barrier_t barrier;

  CHECK (pthread_barrier_init (&barrier, NULL, THREADS) == 0);
  for (unsigned i = 0; i < THREADS; i++) {
    rd[i] = (struct reader) {
      .img = img, .barrier = &barrier,
      .offset = (i % 2 ? 21 : 0) * CLUSTER,
    };
    CHECK (pthread_create (&th[i], NULL, reader, &rd[i]) == 0);
  }
  for (unsigned i = 0; i < THREADS; i++) {
    CHECK (pthread_join (th[i], NULL) == 0);
    if (rd[i].r != expect) {
      fprintf (stderr, "reader %u returned %d, expected %d\n", i, rd[i].r,
               expect);
      exit (EXIT_FAILURE);
    }
  }
  CHECK (pthread_barrier_destroy (&barrier) == 0);
}

static void
test_l2_errors_threads (void)
{
  struct memfile *mf = fresh_copy ();

  for (int round = 0; round < 20; round++) {
    struct qed_image *img = test_open_image (mf);
    memfile_fail (mf, MF_PREAD, 0, EIO, true);
    readers (img, -EIO);
    memfile_fail (mf, 0, 0, 0, false);
    readers (img, 0);
    CHECK_OK (qed_image_close (img));
  }
  memfile_free (mf);
}

/* Writes in place, zeroing and trimming allocated clusters. */
static void
test_in_place (void)
{
  struct memfile *mf = fresh_copy ();
  struct qed_image *img = test_open_image (mf);
  unsigned char data[CLUSTER];
  size_t size_before, size_after;

  memfile_data (mf, &size_before);
  test_fill_pattern (data, sizeof data, 60);
  memfile_fail (mf, MF_PWRITE, 0, ENOSPC, false);
  CHECK_ERR (qed_image_write (img, data, 1000, CLUSTER + 10, 0), ENOSPC);
  CHECK_OK (qed_image_write (img, data, 1000, CLUSTER + 10, 0));
  memcpy (model + CLUSTER + 10, data, 1000);
  memfile_data (mf, &size_after);
  CHECK (size_after == size_before);

  /* Partial zero of an allocated cluster writes zeros. */
  memfile_fail (mf, MF_PWRITE, 0, EIO, false);
  CHECK_ERR (qed_image_zero (img, 100, 2 * CLUSTER + 7, 0), EIO);
  CHECK_OK (qed_image_zero (img, 100, 2 * CLUSTER + 7, 0));
  memset (model + 2 * CLUSTER + 7, 0, 100);

  /* Whole clusters with MAY_TRIM punch. */
  memfile_fail (mf, MF_PUNCH, 0, EIO, false);
  CHECK_ERR (qed_image_zero (img, CLUSTER, 21 * CLUSTER, QED_MAY_TRIM), EIO);
  memfile_fail (mf, MF_PUNCH | MF_PWRITE, 0, EIO, true);
  CHECK_ERR (qed_image_trim (img, CLUSTER, 21 * CLUSTER, 0), EIO);
  memfile_fail (mf, 0, 0, 0, false);
  test_model_check_except (model, SIZE, img, 21 * CLUSTER, CLUSTER);
  CHECK_OK (qed_image_zero (img, CLUSTER, 21 * CLUSTER, QED_MAY_TRIM));
  memset (model + 21 * CLUSTER, 0, CLUSTER);

  /* A flush error is the flush's and FUA's error. */
  memfile_fail (mf, MF_FLUSH, 0, EIO, false);
  CHECK_ERR (qed_image_flush (img), EIO);
  memfile_fail (mf, MF_FLUSH, 0, EIO, false);
  CHECK_ERR (qed_image_write (img, data, 10, 5, QED_FUA), EIO);
  memcpy (model + 5, data, 10);         /* written, only not flushed */
  CHECK_OK (qed_image_flush (img));

  test_model_check (model, SIZE, img);
  check_consistent (img);
  CHECK_OK (qed_image_close (img));
  img = test_open_image (mf);
  test_model_check (model, SIZE, img);
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
}

int
main (void)
{
  test_capture_log ();
  model = calloc (1, SIZE);
  base_model = calloc (1, SIZE);
  CHECK (model != NULL && base_model != NULL);
  make_base ();

  test_read_errors ();
  test_l2_errors ();
  test_l2_errors_threads ();
  test_in_place ();
  test_full_disk_gives_back ();
  test_write_failures (AFTER_NOTHING, true);
  test_write_failures (AFTER_REOPEN, false);
  test_flush_failures ();
  /* Last: repairing between the failure and the retry. */
  test_write_failures (AFTER_REPAIR, false);

  free (base_bytes);
  free (base_model);
  free (model);
  return 0;
}
