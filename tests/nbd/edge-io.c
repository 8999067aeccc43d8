/* nbdkit-qed tests: NBD requests at every edge, and many in flight.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Usage: edge-io URI REFERENCE CLUSTER TABLE_SIZE SEED
 *
 * REFERENCE is a raw file (sparse is fine) holding what the export
 * holds at the start, and kept equal to it: every change is made to
 * both, and every read must match.  Strict mode is off, so libnbd
 * sends whatever the protocol can carry and the server must cope.
 *
 * 1. One connection, one request at a time:
 *    - the advertised block sizes (minimum 1, preferred the cluster
 *      size, maximum 32 MiB);
 *    - the end of the disk: the last byte read, written, zeroed,
 *      trimmed and block-status'ed; requests crossing the end, at the
 *      end and far beyond it fail and change nothing;
 *    - zero-length requests (anywhere, also at the end) either fail
 *      or do nothing, and change nothing;
 *    - maximum-size requests (32 MiB, and the 64 MiB libnbd can send)
 *      of every kind, unaligned;
 *    - at one byte either side of, and on, cluster, L2-slice (512
 *      clusters) and L2-table boundaries: writes, zeros (also with
 *      FAST_ZERO), trims, reads and block status of lengths 1, 2,
 *      cluster +- 1 and a few clusters, starting at and straddling
 *      the boundary.
 * 2. NCONN connections with INFLIGHT requests each in flight at once:
 *    rounds of writes, zeros, trims, reads and block status on
 *    disjoint pieces of the windows around those boundaries (pieces
 *    that share clusters, so allocations race), then everything is
 *    read back from all connections at once.
 *
 * Block status: extents are contiguous, non-empty and start at the
 * request's offset; an extent flagged zero reads as zeros.  Trim: the
 * wholly covered clusters may read as zeros afterwards or keep their
 * data; the reference takes whatever they read.
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

#ifndef NCONN
#define NCONN 8
#endif
#ifndef INFLIGHT
#define INFLIGHT 64
#endif
#define ROUNDS 12
#define MiB (UINT64_C (1) << 20)
#define MAX_REQUEST (32 * MiB)
#define LIBNBD_MAX (64 * MiB)
#define WINDOW (4 * MiB)        /* each side of a boundary, in phase 2 */

static const char *uri;
static int ref_fd;
static uint64_t size, cluster, slice_span, table_span;

static void
die (const char *what, uint64_t offset, uint64_t count)
{
  fprintf (stderr, "edge-io: %s: offset=%" PRIu64 " count=%" PRIu64 "\n",
           what, offset, count);
  exit (EXIT_FAILURE);
}

static void
nbd_die (const char *what, uint64_t offset, uint64_t count)
{
  int err = nbd_get_errno ();
  const char *msg = nbd_get_error ();

  fprintf (stderr, "edge-io: %s: offset=%" PRIu64 " count=%" PRIu64
           ": %s\n", what, offset, count,
           msg ? msg : err ? strerror (err) : "failed");
  exit (EXIT_FAILURE);
}

static uint64_t
rnd (uint64_t *s)
{
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * UINT64_C (2685821657736338717);
}

static void *
xmalloc (size_t n)
{
  void *p = malloc (n ? n : 1);
  if (p == NULL) {
    perror ("malloc");
    exit (EXIT_FAILURE);
  }
  return p;
}

static void
fill (unsigned char *buf, uint64_t n, uint64_t seed)
{
  uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;

  for (uint64_t i = 0; i < n; i++) {
    if (i % 8 == 0)
      rnd (&s);
    buf[i] = (unsigned char) (s >> (8 * (i % 8))) | 0x80;
  }
}

/*----------------------------------------------------------------------
 * The reference file.
 */
static void
ref_read (void *buf, uint64_t count, uint64_t offset)
{
  if (pread (ref_fd, buf, count, offset) != (ssize_t) count)
    die ("reading the reference", offset, count);
}

static void
ref_write (const void *buf, uint64_t count, uint64_t offset)
{
  if (pwrite (ref_fd, buf, count, offset) != (ssize_t) count)
    die ("writing the reference", offset, count);
}

