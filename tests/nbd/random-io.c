/* nbdkit-qed tests: random concurrent I/O over NBD against a raw file.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Usage: random-io URI REFERENCE SIZE CLUSTER SEED OPS
 *
 * REFERENCE is a raw file holding what the export holds at the start.
 * NCONN connections, one thread each, run OPS steps each; a step is
 * one or two random requests in flight together (in different stripes,
 * below): aligned and unaligned writes (some with FUA), zeros (with and
 * without FAST_ZERO and NO_HOLE), trims, flushes and reads.  Every
 * change is also made to REFERENCE, and every read must match it; at
 * the end each connection reads back all of its stripes.
 *
 * The disk is cut into stripes that are not a multiple of the cluster
 * size; stripe i belongs to connection i % NCONN, and a connection
 * touches only its own stripes, so the result does not depend on the
 * order of requests from different connections, while requests from
 * different connections share clusters.  The connections work in the
 * same small region of the disk at the same time (a barrier between
 * rounds), so allocating writes from several connections race for the
 * same clusters and L2 tables.
 *
 * Trim: the engine gives back only the clusters a trim covers wholly,
 * which then read as zeros, and leaves everything else; as all of a
 * trim lies in one stripe, so do those clusters.  A fast zero that
 * fails with ENOTSUP must have changed nothing.
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libnbd.h>

#define NCONN 4
#define OPS_PER_ROUND 8
#define NREGIONS 24             /* distinct places the rounds visit */

static const char *uri;
static int ref_fd;
static uint64_t size, cluster, stripe, nstripes;
static uint64_t seed;
static unsigned nops;
static uint64_t regions[NREGIONS];      /* first stripe of each region */
static pthread_barrier_t barrier;

struct stats {
  unsigned writes, zeros, fast_zeros, fast_zeros_refused, trims,
    trimmed_clusters, reads, flushes;
};

/* xorshift64*: small, fast, and the same everywhere. */
static uint64_t
rnd (uint64_t *s)
{
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * UINT64_C (2685821657736338717);
}

static uint64_t
rnd_range (uint64_t *s, uint64_t lo, uint64_t hi) /* [lo, hi] */
{
  return lo + rnd (s) % (hi - lo + 1);
}

static void
die (const char *what, uint64_t offset, uint64_t count)
{
  fprintf (stderr, "random-io: %s: offset=%" PRIu64 " count=%" PRIu64
           ": %s\n", what, offset, count, nbd_get_error () ?: "");
  exit (EXIT_FAILURE);
}

static void
ref_write (const void *buf, uint64_t count, uint64_t offset)
{
  while (count > 0) {
    ssize_t r = pwrite (ref_fd, buf, count, offset);
    if (r <= 0) {
      perror ("random-io: pwrite reference");
      exit (EXIT_FAILURE);
    }
    buf = (const char *) buf + r;
    count -= r;
    offset += r;
  }
}

static void
ref_read (void *buf, uint64_t count, uint64_t offset)
{
  while (count > 0) {
    ssize_t r = pread (ref_fd, buf, count, offset);
    if (r <= 0) {
      perror ("random-io: pread reference");
      exit (EXIT_FAILURE);
    }
    buf = (char *) buf + r;
    count -= r;
    offset += r;
  }
}

/* A range inside [lo, hi): unaligned, 512-aligned, cluster-aligned,
 * or short.
 */
static void
pick_range (uint64_t *s, uint64_t lo, uint64_t hi,
            uint64_t *offset, uint64_t *count)
{
  uint64_t a, b;

  switch (rnd (s) % 4) {
  case 0:                       /* whole clusters, if any */
    a = (lo + cluster - 1) / cluster * cluster;
    b = hi / cluster * cluster;
    if (a < b) {
      *offset = a + rnd_range (s, 0, (b - a) / cluster - 1) * cluster;
      *count = rnd_range (s, 1, (b - *offset) / cluster) * cluster;
      return;
    }
    break;
  case 1:                       /* 512-byte sectors, if any */
    a = (lo + 511) / 512 * 512;
    b = hi / 512 * 512;
    if (a < b) {
      *offset = a + rnd_range (s, 0, (b - a) / 512 - 1) * 512;
      *count = rnd_range (s, 1, (b - *offset) / 512) * 512;
      return;
    }
    break;
  case 2:                       /* short */
    *offset = rnd_range (s, lo, hi - 1);
    *count = rnd_range (s, 1, hi - *offset < 600 ? hi - *offset : 600);
    return;
  }
  *offset = rnd_range (s, lo, hi - 1);
  *count = rnd_range (s, 1, hi - *offset);
}

