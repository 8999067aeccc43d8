/* nbdkit-qed tests: simulated crashes after every single write.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * A workload of writes, zeros, trims and flushes runs on an image in a
 * memfile that records every file operation, from one thread or from
 * several at once (so that the committer links batches of allocations
 * from several requests).  Then, for every prefix of the recorded
 * operations, the file is rebuilt as a crash at that point would have
 * left it -- with all, none, only the last, a random half of the
 * operations since the last flush on disk, or a random half of the
 * 512-byte sectors of their writes (a disk may persist unflushed
 * writes in any order, and a request only sector by sector) -- and
 * opened (which repairs it).  Each crashed image must:
 * - have no corruption left (check);
 * - read back every byte as the requests that are durable left it: a
 *   request is durable when a flush of the file (the workload's, or
 *   one of the engine's own) follows all of its file operations, as
 *   then nothing of it can be lost;
 * - read bytes that a request which is not durable but had started
 *   wrote as either that value or a value some other such request
 *   wrote there: never garbage.  The rule is per byte, so any mix of
 *   old and new sectors passes, as a request is not atomic.
 * Data written by a request is a function of its position and the
 * request, so misplaced data cannot pass for right.
 */

#include <config.h>

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "memfile.h"
#include "qed-format.h"
#include "test.h"

#define SIZE (8 * 1024 * 1024)
#define CLUSTER 4096
#define MAX_THREADS 4

enum op_kind { OP_WRITE, OP_ZERO, OP_TRIM, OP_FLUSH };

struct op {
  enum op_kind kind;
  uint64_t offset, count;
  unsigned thread;              /* which thread of the workload does it */
  /* Recorded operations before it started, and once it returned: its
   * own lie in between (with other threads' ones).
   */
  size_t first_rec, end_rec;
};

static unsigned char base[SIZE];        /* backing file contents */
static bool with_backing;
static char *backing_path, *overlay_path;

static unsigned char
data_byte (unsigned op, uint64_t pos)
{
  uint64_t h = (pos + 1) * 0x9e3779b97f4a7c15ull ^ (op + 1) * 0xc2b2ae3d27d4eb4full;
  return (h >> 29) | 1;         /* never 0, which zeros and trims leave */
}

/* The range a request changes, and what it leaves there. */
static void
op_effect (const struct op *o, uint64_t *start, uint64_t *end)
{
  *start = o->offset;
  *end = o->offset + o->count;
  if (o->kind == OP_TRIM) {     /* only wholly covered clusters */
    *start = (o->offset + CLUSTER - 1) / CLUSTER * CLUSTER;
    *end = (o->offset + o->count) / CLUSTER * CLUSTER;
  }
}

static unsigned char
op_byte (const struct op *ops, unsigned i, uint64_t pos)
{
  return ops[i].kind == OP_WRITE ? data_byte (i, pos) : 0;
}

/* The model of the disk: each byte's value, and whether it may also
 * read as zero (a trim leaves clusters it gave back reading as zeros,
 * and the others unchanged: which ones depends on what was allocated).
 */
static void
apply_model (unsigned char *model, bool *maybe_zero, const struct op *ops,
             unsigned i)
{
  uint64_t start, end;

  if (ops[i].kind == OP_FLUSH)
    return;
  op_effect (&ops[i], &start, &end);
  for (uint64_t p = start; p < end; p++) {
    if (ops[i].kind == OP_TRIM)
      maybe_zero[p] = true;
    else {
      model[p] = op_byte (ops, i, p);
      maybe_zero[p] = false;
    }
  }
}

/* Check one crashed image against the model of the durable requests
 * (flushed, maybe_zero) and the requests later[0..nlater) that may
 * have left their data too.  Returns false after saying what is wrong.
 */
