/* nbdkit-qed tests: helpers for the C unit tests of lib/.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