static void
fill_random (uint64_t *s, unsigned char *buf, uint64_t count)
{
  uint64_t i, v = 0;

  for (i = 0; i < count; i++) {
    if (i % 8 == 0)
      v = rnd (s);
    buf[i] = v >> (8 * (i % 8));
  }
}

static void
check_read (struct nbd_handle *nbd, unsigned char *buf, unsigned char *rbuf,
            uint64_t offset, uint64_t count, unsigned conn, unsigned op)
{
  uint64_t i;

  if (nbd_pread (nbd, buf, count, offset, 0) == -1)
    die ("pread", offset, count);
  ref_read (rbuf, count, offset);
  if (memcmp (buf, rbuf, count) != 0) {
    for (i = 0; buf[i] == rbuf[i]; i++)
      ;
    fprintf (stderr, "random-io: connection %u op %u: read at %" PRIu64
             " count %" PRIu64 ": byte %" PRIu64 " is %02x, expected %02x\n",
             conn, op, offset, count, offset + i, buf[i], rbuf[i]);
    exit (EXIT_FAILURE);
  }
}

struct thread {
  pthread_t tid;
  unsigned conn;
  struct stats stats;
};

enum kind { WRITE, ZERO, TRIM, READ, FLUSH };

/* One request; a connection has up to two in flight, in different
 * stripes.
 */
struct op {
  enum kind kind;
  uint64_t offset, count;
  uint32_t flags;
  unsigned char *buf;
  int64_t cookie;
  int result;                   /* 0: in flight, 1: done, -1: failed */
  int err;
};

static void
make_op (uint64_t *s, struct op *o, uint64_t lo, uint64_t hi)
{
  unsigned k = rnd (s) % 100;

  pick_range (s, lo, hi, &o->offset, &o->count);
  o->flags = 0;
  o->result = 0;
  if (k < 40) {
    o->kind = WRITE;
    if (rnd (s) % 10 == 0)
      o->flags |= LIBNBD_CMD_FLAG_FUA;
    fill_random (s, o->buf, o->count);
  }
  else if (k < 60) {
    o->kind = ZERO;
    if (rnd (s) % 2)
      o->flags |= LIBNBD_CMD_FLAG_FAST_ZERO;
    if (rnd (s) % 3 == 0)
      o->flags |= LIBNBD_CMD_FLAG_NO_HOLE;
    if (rnd (s) % 10 == 0)
      o->flags |= LIBNBD_CMD_FLAG_FUA;
  }
  else if (k < 72) {
    o->kind = TRIM;
    if (rnd (s) % 10 == 0)
      o->flags |= LIBNBD_CMD_FLAG_FUA;
  }
  else if (k < 95)
    o->kind = READ;
  else
    o->kind = FLUSH;
}

static void
submit (struct nbd_handle *nbd, struct op *o)
{
  switch (o->kind) {
  case WRITE:
    o->cookie = nbd_aio_pwrite (nbd, o->buf, o->count, o->offset,
                                NBD_NULL_COMPLETION, o->flags);
    break;
  case ZERO:
    o->cookie = nbd_aio_zero (nbd, o->count, o->offset,
                              NBD_NULL_COMPLETION, o->flags);
    break;
  case TRIM:
    o->cookie = nbd_aio_trim (nbd, o->count, o->offset,
                              NBD_NULL_COMPLETION, o->flags);
    break;
  case READ:
    o->cookie = nbd_aio_pread (nbd, o->buf, o->count, o->offset,
                               NBD_NULL_COMPLETION, 0);
    break;
  case FLUSH:
    o->cookie = nbd_aio_flush (nbd, NBD_NULL_COMPLETION, 0);
    break;
  }
  if (o->cookie == -1)
    die ("submit", o->offset, o->count);
}

/* Check the result of a finished request, and apply it to the
 * reference.
 */
