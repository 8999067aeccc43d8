/* nbdkit-qed tests: the engine's gate between requests and the calls
 * on the whole image.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * qed_image_check, qed_image_enable_writes and qed_image_close may be
 * called from any thread while requests run: each waits for the
 * requests inside the engine, and requests that come meanwhile wait
 * for it.  memfile_hold stops a thread at a known point inside the
 * engine, so each ordering is made to happen, not hoped for.
 */

#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "memfile.h"
#include "test.h"

#define CLUSTER 4096u
#define SIZE (8 * 1024 * 1024)

static unsigned char model[SIZE];

enum call { CALL_READ, CALL_WRITE, CALL_CHECK, CALL_REPAIR, CALL_ENABLE,
            CALL_CLOSE };

struct job {
  pthread_t thread;
  struct qed_image *img;
  enum call call;
  uint64_t offset;
  unsigned char buf[CLUSTER];
  int ret;
  bool done;                    /* atomic */
};

static void *
run_job (void *arg)
{
  struct job *j = arg;
  struct qed_check_result res;

  switch (j->call) {
  case CALL_READ:
    j->ret = qed_image_read (j->img, j->buf, CLUSTER, j->offset);
    break;
  case CALL_WRITE:
    j->ret = qed_image_write (j->img, j->buf, CLUSTER, j->offset, 0);
    break;
  case CALL_CHECK:
    j->ret = qed_image_check (j->img, false, &res);
    break;
  case CALL_REPAIR:
    j->ret = qed_image_check (j->img, true, &res);
    break;
  case CALL_ENABLE:
    j->ret = qed_image_enable_writes (j->img);
    break;
  case CALL_CLOSE:
    j->ret = qed_image_close (j->img);
    break;
  }
  __atomic_store_n (&j->done, true, __ATOMIC_RELEASE);
  return NULL;
}

static void
start (struct job *j, struct qed_image *img, enum call call, uint64_t offset)
{
  j->img = img;
  j->call = call;
  j->offset = offset;
  j->done = false;
  CHECK (pthread_create (&j->thread, NULL, run_job, j) == 0);
}

static void
finish (struct job *j)
{
  CHECK (pthread_join (j->thread, NULL) == 0);
  CHECK_OK (j->ret);
}

/* j has not finished after a while (it is waiting, not just slow). */
static void
check_waiting (struct job *j)
{
  usleep (200 * 1000);
  CHECK (!__atomic_load_n (&j->done, __ATOMIC_ACQUIRE));
}

static struct memfile *
new_image (void)
{
  struct memfile *mf = test_new_image (SIZE, CLUSTER, 1);
  struct qed_image *img;

  memset (model, 0, sizeof model);
  img = test_open_image (mf);
  test_model_write (model, img, 0, 16 * CLUSTER, 1);
  CHECK_OK (qed_image_close (img));
  return mf;
}

/* A whole-image call waits for the request inside; a request that
 * comes meanwhile waits for the call.
 */
static void
test_call_waits_for_request (enum call call)
{
  struct memfile *mf = new_image ();
  struct qed_image *img = test_open_image (mf);
  struct job writer, whole, reader;

  /* The writer stops inside the engine, in its data write. */
  memset (writer.buf, 'w', CLUSTER);
  memcpy (model + CLUSTER, writer.buf, CLUSTER);
  memfile_hold (mf, MF_PWRITE);
  start (&writer, img, CALL_WRITE, CLUSTER);
  memfile_wait_held (mf);

  start (&whole, img, call, 0);
  check_waiting (&whole);
  /* The gate is closing: a new request waits behind it (but for
   * close, after which there are no requests).
   */
  if (call != CALL_CLOSE) {
    start (&reader, img, CALL_READ, 2 * CLUSTER);
    check_waiting (&reader);
  }

  memfile_release (mf);
  finish (&writer);
  finish (&whole);
  if (call != CALL_CLOSE) {
    finish (&reader);
    CHECK (memcmp (reader.buf, model + 2 * CLUSTER, CLUSTER) == 0);
    test_model_check (model, SIZE, img);
    CHECK_OK (qed_image_close (img));
  }
  img = test_open_image (mf);
  test_model_check (model, SIZE, img);
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
}

/* Requests wait while a whole-image call runs, then go on. */
static void
test_request_waits_for_call (enum call call)
{
  struct memfile *mf = new_image ();
  struct qed_image *img = test_open_image (mf);
  struct job whole, reader, writer;

  /* The check stops in its first read of the tables. */
  memfile_hold (mf, MF_PREAD);
  start (&whole, img, call, 0);
  memfile_wait_held (mf);

  start (&reader, img, CALL_READ, 3 * CLUSTER);
  memset (writer.buf, 'v', CLUSTER);
  memcpy (model + 20 * CLUSTER, writer.buf, CLUSTER);
  start (&writer, img, CALL_WRITE, 20 * CLUSTER);
  check_waiting (&reader);
  check_waiting (&writer);

  memfile_release (mf);
  finish (&whole);
  finish (&reader);
  finish (&writer);
  CHECK (memcmp (reader.buf, model + 3 * CLUSTER, CLUSTER) == 0);
  test_model_check (model, SIZE, img);
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
}