static void
ref_zero (uint64_t count, uint64_t offset)
{
  if (fallocate (ref_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                 offset, count) == -1) {
    static const unsigned char zeros[65536];
    while (count > 0) {
      uint64_t n = count < sizeof zeros ? count : sizeof zeros;
      ref_write (zeros, n, offset);
      offset += n;
      count -= n;
    }
  }
}

/* What the export read must be what the reference holds. */
static void
compare (const unsigned char *got, uint64_t count, uint64_t offset,
         const char *what)
{
  unsigned char *want = xmalloc (count);

  ref_read (want, count, offset);
  for (uint64_t i = 0; i < count; i++)
    if (got[i] != want[i]) {
      fprintf (stderr, "edge-io: %s: byte %" PRIu64 " reads 0x%02x,"
               " expected 0x%02x\n", what, offset + i, got[i], want[i]);
      exit (EXIT_FAILURE);
    }
  free (want);
}

/* After a trim: the wholly covered clusters read as zeros or as
 * before; the reference takes what they read.  got is what
 * [offset, offset + count) reads now.
 */
static void
settle_trim (const unsigned char *got, uint64_t count, uint64_t offset,
             uint64_t tcount, uint64_t toffset)
{
  uint64_t start = (toffset + cluster - 1) / cluster * cluster;
  uint64_t end = (toffset + tcount) / cluster * cluster;
  unsigned char *want = xmalloc (count);

  ref_read (want, count, offset);
  for (uint64_t i = 0; i < count; i++) {
    uint64_t o = offset + i;
    if (got[i] == want[i])
      continue;
    if (o >= start && o < end && got[i] == 0) {
      want[i] = 0;
      continue;
    }
    fprintf (stderr, "edge-io: after trim of %" PRIu64 "+%" PRIu64
             ": byte %" PRIu64 " reads 0x%02x, expected 0x%02x\n",
             toffset, tcount, o, got[i], want[i]);
    exit (EXIT_FAILURE);
  }
  ref_write (want, count, offset);
  free (want);
}

/*----------------------------------------------------------------------
 * Synchronous helpers (phase 1).
 */
static struct nbd_handle *
connect_export (void)
{
  struct nbd_handle *h = nbd_create ();

  if (h == NULL ||
      nbd_set_strict_mode (h, 0) == -1 ||
      nbd_add_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1 ||
      nbd_connect_uri (h, uri) == -1)
    nbd_die ("connect", 0, 0);
  return h;
}

static void
verify (struct nbd_handle *h, uint64_t count, uint64_t offset,
        const char *what)
{
  while (count > 0) {
    uint64_t n = count < MAX_REQUEST ? count : MAX_REQUEST;
    unsigned char *buf = xmalloc (n);

    if (nbd_pread (h, buf, n, offset, 0) == -1)
      nbd_die (what, offset, n);
    compare (buf, n, offset, what);
    free (buf);
    offset += n;
    count -= n;
  }
}

/* Read back the request's range and a cluster either side of it. */
static void
verify_around (struct nbd_handle *h, uint64_t count, uint64_t offset,
               const char *what)
{
  uint64_t start = offset > cluster ? offset - cluster : 0;
  uint64_t end = size - offset - count > cluster ? offset + count + cluster
    : size;

  verify (h, end - start, start, what);
}

static void
do_write (struct nbd_handle *h, uint64_t count, uint64_t offset,
          uint32_t flags, uint64_t seed)
{
  unsigned char *buf = xmalloc (count);

  fill (buf, count, seed);
  if (nbd_pwrite (h, buf, count, offset, flags) == -1)
    nbd_die ("write", offset, count);
  ref_write (buf, count, offset);
  free (buf);
  verify_around (h, count, offset, "after write");
}

static void
do_zero (struct nbd_handle *h, uint64_t count, uint64_t offset,
         uint32_t flags)
{
  if (nbd_zero (h, count, offset, flags) == -1) {
    if ((flags & LIBNBD_CMD_FLAG_FAST_ZERO) && nbd_get_errno () == ENOTSUP) {
      verify_around (h, count, offset, "after a refused fast zero");
      return;
    }
    nbd_die ("zero", offset, count);
  }
  ref_zero (count, offset);
  verify_around (h, count, offset, "after zero");
}

