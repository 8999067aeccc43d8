/* nbdkit-qed tests: reads, writes, zeros and trims against a model.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The image lives in a memfile; every operation is mirrored on a plain
 * buffer (the model) and the image must always read back the model.
 */

#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "memfile.h"
#include "test.h"

#define SIZE (64 * 1024 * 1024)
#define CLUSTER (64 * 1024)

static unsigned char *model;

/* Unaligned writes inside, across and at the ends of clusters. */
static void
test_unaligned_writes (struct qed_image *img)
{
  test_model_write (model, img, 0, 1, 1);
  test_model_write (model, img, 1000, 70000, 2);
  test_model_write (model, img, CLUSTER - 5, 10, 3);
  test_model_write (model, img, 3 * CLUSTER + 17, 5 * CLUSTER, 4);
  test_model_write (model, img, SIZE - 513, 513, 5);
  test_model_write (model, img, 2000, 100, 6);              /* in place */
  test_model_check (model, SIZE, img);
}

/* A request over contiguous clusters is one pread. */
static void
test_runs (struct memfile *mf, struct qed_image *img)
{
  unsigned char *buf = malloc (1024 * 1024);
  uint64_t before;

  CHECK (buf != NULL);
  test_model_write (model, img, 16 * 1024 * 1024, 1024 * 1024, 7);
  before = memfile_count (mf, MF_PREAD);
  CHECK_OK (qed_image_read (img, buf, 1024 * 1024, 16 * 1024 * 1024));
  CHECK (memfile_count (mf, MF_PREAD) == before + 1);
  CHECK (memcmp (buf, model + 16 * 1024 * 1024, 1024 * 1024) == 0);
  free (buf);
}

/* Zeroing allocated whole clusters punches them and keeps the file
 * size; zeroing unallocated clusters without a backing file does not
 * touch the file; partial clusters are written with zeros.
 */
static void
test_zero (struct memfile *mf, struct qed_image *img)
{
  size_t size_before, size_after;
  uint64_t writes, punches;

  memfile_data (mf, &size_before);
  punches = memfile_count (mf, MF_PUNCH);
  CHECK_OK (qed_image_zero (img, 4 * CLUSTER, 3 * CLUSTER, QED_MAY_TRIM));
  memset (model + 3 * CLUSTER, 0, 4 * CLUSTER);
  CHECK (memfile_count (mf, MF_PUNCH) > punches);
  memfile_data (mf, &size_after);
  CHECK (size_after == size_before);

  writes = memfile_count (mf, MF_PWRITE);
  CHECK_OK (qed_image_zero (img, 10 * CLUSTER, 40 * CLUSTER, QED_MAY_TRIM));
  CHECK (memfile_count (mf, MF_PWRITE) == writes);

  CHECK_OK (qed_image_zero (img, 300, 1000, 0));
  memset (model + 1000, 0, 300);

  /* A fast zero of a partial allocated cluster would write: refused,
   * and nothing changes.
   */
  writes = memfile_count (mf, MF_PWRITE);
  CHECK_ERR (qed_image_zero (img, 100, 16 * 1024 * 1024 + 50,
                             QED_FAST_ZERO | QED_MAY_TRIM), ENOTSUP);
  CHECK (memfile_count (mf, MF_PWRITE) == writes);
  /* Whole clusters are fast. */
  CHECK_OK (qed_image_zero (img, 2 * CLUSTER, 16 * 1024 * 1024,
                            QED_FAST_ZERO | QED_MAY_TRIM));
  memset (model + 16 * 1024 * 1024, 0, 2 * CLUSTER);
  test_model_check (model, SIZE, img);
}

/* Trim gives back wholly covered clusters only. */
static void
test_trim (struct memfile *mf, struct qed_image *img)
{
  uint64_t punches = memfile_count (mf, MF_PUNCH);

  uint64_t offset = 16 * 1024 * 1024 + 4 * CLUSTER;    /* allocated */

  CHECK_OK (qed_image_trim (img, CLUSTER - 1, offset + 1, 0));
  CHECK (memfile_count (mf, MF_PUNCH) == punches);
  CHECK_OK (qed_image_trim (img, 2 * CLUSTER, offset, 0));
  CHECK (memfile_count (mf, MF_PUNCH) > punches);
  memset (model + offset, 0, 2 * CLUSTER);
  test_model_check (model, SIZE, img);
}

/* Many threads allocating in the same clusters at once. */
struct worker {
  struct qed_image *img;
  unsigned id;
};

#define THREADS 8
#define STRIPE 3000             /* smaller than a cluster, unaligned */

static void *
worker (void *arg)
{
  struct worker *w = arg;
  uint64_t state = w->id + 100;
  unsigned char buf[STRIPE];

  for (int i = 0; i < 400; i++) {
    uint64_t stripe = test_rand (&state) % (SIZE / STRIPE / THREADS);
    uint64_t offset = (stripe * THREADS + w->id) * STRIPE + 30 * 1024 * 1024;
    size_t n = 1 + test_rand (&state) % STRIPE;

    if (offset + STRIPE > SIZE)
      continue;
    test_fill_pattern (buf, n, state);
    CHECK_OK (qed_image_write (w->img, buf, n, offset, 0));
    memcpy (model + offset, buf, n);    /* stripes never overlap */
  }
  return NULL;
}

static void
test_threads (struct qed_image *img)
{
  pthread_t threads[THREADS];
  struct worker w[THREADS];

  for (unsigned i = 0; i < THREADS; i++) {
    w[i] = (struct worker) { .img = img, .id = i };
    CHECK (pthread_create (&threads[i], NULL, worker, &w[i]) == 0);
  }
  for (unsigned i = 0; i < THREADS; i++)
    pthread_join (threads[i], NULL);
  test_model_check (model, SIZE, img);
}

int
main (void)
{
  struct memfile *mf = test_new_image (SIZE, CLUSTER, 4);
  struct qed_image *img;
  struct qed_check_result res;

  test_capture_log ();
  model = calloc (1, SIZE);
  CHECK (model != NULL);
  img = test_open_image (mf);
  CHECK (qed_image_size (img) == SIZE);
  test_model_check (model, SIZE, img);

  test_unaligned_writes (img);
  test_runs (mf, img);
  test_zero (mf, img);
  test_trim (mf, img);
  test_threads (img);

  /* Everything survives closing and reopening, and the image is clean. */
  CHECK_OK (qed_image_close (img));
  img = test_open_image (mf);
  test_model_check (model, SIZE, img);
  CHECK_OK (qed_image_check (img, false, &res));
  CHECK (res.corruptions == 0 && res.leaks == 0 && res.check_errors == 0);
  CHECK_OK (qed_image_close (img));

  memfile_free (mf);
  free (model);
  return 0;
}
