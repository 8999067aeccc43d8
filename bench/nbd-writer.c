/* nbdkit-qed benchmarks: writes over NBD with flags fio cannot set.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 *   nbd-writer [-b BS] [-q QD] [-a ALIGN] [-s SIZE] [-t SECONDS]
 *              [-n MAX] [-f N] [-S] [-F] URI
 *
 * Writes BS bytes (default 4096) at a time over one NBD connection,
 * keeping QD requests (default 1) in flight, at random offsets that are
 * multiples of ALIGN (default BS) in the first SIZE bytes (default the
 * whole export), or sequentially with -S, for SECONDS (default 8) or
 * until MAX writes were sent.
 *
 *   -F    every write carries NBD_CMD_FLAG_FUA: durable before it
 *         completes.  fio's nbd engine never sets it (its --sync=1
 *         only opens files with O_SYNC, which the engine has none of);
 *         a guest's write with REQ_FUA, as journalling file systems
 *         send, arrives like this.
 *   -f N  after every N writes, wait for those in flight and send a
 *         flush (NBD_CMD_FLUSH), as a journal's commit does.
 *
 * Prints one line, as bench/fio-nbd.sh does:
 *
 *   IOPS MIBPS WRITES P50 P99 P99.9
 *
 * the percentiles being the latency of the writes (sent to completed)
 * in microseconds; the flushes are not counted as requests.  Built by
 * make (bench/Makefile.am) and run by bench/bench.sh; not part of make
 * check.
 */

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libnbd.h>

/* One request in flight. */
struct slot {
  double sent;                  /* now_us when it was sent */
  bool busy;
};

static double *lat;             /* latency of every completed write, us */
static size_t nlat, lat_alloc;
static int failed;              /* first error a write completed with */
static unsigned in_flight;

