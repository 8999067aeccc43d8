/* nbdkit-qed tests: helpers for the C unit tests of the engine.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "memfile.h"
#include "qed-format.h"
#include "test.h"

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char log_buf[16384];

static void
capture (enum qed_log_level level, const char *msg)
{
  static const char *const names[] = { "debug", "notice", "error" };

  if (level != QED_LOG_DEBUG || getenv ("QED_TEST_DEBUG"))
    fprintf (stderr, "[%s] %s\n", names[level], msg);
  pthread_mutex_lock (&log_lock);
  if (strlen (log_buf) + strlen (msg) + 2 < sizeof log_buf) {
    strcat (log_buf, msg);
    strcat (log_buf, "\n");
  }
  pthread_mutex_unlock (&log_lock);
}

struct memfile *
test_new_image (uint64_t size, uint32_t cluster_size, uint32_t table_size)
{
  struct memfile *mf = memfile_new (NULL, 0);
  struct qed_create_options copts = {
    .size = size, .cluster_size = cluster_size, .table_size = table_size,
  };

  CHECK_OK (qed_create_file (memfile_file (mf), &copts));
  return mf;
}

void
test_set_need_check (struct memfile *mf)
{
  struct qed_file *f = memfile_file (mf);
  unsigned char hdr[QED_HEADER_STRUCT_SIZE];
  struct qed_header h;

  CHECK_OK (f->ops->pread (f, hdr, sizeof hdr, 0));
  qed_header_decode (hdr, &h);
  h.features |= QED_F_NEED_CHECK;
  qed_header_encode (&h, hdr);
  CHECK_OK (f->ops->pwrite (f, hdr, sizeof hdr, 0));
}

struct qed_image *
test_open_image (struct memfile *mf)
{
  struct qed_open_options opts = { .access = QED_READ_WRITE };
  struct qed_image *img;

  CHECK_OK (qed_image_open_file (memfile_file (mf), NULL, &opts, &img));
  return img;
}

void
test_capture_log (void)
{
  qed_set_log_function (capture);
}

bool
test_log_contains (const char *needle)
{
  bool r;

  pthread_mutex_lock (&log_lock);
  r = strstr (log_buf, needle) != NULL;
  pthread_mutex_unlock (&log_lock);
  if (!r)
    fprintf (stderr, "log does not contain \"%s\"\n", needle);
  return r;
}

void
test_clear_log (void)
{
  pthread_mutex_lock (&log_lock);
  log_buf[0] = '\0';
  pthread_mutex_unlock (&log_lock);
}

static char *dir;

static void
remove_dir (void)
{
  char cmd[256];

  snprintf (cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system (cmd) != 0)
    fprintf (stderr, "could not remove %s\n", dir);
}

const char *
test_dir (void)
{
  if (dir == NULL) {
    const char *tmp = getenv ("TMPDIR");
    if (asprintf (&dir, "%s/qedunit.XXXXXX", tmp ? tmp : "/tmp") == -1 ||
        mkdtemp (dir) == NULL) {
      perror ("mkdtemp");
      exit (EXIT_FAILURE);
    }
    atexit (remove_dir);
  }
  return dir;
}

char *
test_path (const char *name)
{
  char *path;

  if (asprintf (&path, "%s/%s", test_dir (), name) == -1) {
    perror ("asprintf");
    exit (EXIT_FAILURE);
  }
  return path;
}

uint64_t
test_rand (uint64_t *state)
{
  /* xorshift64* */
  uint64_t x = *state ? *state : 0x9e3779b97f4a7c15ull;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *state = x;
  return x * 0x2545f4914f6cdd1dull;
}

void
test_fill_pattern (void *buf, size_t n, uint64_t seed)
{
  unsigned char *p = buf;
  uint64_t s = seed + 1;

  for (size_t i = 0; i < n; i++) {
    if (i % 8 == 0)
      s = test_rand (&s);
    p[i] = s >> (8 * (i % 8));
  }
}

void
test_model_write (unsigned char *model, struct qed_image *img,
                  uint64_t offset, size_t n, uint64_t seed)
{
  unsigned char *buf = malloc (n ? n : 1);
  int r;

  if (buf == NULL)
    abort ();
  test_fill_pattern (buf, n, seed);
  r = qed_image_write (img, buf, n, offset, 0);
  if (r < 0) {
    fprintf (stderr, "write of %zu at %" PRIu64 ": %s\n", n, offset,
             strerror (-r));
    exit (EXIT_FAILURE);
  }
  memcpy (model + offset, buf, n);
  free (buf);
}

void
test_model_check_except_at (int line, const unsigned char *model,
                            uint64_t size, struct qed_image *img,
                            uint64_t skip, uint64_t nskip)
{
  const uint64_t chunk = 4 * 1024 * 1024;
  unsigned char *buf = malloc (chunk);

  if (buf == NULL)
    abort ();
  for (uint64_t off = 0; off < size; off += chunk) {
    uint64_t n = size - off < chunk ? size - off : chunk;
    int r = qed_image_read (img, buf, n, off);

    if (r < 0) {
      fprintf (stderr, "line %d: read at %" PRIu64 ": %s\n", line, off,
               strerror (-r));
      exit (EXIT_FAILURE);
    }
    for (uint64_t i = 0; i < n; i++)
      if (buf[i] != model[off + i] &&
          !(off + i >= skip && off + i - skip < nskip)) {
        fprintf (stderr, "line %d: mismatch at byte %" PRIu64 ": image"
                 " %02x model %02x\n", line, off + i, buf[i],
                 model[off + i]);
        exit (EXIT_FAILURE);
      }
  }
  free (buf);
}