static void
do_trim (struct nbd_handle *h, uint64_t count, uint64_t offset)
{
  uint64_t start = offset > cluster ? offset - cluster : 0;
  uint64_t end = size - offset - count > cluster ? offset + count + cluster
    : size;
  unsigned char *buf;

  if (nbd_trim (h, count, offset, 0) == -1)
    nbd_die ("trim", offset, count);
  /* Read it all back in pieces. */
  for (uint64_t o = start; o < end; o += MAX_REQUEST) {
    uint64_t n = end - o < MAX_REQUEST ? end - o : MAX_REQUEST;
    buf = xmalloc (n);
    if (nbd_pread (h, buf, n, o, 0) == -1)
      nbd_die ("read after trim", o, n);
    settle_trim (buf, n, o, count, offset);
    free (buf);
  }
}

struct bs_check {
  uint64_t offset, count, next;
  unsigned extents;
  bool bad;
};

static int
extent_cb (void *opaque, const char *metacontext, uint64_t offset,
           uint32_t *entries, size_t nr_entries, int *error)
{
  struct bs_check *c = opaque;
  uint64_t o = offset;

  if (strcmp (metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
    return 0;
  if (*error || offset != c->offset || nr_entries == 0 ||
      nr_entries % 2 != 0) {
    c->bad = true;
    return 0;
  }
  for (size_t i = 0; i < nr_entries; i += 2) {
    uint32_t len = entries[i], type = entries[i + 1];
    if (len == 0 || (type & ~3u) != 0) {
      c->bad = true;
      return 0;
    }
    /* A zero extent must read as zeros (its first 64 KiB inside the
     * request: the rest of the disk may be changing under other
     * connections).
     */
    if ((type & LIBNBD_STATE_ZERO) && o < c->offset + c->count) {
      uint64_t n = len < 65536 ? len : 65536;
      unsigned char *want;
      if (n > c->offset + c->count - o)
        n = c->offset + c->count - o;
      want = xmalloc (n);
      ref_read (want, n, o);
      for (uint64_t k = 0; k < n; k++)
        if (want[k] != 0) {
          fprintf (stderr, "edge-io: block status says %" PRIu64 "+%"
                   PRIu32 " reads as zeros, but byte %" PRIu64 " is not\n",
                   o, len, o + k);
          c->bad = true;
          break;
        }
      free (want);
    }
    o += len;
    c->extents++;
  }
  c->next = o;
  return 0;
}

static void
do_block_status (struct nbd_handle *h, uint64_t count, uint64_t offset)
{
  struct bs_check c = { .offset = offset, .count = count };

  if (nbd_block_status (h, count, offset,
                        (nbd_extent_callback) { .callback = extent_cb,
                                                .user_data = &c }, 0) == -1)
    nbd_die ("block status", offset, count);
  if (c.bad || c.extents == 0 || c.next <= offset)
    die ("block status replied wrongly", offset, count);
}

/* A request that must fail and change nothing: also checks that the
 * connection still works afterwards.
 */
enum op { OP_READ, OP_WRITE, OP_ZERO, OP_TRIM, OP_BLOCK_STATUS, NOPS };
static const char *const op_names[] = {
  "read", "write", "zero", "trim", "block status",
};

static int
send_op (struct nbd_handle *h, enum op op, uint64_t count, uint64_t offset,
         unsigned char *buf)
{
  struct bs_check c = { .offset = offset };

  switch (op) {
  case OP_READ: return nbd_pread (h, buf, count, offset, 0);
  case OP_WRITE: return nbd_pwrite (h, buf, count, offset, 0);
  case OP_ZERO: return nbd_zero (h, count, offset, 0);
  case OP_TRIM: return nbd_trim (h, count, offset, 0);
  default:
    return nbd_block_status (h, count, offset,
                             (nbd_extent_callback) { .callback = extent_cb,
                                                     .user_data = &c }, 0);
  }
}

static void
must_fail (struct nbd_handle *h, enum op op, uint64_t count, uint64_t offset)
{
  unsigned char *buf;
  int err, r;

  if (op == OP_READ || op == OP_WRITE) {
    if (count > LIBNBD_MAX)
      return;                   /* libnbd cannot send it */
    buf = xmalloc (count);
    memset (buf, 0xe5, count);
  }
  else
    buf = NULL;
  r = send_op (h, op, count, offset, buf);
  free (buf);
  if (r != -1) {
    fprintf (stderr, "edge-io: %s of %" PRIu64 "+%" PRIu64
             " past the end succeeded\n", op_names[op], offset, count);
    exit (EXIT_FAILURE);
  }
  /* nbdkit answers out-of-range writes and zeros with ENOSPC (the
   * disk cannot grow), the rest with EINVAL.
   */
  err = nbd_get_errno ();
  if (err != EINVAL && err != ENOSPC) {
    fprintf (stderr, "edge-io: %s of %" PRIu64 "+%" PRIu64 " failed with"
             " %s, expected EINVAL or ENOSPC\n", op_names[op], offset, count,
             strerror (err));
    exit (EXIT_FAILURE);
  }
}

/* Zero length: success or EINVAL/ENOSPC, and no change. */
static void
zero_length (struct nbd_handle *h, enum op op, uint64_t offset)
{
  unsigned char buf[1] = { 0xe5 };

  if (send_op (h, op, 0, offset, buf) == -1 &&
      nbd_get_errno () != EINVAL && nbd_get_errno () != ENOSPC) {
    fprintf (stderr, "edge-io: zero-length %s at %" PRIu64 " failed with"
             " %s\n", op_names[op], offset, strerror (nbd_get_errno ()));
    exit (EXIT_FAILURE);
  }
}

static void
phase_limits (struct nbd_handle *h)
{
  uint64_t huge[] = { size, size + 1, size + cluster, UINT64_C (1) << 62,
                      INT64_MAX, UINT64_MAX - 1 };

  if (nbd_get_size (h) != (int64_t) size)
    die ("wrong export size", nbd_get_size (h), size);
  if (nbd_get_block_size (h, LIBNBD_SIZE_MINIMUM) != 1 ||
      nbd_get_block_size (h, LIBNBD_SIZE_PREFERRED) !=
      (int64_t) (cluster < MAX_REQUEST ? cluster : MAX_REQUEST) ||
      nbd_get_block_size (h, LIBNBD_SIZE_MAXIMUM) != (int64_t) MAX_REQUEST)
    die ("unexpected block sizes", 0, 0);
  if (!nbd_can_trim (h) || !nbd_can_zero (h) || !nbd_can_fast_zero (h) ||
      nbd_is_read_only (h))
    die ("the export cannot do everything", 0, 0);

  /* The last byte. */
  do_write (h, 1, size - 1, 0, 1);
  do_write (h, 1, size - 1, LIBNBD_CMD_FLAG_FUA, 2);
  do_block_status (h, 1, size - 1);
  do_trim (h, 1, size - 1);
  do_zero (h, 1, size - 1, 0);
  do_write (h, 7, size - 7, 0, 3);
  do_zero (h, 3, size - 3, LIBNBD_CMD_FLAG_FAST_ZERO);
  verify (h, 1, size - 1, "the last byte");

  /* Crossing the end, at the end, far beyond. */
  for (enum op op = 0; op < NOPS; op++) {
    must_fail (h, op, 2, size - 1);
    must_fail (h, op, cluster + 1, size - cluster);
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++)
      must_fail (h, op, 1, huge[i]);
    must_fail (h, op, UINT32_MAX, size - 1);
  }
  verify (h, 2 * cluster, size - 2 * cluster, "after requests past the end");

  /* Zero length. */
  for (enum op op = 0; op < NOPS; op++) {
    zero_length (h, op, 0);
    zero_length (h, op, size / 2 + 1);
    zero_length (h, op, size - 1);
    zero_length (h, op, size);
    zero_length (h, op, size + 1);
  }
  verify (h, cluster, 0, "after zero-length requests");
  verify (h, 2 * cluster, size - 2 * cluster, "after zero-length requests");

  /* The largest requests: 32 MiB as advertised, and 64 MiB (as much
   * as libnbd sends) that nbdkit 1.32 passes on too.  Unaligned.
   */
  if (size < 5 * MAX_REQUEST)
    die ("the disk is too small for this test", 0, size);
  {
    uint64_t o = size - LIBNBD_MAX - cluster - 1;
    do_write (h, MAX_REQUEST, cluster + 1, 0, 4);
    verify (h, MAX_REQUEST, cluster + 1, "32 MiB read");
    do_block_status (h, MAX_REQUEST, 1);
    do_write (h, LIBNBD_MAX, o, 0, 5);
    verify (h, LIBNBD_MAX, o, "64 MiB read");
    do_zero (h, MAX_REQUEST, cluster / 2, 0);
    do_write (h, MAX_REQUEST, cluster * 3 - 1, 0, 6);
    do_zero (h, MAX_REQUEST, cluster * 2 + 1, LIBNBD_CMD_FLAG_FAST_ZERO);
    do_trim (h, MAX_REQUEST, cluster * 5 + 7);
    do_zero (h, 4 * MAX_REQUEST, size - 4 * MAX_REQUEST - 12345, 0);
    do_trim (h, 4 * MAX_REQUEST, 3);
    do_block_status (h, UINT32_MAX < size ? UINT32_MAX : size, 0);
  }
}

/* Cluster, L2-slice and L2-table boundaries inside the disk, and its
 * last cluster boundary.
 */
static size_t
boundaries (uint64_t *b, size_t max)
{
  uint64_t cand[] = {
    cluster, 2 * cluster, slice_span - cluster, slice_span,
    slice_span + cluster, 2 * slice_span, table_span - slice_span,
    table_span - cluster, table_span, table_span + cluster,
    table_span + slice_span, 2 * table_span, (size - 1) / cluster * cluster,
  };
  size_t n = 0;

  for (size_t i = 0; i < sizeof cand / sizeof cand[0] && n < max; i++) {
    bool dup = false;
    if (cand[i] == 0 || cand[i] >= size)
      continue;
    for (size_t j = 0; j < n; j++)
      dup |= b[j] == cand[i];
    if (!dup)
      b[n++] = cand[i];
  }
  return n;
}

static void
phase_boundaries (struct nbd_handle *h, uint64_t *seed)
{
  uint64_t b[16];
  size_t nb = boundaries (b, 16);
  const uint64_t lens[] = { 1, 2, cluster - 1, cluster, cluster + 1,
                            3 * cluster + 3 };

  for (size_t i = 0; i < nb; i++)
    for (int d = -1; d <= 1; d++)
      for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++)
        for (int straddle = 0; straddle <= 1; straddle++) {
          uint64_t len = lens[l];
          uint64_t o = b[i] + d;
          unsigned kind = rnd (seed) % 8;

          if (straddle)
            o = o > len / 2 ? o - len / 2 : 0;
          if (o + len > size)
            o = size - len;
          /* Mostly writes, so that the zeros and trims find data. */
          do_write (h, len, o, 0, rnd (seed));
          switch (kind) {
          case 0: do_zero (h, len, o, 0); break;
          case 1: do_zero (h, len, o, LIBNBD_CMD_FLAG_FAST_ZERO); break;
          case 2: do_zero (h, len, o, LIBNBD_CMD_FLAG_NO_HOLE); break;
          case 3: do_trim (h, len, o); break;
          case 4: do_write (h, len, o, LIBNBD_CMD_FLAG_FUA, rnd (seed));
            break;
          default: break;
          }
          do_block_status (h, len, o);
          o = o > cluster ? o - cluster : 0;
          do_block_status (h, size - o < 3 * cluster ? size - o
                           : 3 * cluster, o);
        }
}