static bool
check_crash (struct memfile *crashed, const unsigned char *flushed,
             const bool *maybe_zero, const struct op *ops,
             const unsigned *later, unsigned nlater, unsigned char *buf)
{
  struct qed_open_options opts = { .access = QED_READ_WRITE };
  struct qed_image *img;
  struct qed_check_result res;
  int r;

  r = qed_image_open_file (memfile_file (crashed), overlay_path, &opts, &img);
  if (r < 0) {
    fprintf (stderr, "open: %s\n", strerror (-r));
    return false;
  }
  r = qed_image_check (img, false, &res);
  if (r == 0 && (res.corruptions || res.check_errors)) {
    fprintf (stderr, "check after repair: %" PRIu64 " corruptions, %" PRIu64
             " check errors\n", res.corruptions, res.check_errors);
    r = -EIO;
  }
  if (r == 0)
    r = qed_image_read (img, buf, SIZE, 0);
  if (qed_image_close (img) < 0 && r == 0)
    r = -EIO;
  if (r < 0) {
    fprintf (stderr, "checking or reading: %s\n", strerror (-r));
    return false;
  }

  for (uint64_t p = 0; p < SIZE; p++) {
    bool ok;

    /* Fast path: a whole block as flushed. */
    if (p % 4096 == 0 && memcmp (buf + p, flushed + p, 4096) == 0) {
      p += 4095;
      continue;
    }
    ok = buf[p] == flushed[p] || (maybe_zero[p] && buf[p] == 0);

    for (unsigned l = 0; !ok && l < nlater; l++) {
      unsigned i = later[l];
      uint64_t start, end;

      op_effect (&ops[i], &start, &end);
      ok = p >= start && p < end && buf[p] == op_byte (ops, i, p);
    }
    if (!ok) {
      fprintf (stderr, "byte %" PRIu64 " reads %02x, neither its durable"
               " value %02x nor one written by the %u requests that"
               " were not durable\n", p, buf[p], flushed[p], nlater);
      return false;
    }
  }
  return true;
}

static struct memfile *
new_image (void)
{
  struct qed_create_options copts = {
    .size = SIZE, .cluster_size = CLUSTER, .table_size = 1,
    .backing_file = with_backing ? backing_path : NULL,
    .backing_format = "raw",
  };
  struct memfile *mf = memfile_new (NULL, 0);

  CHECK_OK (qed_create_file (memfile_file (mf), &copts));
  return mf;
}

/* Workloads: ops[0..nops), each done by its thread in order;
 * concurrent_writes counts the writes that allocate.
 */
static unsigned nops, nthreads, nallocating;
static struct op ops[512];

struct worker {
  pthread_t thread;
  unsigned t;
  struct qed_image *img;
  struct memfile *mf;
  pthread_barrier_t *start;
};

static void *
work (void *arg)
{
  struct worker *w = arg;

  pthread_barrier_wait (w->start);
  for (unsigned i = 0; i < nops; i++) {
    struct op *o = &ops[i];
    unsigned char *buf = NULL;

    if (o->thread != w->t)
      continue;
    if (o->kind == OP_WRITE) {
      buf = malloc (o->count);
      CHECK (buf);
      for (uint64_t p = 0; p < o->count; p++)
        buf[p] = data_byte (i, o->offset + p);
    }
    o->first_rec = memfile_recorded (w->mf);
    if (o->kind == OP_WRITE)
      CHECK_OK (qed_image_write (w->img, buf, o->count, o->offset, 0));
    else if (o->kind == OP_ZERO)
      CHECK_OK (qed_image_zero (w->img, o->count, o->offset, QED_MAY_TRIM));
    else if (o->kind == OP_TRIM)
      CHECK_OK (qed_image_trim (w->img, o->count, o->offset, 0));
    else
      CHECK_OK (qed_image_flush (w->img));
    o->end_rec = memfile_recorded (w->mf);
    free (buf);
  }
  return NULL;
}

/* How many of the first nrec recorded operations write L2 entries
 * (each table is one cluster): fewer than the requests that allocated
 * means that batches linked several of them at once.
 */
static unsigned
l2_writes (struct memfile *mf, size_t nrec)
{
  size_t size;
  const unsigned char *d = memfile_data (mf, &size);
  struct qed_header h;
  unsigned n = 0;

  qed_header_decode (d, &h);
  for (size_t i = 0; i < nrec; i++) {
    uint64_t off, count, table;

    if (memfile_recorded_op (mf, i, &off, &count) != MF_PWRITE)
      continue;
    for (uint64_t e = 0; e < CLUSTER / 8; e++) {
      memcpy (&table, d + h.l1_table_offset + e * 8, 8);
      table = le64toh (table);
      if (table && off >= table && off + count <= table + CLUSTER) {
        n++;
        break;
      }
    }
  }
  return n;
}

/* Which of the crash modes to check after the first k recorded
 * operations, of which the first flushed are durable.  An image the
 * same as one checked since that flush is left out: as k grows, the
 * model can only allow more until the next flush.
 */
static bool
mode_differs (enum memfile_crash_mode mode, size_t k, size_t flushed)
{
  if (k == flushed)             /* nothing to drop: all modes agree */
    return mode == MF_CRASH_KEEP_ALL;
  switch (mode) {
  case MF_CRASH_DROP_ALL: return false;         /* as at k == flushed */
  case MF_CRASH_KEEP_LAST: return k > flushed + 1;  /* else KEEP_ALL */
  default: return true;
  }
}