static void
finish (struct op *o, struct stats *st, unsigned char *rbuf, unsigned conn,
        unsigned opno)
{
  static const char *names[] = { "write", "zero", "trim", "read", "flush" };
  uint64_t a, b, i;

  if (o->result == -1 &&
      !(o->kind == ZERO && (o->flags & LIBNBD_CMD_FLAG_FAST_ZERO) &&
        o->err == ENOTSUP)) {
    fprintf (stderr, "random-io: connection %u op %u: %s offset=%" PRIu64
             " count=%" PRIu64 " flags=0x%x failed: %s\n", conn, opno,
             names[o->kind], o->offset, o->count, o->flags,
             strerror (o->err));
    exit (EXIT_FAILURE);
  }
  switch (o->kind) {
  case WRITE:
    ref_write (o->buf, o->count, o->offset);
    st->writes++;
    break;
  case ZERO:
    st->zeros++;
    if (o->flags & LIBNBD_CMD_FLAG_FAST_ZERO)
      st->fast_zeros++;
    if (o->result == -1)        /* ENOTSUP: not done, nothing changed */
      st->fast_zeros_refused++;
    else {
      memset (o->buf, 0, o->count);
      ref_write (o->buf, o->count, o->offset);
    }
    break;
  case TRIM:
    /* Only wholly covered clusters change: they read as zeros. */
    a = (o->offset + cluster - 1) / cluster * cluster;
    b = (o->offset + o->count) / cluster * cluster;
    if (a < b) {
      memset (o->buf, 0, b - a);
      ref_write (o->buf, b - a, a);
      st->trimmed_clusters += (b - a) / cluster;
    }
    st->trims++;
    break;
  case READ:
    ref_read (rbuf, o->count, o->offset);
    if (memcmp (o->buf, rbuf, o->count) != 0) {
      for (i = 0; o->buf[i] == rbuf[i]; i++)
        ;
      fprintf (stderr, "random-io: connection %u op %u: read at %" PRIu64
               " count %" PRIu64 ": byte %" PRIu64 " is %02x, expected %02x\n",
               conn, opno, o->offset, o->count, o->offset + i, o->buf[i],
               rbuf[i]);
      exit (EXIT_FAILURE);
    }
    st->reads++;
    break;
  case FLUSH:
    st->flushes++;
    break;
  }
}

static void *
run (void *arg)
{
  struct thread *t = arg;
  struct stats *st = &t->stats;
  uint64_t s = seed * 0x9E3779B97F4A7C15u + t->conn + 1;
  uint64_t rs = seed + 12345;   /* the same region sequence for all */
  struct nbd_handle *nbd;
  struct op ops[2];
  unsigned char *buf, *rbuf;
  uint64_t base = 0;
  unsigned op, j, n;

  buf = malloc (stripe);
  rbuf = malloc (stripe);
  ops[0].buf = malloc (stripe);
  ops[1].buf = malloc (stripe);
  if (!buf || !rbuf || !ops[0].buf || !ops[1].buf) {
    perror ("malloc");
    exit (EXIT_FAILURE);
  }
  nbd = nbd_create ();
  if (nbd == NULL || nbd_connect_uri (nbd, uri) == -1)
    die ("connect", 0, 0);
  if (nbd_get_size (nbd) != (int64_t) size ||
      nbd_can_trim (nbd) != 1 || nbd_can_zero (nbd) != 1 ||
      nbd_can_fast_zero (nbd) != 1 || nbd_can_fua (nbd) != 1 ||
      nbd_can_flush (nbd) != 1 || nbd_can_multi_conn (nbd) != 1 ||
      nbd_is_read_only (nbd) != 0) {
    fprintf (stderr, "random-io: unexpected size or flags\n");
    exit (EXIT_FAILURE);
  }

  for (op = 0; op < nops; op++) {
    int r;

    if (op % OPS_PER_ROUND == 0) {
      r = pthread_barrier_wait (&barrier);
      if (r != 0 && r != PTHREAD_BARRIER_SERIAL_THREAD) {
        errno = r;
        perror ("pthread_barrier_wait");
        exit (EXIT_FAILURE);
      }
      base = regions[rnd (&rs) % NREGIONS];
    }

    /* A request in one or both of our stripes in this round's region,
     * in flight together.
     */
    n = 0;
    for (j = 0; j < 2; j++) {
      uint64_t st_idx = base + t->conn + j * NCONN, lo, hi;

      if (st_idx >= nstripes || (j == 1 && rnd (&s) % 2))
        continue;
      lo = st_idx * stripe;
      hi = lo + stripe < size ? lo + stripe : size;
      make_op (&s, &ops[n], lo, hi);
      submit (nbd, &ops[n]);
      n++;
    }
    for (;;) {
      bool busy = false;

      for (j = 0; j < n; j++) {
        if (ops[j].result != 0)
          continue;
        r = nbd_aio_command_completed (nbd, ops[j].cookie);
        if (r == 0)
          busy = true;
        else if (r == 1)
          ops[j].result = 1;
        else {
          ops[j].result = -1;
          ops[j].err = nbd_get_errno ();
        }
      }
      if (!busy)
        break;
      if (nbd_poll (nbd, -1) == -1)
        die ("poll", 0, 0);
    }
    for (j = 0; j < n; j++)
      finish (&ops[j], st, rbuf, t->conn, op);
  }

  /* Our whole share reads back as the reference. */
  for (uint64_t i = t->conn; i < nstripes; i += NCONN) {
    uint64_t lo = i * stripe;
    uint64_t hi = lo + stripe < size ? lo + stripe : size;
    check_read (nbd, buf, rbuf, lo, hi - lo, t->conn, nops);
  }

  if (nbd_flush (nbd, 0) == -1)
    die ("flush", 0, 0);
  if (nbd_shutdown (nbd, 0) == -1)
    die ("shutdown", 0, 0);
  nbd_close (nbd);
  free (buf);
  free (rbuf);
  free (ops[0].buf);
  free (ops[1].buf);
  return NULL;
}