/*----------------------------------------------------------------------
 * Phase 2: many requests in flight on many connections.
 */
struct piece {
  uint64_t offset, count;
};

static struct piece *pieces;
static size_t npieces;
static pthread_barrier_t barrier;
static uint64_t base_seed;

struct req {
  enum op op;
  uint32_t flags;
  struct piece p;
  unsigned char *buf;
  int64_t cookie;
  struct bs_check bs;
};

static void
run_round (struct nbd_handle *h, unsigned conn, unsigned round,
           uint64_t *seed)
{
  struct req reqs[INFLIGHT];

  for (unsigned i = 0; i < INFLIGHT; i++) {
    struct req *r = &reqs[i];
    /* The pieces of this round: disjoint between connections. */
    size_t pi = ((size_t) round * NCONN * INFLIGHT + conn * INFLIGHT + i)
      % npieces;

    r->p = pieces[pi];
    r->op = rnd (seed) % 6;
    if (r->op == NOPS)
      r->op = OP_WRITE;
    r->flags = 0;
    r->buf = NULL;
    switch (r->op) {
    case OP_READ:
      r->buf = xmalloc (r->p.count);
      r->cookie = nbd_aio_pread (h, r->buf, r->p.count, r->p.offset,
                                 NBD_NULL_COMPLETION, 0);
      break;
    case OP_WRITE:
      r->buf = xmalloc (r->p.count);
      fill (r->buf, r->p.count, rnd (seed));
      r->flags = rnd (seed) % 4 == 0 ? LIBNBD_CMD_FLAG_FUA : 0;
      r->cookie = nbd_aio_pwrite (h, r->buf, r->p.count, r->p.offset,
                                  NBD_NULL_COMPLETION, r->flags);
      break;
    case OP_ZERO: {
      static const uint32_t zf[] = {
        0, LIBNBD_CMD_FLAG_NO_HOLE, LIBNBD_CMD_FLAG_FAST_ZERO,
        LIBNBD_CMD_FLAG_FUA,
      };
      r->flags = zf[rnd (seed) % 4];
      r->cookie = nbd_aio_zero (h, r->p.count, r->p.offset,
                                NBD_NULL_COMPLETION, r->flags);
      break;
    }
    case OP_TRIM:
      r->cookie = nbd_aio_trim (h, r->p.count, r->p.offset,
                                NBD_NULL_COMPLETION, 0);
      break;
    default:
      /* The reference does not change during the round for this
       * piece, so zero extents can be checked against it.
       */
      r->bs = (struct bs_check) { .offset = r->p.offset,
                                  .count = r->p.count };
      r->cookie = nbd_aio_block_status (h, r->p.count, r->p.offset,
                                        (nbd_extent_callback) {
                                          .callback = extent_cb,
                                          .user_data = &r->bs },
                                        NBD_NULL_COMPLETION, 0);
    }
    if (r->cookie == -1)
      nbd_die ("aio request", r->p.offset, r->p.count);
  }

  while (nbd_aio_in_flight (h) > 0)
    if (nbd_poll (h, -1) == -1)
      nbd_die ("poll", 0, 0);

  for (unsigned i = 0; i < INFLIGHT; i++) {
    struct req *r = &reqs[i];
    int c = nbd_aio_command_completed (h, r->cookie);
    unsigned char *buf;

    if (c == -1 && !(r->op == OP_ZERO &&
                     (r->flags & LIBNBD_CMD_FLAG_FAST_ZERO) &&
                     nbd_get_errno () == ENOTSUP))
      nbd_die (op_names[r->op], r->p.offset, r->p.count);
    if (c == 0)
      die ("a command did not complete", r->p.offset, r->p.count);
    switch (r->op) {
    case OP_READ:
      compare (r->buf, r->p.count, r->p.offset, "concurrent read");
      break;
    case OP_WRITE:
      ref_write (r->buf, r->p.count, r->p.offset);
      break;
    case OP_ZERO:
      if (c == 1)
        ref_zero (r->p.count, r->p.offset);
      break;
    case OP_TRIM:
      /* Settle what the trimmed piece reads now (nobody else touches
       * it in this round).
       */
      buf = xmalloc (r->p.count);
      if (nbd_pread (h, buf, r->p.count, r->p.offset, 0) == -1)
        nbd_die ("read after trim", r->p.offset, r->p.count);
      settle_trim (buf, r->p.count, r->p.offset, r->p.count, r->p.offset);
      free (buf);
      break;
    default:
      if (r->bs.bad || r->bs.extents == 0)
        die ("concurrent block status replied wrongly", r->p.offset,
             r->p.count);
    }
    free (r->buf);
  }
}