/* Check the crash points that are multiples of this, and those just
 * after a flush.
 */
static unsigned crash_stride = 1;

static const char *const mode_names[] = {
  "keep all", "drop all", "keep last", "random", "torn",
};

/* Run the workload, then crash it everywhere.  Returns the number of
 * crashed images checked.
 */
static unsigned
run (const char *name)
{
  struct qed_open_options opts = { .access = QED_READ_WRITE };
  struct memfile *mf = new_image ();
  struct qed_image *img;
  struct worker workers[MAX_THREADS];
  pthread_barrier_t start;
  unsigned char *buf = malloc (SIZE), *model = malloc (SIZE);
  bool *maybe_zero = malloc (SIZE);
  unsigned checked = 0, links, later[sizeof ops / sizeof ops[0]];
  bool durable[sizeof ops / sizeof ops[0]];
  size_t nrec;

  CHECK (buf && model && maybe_zero);
  CHECK_OK (qed_image_open_file (memfile_file (mf), overlay_path, &opts,
                                 &img));
  memfile_record (mf);
  /* Writes that take time let the threads' allocations queue up
   * behind the committer's, so that batches link several.
   */
  if (nthreads > 1)
    memfile_delay (mf, MF_PWRITE | MF_FLUSH, 100);
  CHECK (pthread_barrier_init (&start, NULL, nthreads) == 0);
  for (unsigned t = 0; t < nthreads; t++) {
    workers[t] = (struct worker) { .t = t, .img = img, .mf = mf,
                                   .start = &start };
    CHECK (pthread_create (&workers[t].thread, NULL, work,
                           &workers[t]) == 0);
  }
  for (unsigned t = 0; t < nthreads; t++)
    CHECK (pthread_join (workers[t].thread, NULL) == 0);
  pthread_barrier_destroy (&start);
  nrec = memfile_recorded (mf);
  links = l2_writes (mf, nrec);

  /* Crash after each recorded operation k (k = 0: before any).  The
   * model holds the durable requests' effects, applied as they become
   * durable: in each thread's order, which is the order that matters,
   * as threads write bytes of their own.
   */
  if (with_backing)
    memcpy (model, base, SIZE);
  else
    memset (model, 0, SIZE);
  memset (maybe_zero, 0, SIZE);
  memset (durable, 0, sizeof durable);
  for (size_t k = 0; k <= nrec; k++) {
    size_t flushed = memfile_flushed (mf, k);
    unsigned nlater = 0;

    for (unsigned i = 0; i < nops; i++) {
      if (ops[i].kind == OP_FLUSH || durable[i])
        continue;
      if (ops[i].end_rec <= flushed) {
        apply_model (model, maybe_zero, ops, i);
        durable[i] = true;
      }
      else if (ops[i].first_rec < k || ops[i].end_rec <= k)
        later[nlater++] = i;
    }

    if (k != flushed && k % crash_stride)
      continue;
    for (int mode = MF_CRASH_KEEP_ALL; mode <= MF_CRASH_TORN; mode++) {
      struct memfile *crashed;
      bool ok;

      if (!mode_differs (mode, k, flushed))
        continue;
      crashed = memfile_crash (mf, k, mode, k);
      ok = check_crash (crashed, model, maybe_zero, ops, later, nlater, buf);
      memfile_free (crashed);
      if (!ok) {
        fprintf (stderr, "%s: crash after %zu of %zu file operations"
                 " (%zu flushed), mode %s, seed %zu\n",
                 name, k, nrec, flushed, mode_names[mode], k);
        exit (EXIT_FAILURE);
      }
      checked++;
    }
  }

  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
  free (buf);
  free (model);
  free (maybe_zero);
  printf ("%-28s %4u requests, %5zu file operations, %5u crashes checked\n",
          name, nops, nrec, checked);
  if (nthreads > 1)
    printf ("%-28s %4u allocating writes linked by %u writes of L2 entries\n",
            "", nallocating, links);
  return checked;
}

static void
add_for (unsigned thread, enum op_kind kind, uint64_t offset, uint64_t count)
{
  CHECK (nops < sizeof ops / sizeof ops[0]);
  if (offset > SIZE)
    offset = SIZE;
  if (count > SIZE - offset)
    count = SIZE - offset;
  ops[nops++] = (struct op) { .kind = kind, .offset = offset, .count = count,
                              .thread = thread };
}

static void
add (enum op_kind kind, uint64_t offset, uint64_t count)
{
  add_for (0, kind, offset, count);
}