/* Turning writes on (with a repair, NEED_CHECK being set) while reads
 * run: the reads see the image before or after, never during.
 */
static void
test_enable_writes_during_reads (void)
{
  struct memfile *mf = new_image ();
  struct qed_open_options opts = { .access = QED_WRITE_ON_DEMAND };
  struct qed_image *img;
  struct job enable, reader;

  /* Enabling writes then checks and repairs. */
  test_set_need_check (mf);

  CHECK_OK (qed_image_open_file (memfile_file (mf), NULL, &opts, &img));
  CHECK (!qed_image_is_writable (img));
  memfile_hold (mf, MF_PREAD);
  start (&enable, img, CALL_ENABLE, 0);
  memfile_wait_held (mf);
  start (&reader, img, CALL_READ, 5 * CLUSTER);
  check_waiting (&reader);
  memfile_release (mf);
  finish (&enable);
  finish (&reader);
  CHECK (qed_image_is_writable (img));
  CHECK (memcmp (reader.buf, model + 5 * CLUSTER, CLUSTER) == 0);
  /* Settled: a second call does nothing and does not wait. */
  CHECK_OK (qed_image_enable_writes (img));
  test_model_write (model, img, 30 * CLUSTER, 100, 9);
  test_model_check (model, SIZE, img);
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
}

/* A read-only image refuses writes once, then quietly. */
static void
test_enable_writes_read_only (void)
{
  struct memfile *mf = new_image ();
  struct qed_open_options opts = { .access = QED_READ_ONLY };
  struct qed_image *img;

  CHECK_OK (qed_image_open_file (memfile_file (mf), NULL, &opts, &img));
  test_clear_log ();
  CHECK_ERR (qed_image_enable_writes (img), EROFS);
  CHECK (test_log_contains ("opened read-only"));
  test_clear_log ();
  CHECK_ERR (qed_image_enable_writes (img), EROFS);
  CHECK (!test_log_contains ("opened read-only"));
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
}

/* Many requests and checks at once, from several threads. */
#define THREADS 4
#define ROUNDS 300

struct hammer {
  pthread_t thread;
  struct qed_image *img;
  unsigned id;
};

static void *
hammer (void *arg)
{
  struct hammer *h = arg;
  uint64_t state = h->id + 1;
  unsigned char buf[CLUSTER];

  for (unsigned i = 0; i < ROUNDS; i++) {
    /* Each thread writes its own clusters, so the model is exact. */
    uint64_t c = (test_rand (&state) % (SIZE / CLUSTER / THREADS)) * THREADS
      + h->id;
    test_fill_pattern (buf, sizeof buf, state);
    CHECK_OK (qed_image_write (h->img, buf, sizeof buf, c * CLUSTER, 0));
    memcpy (model + c * CLUSTER, buf, sizeof buf);
    CHECK_OK (qed_image_read (h->img, buf, sizeof buf, c * CLUSTER));
    CHECK (memcmp (buf, model + c * CLUSTER, sizeof buf) == 0);
  }
  return NULL;
}

static void
test_checks_among_requests (void)
{
  struct memfile *mf = new_image ();
  struct qed_image *img = test_open_image (mf);
  struct hammer h[THREADS];
  struct qed_check_result res;
  unsigned checks = 0;

  for (unsigned i = 0; i < THREADS; i++) {
    h[i].img = img;
    h[i].id = i;
    CHECK (pthread_create (&h[i].thread, NULL, hammer, &h[i]) == 0);
  }
  for (unsigned i = 0; i < 50; i++, checks++) {
    CHECK_OK (qed_image_check (img, i % 2, &res));
    CHECK (res.corruptions == 0 && res.check_errors == 0);
  }
  for (unsigned i = 0; i < THREADS; i++)
    CHECK (pthread_join (h[i].thread, NULL) == 0);
  CHECK (checks == 50);
  test_model_check (model, SIZE, img);
  CHECK_OK (qed_image_check (img, false, &res));
  CHECK (res.corruptions == 0 && res.leaks == 0);
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
}

int
main (void)
{
  test_capture_log ();
  test_call_waits_for_request (CALL_CHECK);
  test_call_waits_for_request (CALL_REPAIR);
  test_call_waits_for_request (CALL_CLOSE);
  test_request_waits_for_call (CALL_CHECK);
  test_request_waits_for_call (CALL_REPAIR);
  test_enable_writes_during_reads ();
  test_enable_writes_read_only ();
  test_checks_among_requests ();
  return 0;
}