static void *
conn_thread (void *arg)
{
  unsigned conn = (uintptr_t) arg;
  struct nbd_handle *h = connect_export ();
  uint64_t seed = base_seed + conn * 7919 + 1;

  for (unsigned round = 0; round < ROUNDS; round++) {
    run_round (h, conn, round, &seed);
    pthread_barrier_wait (&barrier);
  }

  /* Read everything back, all connections at once, each a share. */
  for (size_t i = conn; i < npieces; i += NCONN) {
    unsigned char *buf = xmalloc (pieces[i].count);
    if (nbd_pread (h, buf, pieces[i].count, pieces[i].offset, 0) == -1)
      nbd_die ("final read", pieces[i].offset, pieces[i].count);
    compare (buf, pieces[i].count, pieces[i].offset, "final read");
    free (buf);
  }
  if (nbd_flush (h, 0) == -1)
    nbd_die ("flush", 0, 0);
  nbd_shutdown (h, 0);
  nbd_close (h);
  return NULL;
}

/* Cut the windows around the boundaries (and the end) into pieces of
 * 1 byte to a few clusters, unaligned, then shuffle them.  A round
 * gives each request in flight a different piece.
 */
static int
compare_u64 (const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
  return x < y ? -1 : x > y;
}

static void
make_pieces (uint64_t *seed)
{
  uint64_t b[16], start, end;
  size_t nb = boundaries (b, 15), cap = 1024;

  pieces = xmalloc (cap * sizeof *pieces);
  b[nb++] = size;
  qsort (b, nb, sizeof b[0], compare_u64);
  for (size_t i = 0; i < nb;) {
    /* Merge the windows of nearby boundaries. */
    start = b[i] > WINDOW ? b[i] - WINDOW : 0;
    end = size - b[i] > WINDOW ? b[i] + WINDOW : size;
    for (i++; i < nb && b[i] < end + WINDOW; i++)
      end = size - b[i] > WINDOW ? b[i] + WINDOW : size;

    for (uint64_t o = start; o < end;) {
      uint64_t n;
      switch (rnd (seed) % 4) {
      case 0: n = 1 + rnd (seed) % 600; break;
      case 1: n = cluster - 3 + rnd (seed) % 7; break;
      default: n = 1 + rnd (seed) % (2 * cluster); break;
      }
      if (n > end - o)
        n = end - o;
      if (npieces == cap &&
          (pieces = realloc (pieces, (cap *= 2) * sizeof *pieces)) == NULL)
        die ("out of memory", 0, 0);
      pieces[npieces++] = (struct piece) { o, n };
      o += n;
    }
  }
  if (npieces < NCONN * INFLIGHT)
    die ("too few pieces for the requests in flight", npieces, 0);
  for (size_t i = npieces - 1; i > 0; i--) {
    size_t j = rnd (seed) % (i + 1);
    struct piece t = pieces[i];
    pieces[i] = pieces[j];
    pieces[j] = t;
  }
}