static void
begin (unsigned threads)
{
  nops = 0;
  nthreads = threads;
}

static void
sequential_fill (void)
{
  begin (1);
  for (uint64_t off = 0; off < SIZE; off += 96 * 1024) {
    add (OP_WRITE, off, 96 * 1024);
    if (off % (512 * 1024) == 0)
      add (OP_FLUSH, 0, 0);
  }
}

static void
random_small_writes (uint64_t seed)
{
  uint64_t s = seed;

  begin (1);
  for (int i = 0; i < 150; i++) {
    uint64_t off = test_rand (&s) % SIZE;
    add (OP_WRITE, off, 1 + test_rand (&s) % (3 * CLUSTER));
    if (test_rand (&s) % 6 == 0)
      add (OP_FLUSH, 0, 0);
  }
}

static void
zeros_and_trims (uint64_t seed)
{
  uint64_t s = seed;

  begin (1);
  for (int i = 0; i < 120; i++) {
    uint64_t off = test_rand (&s) % SIZE, r = test_rand (&s) % 10;
    uint64_t len = 1 + test_rand (&s) % (8 * CLUSTER);
    add (r < 5 ? OP_WRITE : r < 8 ? OP_ZERO : OP_TRIM, off, len);
    if (test_rand (&s) % 5 == 0)
      add (OP_FLUSH, 0, 0);
  }
}

/* The first write into each L1 range creates an L2 table. */
static void
new_l2_tables (void)
{
  const uint64_t span = (uint64_t) CLUSTER / 8 * CLUSTER;

  begin (1);
  for (uint64_t off = 0; off < SIZE; off += span) {
    add (OP_WRITE, off + 5000, 3000);
    add (OP_WRITE, off + span / 2, 2 * CLUSTER + 7);
    add (OP_FLUSH, 0, 0);
  }
}

/* Threads allocating at once, each in clusters of its own among the
 * others' (so that a batch links entries of several requests into one
 * L2 slice, and two new L2 tables come in the middle of it), now and
 * then rewriting one of its clusters or flushing.
 */
static void
concurrent_writes (unsigned threads, uint64_t seed)
{
  const uint64_t first = CLUSTER / 8 - 32;      /* 32 clusters before
                                                 * the second table */
  uint64_t s = seed, fresh[MAX_THREADS] = { 0 };

  CHECK (threads <= MAX_THREADS);
  begin (threads);
  nallocating = 0;
  for (unsigned i = 0; i < 40 * threads; i++) {
    unsigned t = i % threads;
    uint64_t r = test_rand (&s) % 12, j, off, len;

    if (r < 2 && fresh[t])
      j = test_rand (&s) % fresh[t];
    else {
      j = fresh[t]++;
      nallocating++;
    }
    off = r % 3 ? test_rand (&s) % CLUSTER : 0;
    len = r % 3 ? 1 + test_rand (&s) % (CLUSTER - off) : CLUSTER;
    add_for (t, OP_WRITE, (first + j * threads + t) * CLUSTER + off, len);
    if (test_rand (&s) % 6 == 0)
      add_for (t, OP_FLUSH, 0, 0);
  }
}

static void
quiet (enum qed_log_level level, const char *msg)
{
}

int
main (void)
{
  unsigned total = 0;
  uint64_t s = 42;
  int fd;

  qed_set_log_function (quiet);        /* repairs are expected */
  /* Under valgrind (make check-valgrind says so), where a crash point
   * costs some 40 times more, a quarter of them are enough to find
   * the engine's memory errors.
   */
  if (getenv ("NBDKIT_VALGRIND"))
    crash_stride = 4;
  backing_path = test_path ("base.raw");
  overlay_path = test_path ("overlay.qed");
  for (size_t i = 0; i < SIZE; i++)
    base[i] = test_rand (&s);
  fd = open (backing_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  CHECK (fd >= 0 && write (fd, base, SIZE) == SIZE && close (fd) == 0);

  for (int b = 0; b <= 1; b++) {
    with_backing = b;
    sequential_fill ();
    total += run (b ? "sequential fill, backing" : "sequential fill");
    random_small_writes (7 + b);
    total += run (b ? "random writes, backing" : "random writes");
    zeros_and_trims (11 + b);
    total += run (b ? "zeros and trims, backing" : "zeros and trims");
    new_l2_tables ();
    total += run (b ? "new L2 tables, backing" : "new L2 tables");
    concurrent_writes (4, 13 + b);
    total += run (b ? "4 threads, backing" : "4 threads");
  }
  printf ("%u crashed images checked\n", total);
  CHECK (total >= 1000);
  return 0;
}