static double
now_us (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void
usage (void)
{
  fprintf (stderr, "usage: nbd-writer [-b BS] [-q QD] [-a ALIGN] [-s SIZE]"
           " [-t SECONDS] [-n MAX] [-f N] [-S] [-F] URI\n");
  exit (1);
}

/* A number with an optional K, M, G or T suffix (powers of 1024). */
static uint64_t
parse_size (const char *s)
{
  char *end;
  uint64_t v;

  errno = 0;
  v = strtoull (s, &end, 10);
  if (errno || end == s)
    usage ();
  switch (*end) {
  case 'T': v <<= 10; /* fallthrough */
  case 'G': v <<= 10; /* fallthrough */
  case 'M': v <<= 10; /* fallthrough */
  case 'K': v <<= 10; end++; break;
  default: break;
  }
  if (*end)
    usage ();
  return v;
}

static int
write_done (void *user_data, int *error)
{
  struct slot *slot = user_data;

  if (*error && !failed)
    failed = *error;
  if (nlat == lat_alloc) {
    lat_alloc = lat_alloc ? 2 * lat_alloc : 65536;
    lat = realloc (lat, lat_alloc * sizeof *lat);
    if (lat == NULL) {
      perror ("realloc");
      exit (1);
    }
  }
  lat[nlat++] = now_us () - slot->sent;
  slot->busy = false;
  in_flight--;
  return 1;                     /* retire the command */
}

/* A random 64-bit number (xorshift64*): the offsets need not be
 * good random numbers, only cheap and spread.
 */
static uint64_t
next_random (uint64_t *state)
{
  *state ^= *state >> 12;
  *state ^= *state << 25;
  *state ^= *state >> 27;
  return *state * 0x2545F4914F6CDD1DULL;
}

static int
compare_double (const void *a, const void *b)
{
  double x = *(const double *) a, y = *(const double *) b;
  return x < y ? -1 : x > y;
}

/* The p-th percentile (0 < p < 100) of the sorted latencies, as fio
 * computes it: the smallest value at or above p% of them.
 */
static double
percentile (double p)
{
  size_t i = (size_t) (p / 100 * nlat);

  if (nlat == 0)
    return 0;
  return lat[i < nlat ? i : nlat - 1];
}

static void
wait_in_flight (struct nbd_handle *h, unsigned max)
{
  while (in_flight > max)
    if (nbd_poll (h, -1) == -1) {
      fprintf (stderr, "nbd-writer: %s\n", nbd_get_error ());
      exit (1);
    }
}

int
main (int argc, char **argv)
{
  uint64_t bs = 4096, align = 0, size = 0, max = UINT64_MAX, sent = 0;
  uint64_t seed, slots_n, pos = 0;
  unsigned qd = 1, flush_every = 0, flags = 0;
  double seconds = 8, t0, t1;
  bool sequential = false;
  struct nbd_handle *h;
  struct slot *slots;
  char *buf;
  int c;

  while ((c = getopt (argc, argv, "b:q:a:s:t:n:f:SF")) != -1) {
    switch (c) {
    case 'b': bs = parse_size (optarg); break;
    case 'q': qd = atoi (optarg); break;
    case 'a': align = parse_size (optarg); break;
    case 's': size = parse_size (optarg); break;
    case 't': seconds = atof (optarg); break;
    case 'n': max = parse_size (optarg); break;
    case 'f': flush_every = atoi (optarg); break;
    case 'S': sequential = true; break;
    case 'F': flags = LIBNBD_CMD_FLAG_FUA; break;
    default: usage ();
    }
  }
  if (optind != argc - 1 || bs == 0 || qd == 0 || seconds <= 0 || max == 0)
    usage ();
  if (align == 0)
    align = bs;

  h = nbd_create ();
  if (h == NULL || nbd_connect_uri (h, argv[optind]) == -1) {
    fprintf (stderr, "nbd-writer: %s\n", nbd_get_error ());
    return 1;
  }
  if (size == 0 || size > (uint64_t) nbd_get_size (h))
    size = nbd_get_size (h);
  if (size < bs) {
    fprintf (stderr, "nbd-writer: the export is smaller than a write\n");
    return 1;
  }
  if (flags && nbd_can_fua (h) != 1) {
    fprintf (stderr, "nbd-writer: the server does not take FUA\n");
    return 1;
  }
  if (flush_every && nbd_can_flush (h) != 1) {
    fprintf (stderr, "nbd-writer: the server does not take flushes\n");
    return 1;
  }

  /* Data that is not zeros (a server may detect zeros). */
  buf = malloc (bs);
  slots = calloc (qd, sizeof *slots);
  if (buf == NULL || slots == NULL) {
    perror ("malloc");
    return 1;
  }
  seed = (uint64_t) now_us () | 1;
  for (uint64_t i = 0; i < bs; i++)
    buf[i] = next_random (&seed) | 1;
  /* Offsets where a whole write fits. */
  slots_n = (size - bs) / align + 1;

  t0 = now_us ();
  while (sent < max && now_us () - t0 < seconds * 1e6) {
    uint64_t offset;
    unsigned i;

    wait_in_flight (h, qd - 1);
    for (i = 0; slots[i].busy; i++)
      ;
    if (sequential) {
      offset = pos * align;
      pos = (pos + 1) % slots_n;
    }
    else
      offset = next_random (&seed) % slots_n * align;
    slots[i].busy = true;
    slots[i].sent = now_us ();
    if (nbd_aio_pwrite (h, buf, bs, offset,
                        (nbd_completion_callback) {
                          .callback = write_done, .user_data = &slots[i] },
                        flags) == -1) {
      fprintf (stderr, "nbd-writer: %s\n", nbd_get_error ());
      return 1;
    }
    in_flight++;
    sent++;
    if (flush_every && sent % flush_every == 0) {
      wait_in_flight (h, 0);
      if (nbd_flush (h, 0) == -1) {
        fprintf (stderr, "nbd-writer: flush: %s\n", nbd_get_error ());
        return 1;
      }
    }
    if (failed)
      break;
  }
  wait_in_flight (h, 0);
  t1 = now_us ();
  if (failed) {
    fprintf (stderr, "nbd-writer: a write failed: %s\n", strerror (failed));
    return 1;
  }
  nbd_shutdown (h, 0);
  nbd_close (h);

  qsort (lat, nlat, sizeof *lat, compare_double);
  printf ("%.1f %.2f %zu %.1f %.1f %.1f\n",
          nlat / ((t1 - t0) / 1e6),
          nlat * (double) bs / 1048576 / ((t1 - t0) / 1e6), nlat,
          percentile (50), percentile (99), percentile (99.9));
  free (lat);
  free (slots);
  free (buf);
  return 0;
}
