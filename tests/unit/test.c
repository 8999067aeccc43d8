/* nbdkit-qed tests: helpers for the C unit tests of the engine.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <endian.h>
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

static uint64_t
get64 (const unsigned char *p)
{
  uint64_t v;
  memcpy (&v, p, 8);
  return le64toh (v);
}

static int
compare_u64 (const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
  return x < y ? -1 : x > y;
}

#define LAYOUT_FAIL(...)                                                \
  do {                                                                  \
    fprintf (stderr, "line %d: ", line);                                \
    fprintf (stderr, __VA_ARGS__);                                      \
    fprintf (stderr, " (file size %zu)\n", size);                       \
    exit (EXIT_FAILURE);                                                \
  } while (0)

uint64_t
test_check_layout_at (int line, struct memfile *mf)
{
  size_t size, nused = 0, alloc = 64;
  const unsigned char *p = memfile_data (mf, &size);
  struct qed_header h;
  uint64_t cs, tbytes, nelems, first, *used = malloc (alloc * 8);

  CHECK (used != NULL && size >= QED_HEADER_STRUCT_SIZE);
  qed_header_decode (p, &h);
  cs = h.cluster_size;
  tbytes = (uint64_t) h.table_size * cs;
  nelems = tbytes / 8;
  first = (uint64_t) h.header_size * cs;

/* Record n clusters from host, after checking where they lie. */
#define USE(host, n, what, index)                                       \
  do {                                                                  \
    if ((host) % cs || (host) < first || (host) + (n) * cs > size)      \
      LAYOUT_FAIL ("%s %" PRIu64 " = 0x%" PRIx64 " is invalid",         \
                   what, (uint64_t) (index), (uint64_t) (host));        \
    for (uint64_t k_ = 0; k_ < (n); k_++) {                             \
      if (nused == alloc && (used = realloc (used, (alloc *= 2) * 8))   \
          == NULL)                                                      \
        abort ();                                                       \
      used[nused++] = (host) + k_ * cs;                                 \
    }                                                                   \
  } while (0)

  USE (h.l1_table_offset, h.table_size, "the L1 table at", 0);
  for (uint64_t i = 0; i < nelems; i++) {
    uint64_t t = get64 (p + h.l1_table_offset + i * 8);

    if (t == 0)
      continue;
    USE (t, h.table_size, "L1 entry", i);
    for (uint64_t j = 0; j < nelems; j++) {
      uint64_t e = get64 (p + t + j * 8);

      if (e > QED_ENTRY_ZERO)
        USE (e, 1, "L2 entry of cluster", i * nelems + j);
    }
  }
#undef USE
  qsort (used, nused, sizeof *used, compare_u64);
  for (size_t i = 1; i < nused; i++)
    if (used[i] == used[i - 1])
      LAYOUT_FAIL ("cluster 0x%" PRIx64 " is referenced twice", used[i]);
  free (used);
  return h.header_size + nused;
}
