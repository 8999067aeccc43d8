/* nbdkit-qed tests: the POSIX file layer with direct I/O
 * (QED_OPEN_DIRECT), on a real file in $TMPDIR.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Requests of every alignment read and write what a buffered file
 * does, at the end of the file too; threads patching different bytes
 * of the same blocks at once lose none of them (the read-modify-write
 * lock); and an image over it works.  Skipped (77) where the file
 * system has no direct I/O.
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test.h"

#define FILE_SIZE (256 * 1024)
#define THREADS 4
#define ROUNDS 2000

static char path[4096];
static unsigned char model[FILE_SIZE];

static struct qed_file *
open_direct (void)
{
  struct qed_file *f;

  CHECK_OK (qed_posix_opener.open (&qed_posix_opener, path,
                                   QED_OPEN_WRITE | QED_OPEN_DIRECT, &f));
  CHECK (f->writable);
  return f;
}

/* Unaligned and aligned requests against the model. */
static void
test_alignments (void)
{
  static const struct { uint64_t offset; size_t count; } reqs[] = {
    { 0, 1 }, { 1, 1 }, { 4095, 2 }, { 4096, 4096 }, { 100, 10000 },
    { 8191, 4097 }, { 12288, 8192 }, { FILE_SIZE - 3, 3 },
    { FILE_SIZE - 5000, 5000 },
  };
  unsigned char *buf = malloc (FILE_SIZE + 1);
  struct qed_file *f = open_direct ();
  uint64_t size;

  CHECK (buf != NULL);
  for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++) {
    /* +1: a buffer that is not aligned either. */
    test_fill_pattern (buf + 1, reqs[i].count, i + 1);
    CHECK_OK (f->ops->pwrite (f, buf + 1, reqs[i].count, reqs[i].offset));
    memcpy (model + reqs[i].offset, buf + 1, reqs[i].count);
    for (size_t j = 0; j <= i; j++) {
      CHECK_OK (f->ops->pread (f, buf + 1, reqs[j].count, reqs[j].offset));
      CHECK (memcmp (buf + 1, model + reqs[j].offset, reqs[j].count) == 0);
    }
  }
  /* The file did not grow past what was written. */
  CHECK_OK (f->ops->get_size (f, &size));
  CHECK (size == FILE_SIZE);
  /* Past the end is an error, as with buffered I/O. */
  CHECK_ERR (f->ops->pread (f, buf, 10, FILE_SIZE - 5), EIO);
  f->ops->close (f);
  free (buf);
}

struct patcher {
  struct qed_file *f;
  unsigned id;
};

/* Each thread owns bytes id, id + THREADS, ... of the first blocks
 * and writes them one at a time, so that every write patches a block
 * that other threads patch at the same time.
 */
static void *
patch_bytes (void *arg)
{
  struct patcher *p = arg;

  for (unsigned i = 0; i < ROUNDS; i++) {
    uint64_t offset = (i * 997 % 8192) / THREADS * THREADS + p->id;
    unsigned char byte = 'A' + p->id;

    CHECK_OK (p->f->ops->pwrite (p->f, &byte, 1, offset));
    model[offset] = byte;       /* only this thread owns offset */
  }
  return NULL;
}

static void
test_concurrent_patches (void)
{
  struct patcher p[THREADS];
  pthread_t t[THREADS];
  struct qed_file *f = open_direct ();
  unsigned char buf[8192];

  for (unsigned i = 0; i < THREADS; i++) {
    p[i] = (struct patcher) { .f = f, .id = i };
    CHECK (pthread_create (&t[i], NULL, patch_bytes, &p[i]) == 0);
  }
  for (unsigned i = 0; i < THREADS; i++)
    pthread_join (t[i], NULL);
  CHECK_OK (f->ops->pread (f, buf, sizeof buf, 0));
  CHECK (memcmp (buf, model, sizeof buf) == 0);
  f->ops->close (f);
}

/* An image over direct I/O: its header and table entries are small
 * unaligned writes.
 */
static void
test_image (void)
{
  struct qed_create_options copts = { .size = 16 * 1024 * 1024 };
  struct qed_open_options oopts = { .access = QED_READ_WRITE,
                                    .direct = true };
  unsigned char buf[70000], back[70000];
  struct qed_check_result res;
  struct qed_image *img;

  CHECK_OK (qed_create (path, &copts));
  CHECK_OK (qed_image_open (path, &oopts, &img));
  test_fill_pattern (buf, sizeof buf, 99);
  CHECK_OK (qed_image_write (img, buf, sizeof buf, 12345, 0));
  CHECK_OK (qed_image_read (img, back, sizeof back, 12345));
  CHECK (memcmp (buf, back, sizeof buf) == 0);
  CHECK_OK (qed_image_close (img));
  oopts.access = QED_READ_ONLY;
  oopts.direct = false;
  CHECK_OK (qed_image_open (path, &oopts, &img));
  CHECK_OK (qed_image_read (img, back, sizeof back, 12345));
  CHECK (memcmp (buf, back, sizeof buf) == 0);
  CHECK_OK (qed_image_check (img, false, &res));
  CHECK (res.corruptions == 0 && res.leaks == 0);
  CHECK_OK (qed_image_close (img));
}

int
main (void)
{
  const char *tmpdir = getenv ("TMPDIR") ? getenv ("TMPDIR") : "/tmp";
  int fd;

  snprintf (path, sizeof path, "%s/test-direct.XXXXXX", tmpdir);
  fd = mkstemp (path);
  CHECK (fd >= 0);
  CHECK (ftruncate (fd, FILE_SIZE) == 0);
  close (fd);
  fd = open (path, O_RDWR | O_DIRECT);
  if (fd == -1) {
    fprintf (stderr, "test-direct: %s: no direct I/O here: skipped\n", path);
    unlink (path);
    return 77;
  }
  close (fd);

  test_capture_log ();
  test_alignments ();
  test_concurrent_patches ();
  test_image ();
  unlink (path);
  return 0;
}