int
main (int argc, char **argv)
{
  struct nbd_handle *h;
  pthread_t threads[NCONN];
  uint64_t seed, table_size;

  if (argc != 6) {
    fprintf (stderr, "usage: edge-io URI REFERENCE CLUSTER TABLE_SIZE"
             " SEED\n");
    exit (EXIT_FAILURE);
  }
  uri = argv[1];
  cluster = strtoull (argv[3], NULL, 0);
  table_size = strtoull (argv[4], NULL, 0);
  seed = base_seed = strtoull (argv[5], NULL, 0) + 1;
  ref_fd = open (argv[2], O_RDWR | O_CLOEXEC);
  if (ref_fd == -1) {
    perror (argv[2]);
    exit (EXIT_FAILURE);
  }
  size = lseek (ref_fd, 0, SEEK_END);
  slice_span = 512 * cluster;
  table_span = table_size * cluster / 8 * cluster;

  h = connect_export ();
  phase_limits (h);
  phase_boundaries (h, &seed);
  if (nbd_flush (h, 0) == -1)
    nbd_die ("flush", 0, 0);
  nbd_shutdown (h, 0);
  nbd_close (h);
  printf ("edge-io: single requests done\n");
  fflush (stdout);

  make_pieces (&seed);
  pthread_barrier_init (&barrier, NULL, NCONN);
  for (unsigned i = 0; i < NCONN; i++)
    if (pthread_create (&threads[i], NULL, conn_thread,
                        (void *) (uintptr_t) i) != 0)
      die ("pthread_create", i, 0);
  for (unsigned i = 0; i < NCONN; i++)
    pthread_join (threads[i], NULL);
  printf ("edge-io: %zu pieces, %u rounds of %u x %u requests in flight\n",
          npieces, ROUNDS, NCONN, INFLIGHT);
  close (ref_fd);
  return 0;
}