int
main (int argc, char *argv[])
{
  struct thread threads[NCONN];
  struct stats total = { 0 };
  uint64_t s;
  unsigned i;

  if (argc != 7) {
    fprintf (stderr,
             "usage: random-io URI REFERENCE SIZE CLUSTER SEED OPS\n");
    exit (EXIT_FAILURE);
  }
  uri = argv[1];
  ref_fd = open (argv[2], O_RDWR);
  if (ref_fd == -1) {
    perror (argv[2]);
    exit (EXIT_FAILURE);
  }
  size = strtoull (argv[3], NULL, 0);
  cluster = strtoull (argv[4], NULL, 0);
  seed = strtoull (argv[5], NULL, 0);
  nops = strtoul (argv[6], NULL, 0);
  if (size == 0 || cluster < 512 || (cluster & (cluster - 1)) != 0 ||
      lseek (ref_fd, 0, SEEK_END) != (off_t) size) {
    fprintf (stderr, "random-io: bad size or cluster size\n");
    exit (EXIT_FAILURE);
  }

  /* Not a multiple of the cluster size, nor of 512. */
  stripe = cluster * 5 / 2 + 1234;
  nstripes = (size + stripe - 1) / stripe;

  /* Regions of 2 * NCONN stripes, the last one always among them. */
  s = seed + 1;
  for (i = 0; i < NREGIONS; i++)
    regions[i] = rnd (&s) % ((nstripes + NCONN - 1) / NCONN) * NCONN;
  regions[0] = (nstripes - 1) / NCONN * NCONN;
  if (regions[0] >= NCONN)
    regions[1] = regions[0] - NCONN;

  printf ("random-io: size %" PRIu64 " cluster %" PRIu64 " stripe %" PRIu64
          " seed %" PRIu64 " ops %u x %d\n",
          size, cluster, stripe, seed, nops, NCONN);
  fflush (stdout);

  if (pthread_barrier_init (&barrier, NULL, NCONN) != 0) {
    perror ("pthread_barrier_init");
    exit (EXIT_FAILURE);
  }
  for (i = 0; i < NCONN; i++) {
    memset (&threads[i], 0, sizeof threads[i]);
    threads[i].conn = i;
    errno = pthread_create (&threads[i].tid, NULL, run, &threads[i]);
    if (errno != 0) {
      perror ("pthread_create");
      exit (EXIT_FAILURE);
    }
  }
  for (i = 0; i < NCONN; i++) {
    struct stats *st = &threads[i].stats;

    errno = pthread_join (threads[i].tid, NULL);
    if (errno != 0) {
      perror ("pthread_join");
      exit (EXIT_FAILURE);
    }
    total.writes += st->writes;
    total.zeros += st->zeros;
    total.fast_zeros += st->fast_zeros;
    total.fast_zeros_refused += st->fast_zeros_refused;
    total.trims += st->trims;
    total.trimmed_clusters += st->trimmed_clusters;
    total.reads += st->reads;
    total.flushes += st->flushes;
  }
  printf ("random-io: %u writes, %u zeros (%u fast, %u of them refused), "
          "%u trims (%u whole clusters), %u reads, %u flushes\n",
          total.writes, total.zeros, total.fast_zeros,
          total.fast_zeros_refused, total.trims, total.trimmed_clusters,
          total.reads, total.flushes);
  if (close (ref_fd) == -1) {
    perror ("close reference");
    exit (EXIT_FAILURE);
  }
  exit (EXIT_SUCCESS);
}
