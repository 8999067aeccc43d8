/* nbdkit-qed: deadlines, retry delays and identities for the network
 * file layers (nbd.c, http.c).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <stdint.h>
#include <time.h>

#include "net-retry.h"

struct timespec
net_deadline_in (int ms)
{
  struct timespec t;

  clock_gettime (CLOCK_MONOTONIC, &t);
  t.tv_sec += ms / 1000;
  t.tv_nsec += (long) (ms % 1000) * 1000000;
  if (t.tv_nsec >= 1000000000) {
    t.tv_sec++;
    t.tv_nsec -= 1000000000;
  }
  return t;
}

int64_t
net_ms_until (const struct timespec *t)
{
  struct timespec now;

  clock_gettime (CLOCK_MONOTONIC, &now);
  return (t->tv_sec - now.tv_sec) * 1000 +
    (t->tv_nsec - now.tv_nsec + 999999) / 1000000;
}

int
net_retry_delay_ms (unsigned failures)
{
  unsigned shift = failures - 1;

  return shift < 6 && (RETRY_MIN_MS << shift) < RETRY_MAX_MS
    ? RETRY_MIN_MS << shift : RETRY_MAX_MS;
}

/* FNV-1a of s from the offset basis seed: two seeds, two numbers. */
static uint64_t
hash (const char *s, uint64_t seed)
{
  uint64_t h = seed;

  for (; *s; s++) {
    h ^= (unsigned char) *s;
    h *= UINT64_C (0x100000001b3);
  }
  return h;
}

void
net_uri_identity (const char *uri, uint64_t id[2])
{
  id[0] = hash (uri, UINT64_C (0xcbf29ce484222325));
  id[1] = hash (uri, UINT64_C (0x84222325cbf29ce4));
}
