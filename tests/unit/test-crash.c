/* nbdkit-qed tests: simulated crashes after every single write.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * A workload of writes, zeros, trims and flushes runs on an image in a
 * memfile that records every file operation.  Then, for every prefix
 * of the recorded operations, the file is rebuilt as a crash at that
 * point would have left it -- with all, none, only the last, and a
 * random half of the writes since the last flush on disk (a disk may
 * persist unflushed writes in any order) -- and opened (which repairs
 * it).  Each crashed image must:
 * - have no corruption left (check);
 * - read back every byte as it was at the last flush the workload
 *   completed before the crash, unless a later request wrote it;
 * - read bytes written after that flush as either their value at the
 *   flush or a value some later request wrote there: never garbage.
 * Data written by a request is a function of its position and the
 * request, so misplaced data cannot pass for right.
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "memfile.h"
#include "test.h"

#define SIZE (8 * 1024 * 1024)
#define CLUSTER 4096

enum op_kind { OP_WRITE, OP_ZERO, OP_TRIM, OP_FLUSH };

struct op {
  enum op_kind kind;
  uint64_t offset, count;
  size_t first_rec, end_rec;    /* the file operations it made */
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

static struct qed_image *
open_crashed (struct memfile *mf)
{
  struct qed_open_options opts = { .access = QED_READ_WRITE };
  struct qed_image *img;

  CHECK_OK (qed_image_open_file (memfile_file (mf), overlay_path, &opts,
                                 &img));
  return img;
}

/* Check one crashed image.  flushed: the model as of the last flush
 * the workload completed; later ops are those after it that had
 * started before the crash.
 */
static void
check_crash (struct memfile *crashed, const unsigned char *flushed,
             const bool *maybe_zero, const struct op *ops,
             unsigned first_later, unsigned end_later, unsigned char *buf)
{
  struct qed_image *img = open_crashed (crashed);
  struct qed_check_result res;

  CHECK_OK (qed_image_check (img, false, &res));
  CHECK (res.corruptions == 0 && res.check_errors == 0);
  CHECK_OK (qed_image_read (img, buf, SIZE, 0));
  CHECK_OK (qed_image_close (img));

  for (uint64_t p = 0; p < SIZE; p++) {
    bool ok;

    /* Fast path: a whole block as flushed. */
    if (p % 4096 == 0 && memcmp (buf + p, flushed + p, 4096) == 0) {
      p += 4095;
      continue;
    }
    ok = buf[p] == flushed[p] || (maybe_zero[p] && buf[p] == 0);

    for (unsigned i = first_later; !ok && i < end_later; i++) {
      uint64_t start, end;
      if (ops[i].kind == OP_FLUSH)
        continue;
      op_effect (&ops[i], &start, &end);
      ok = p >= start && p < end && buf[p] == op_byte (ops, i, p);
    }
    if (!ok) {
      fprintf (stderr, "byte %" PRIu64 " reads %02x, neither its flushed"
               " value %02x nor one written later (ops %u..%u)\n",
               p, buf[p], flushed[p], first_later, end_later);
      exit (EXIT_FAILURE);
    }
  }
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

/* Run the workload, then crash it everywhere.  Returns the number of
 * crashed images checked.
 */
static unsigned
run (const char *name, struct op *ops, unsigned nops)
{
  struct qed_open_options opts = { .access = QED_READ_WRITE };
  struct memfile *mf = new_image ();
  struct qed_image *img;
  unsigned char *buf = malloc (SIZE), *model = malloc (SIZE);
  bool *maybe_zero = malloc (SIZE);
  unsigned checked = 0;
  size_t nrec;

  CHECK (buf && model && maybe_zero);
  CHECK_OK (qed_image_open_file (memfile_file (mf), overlay_path, &opts,
                                 &img));
  memfile_record (mf);
  for (unsigned i = 0; i < nops; i++) {
    struct op *o = &ops[i];

    o->first_rec = memfile_recorded (mf);
    if (o->kind == OP_WRITE) {
      for (uint64_t p = 0; p < o->count; p++)
        buf[p] = data_byte (i, o->offset + p);
      CHECK_OK (qed_image_write (img, buf, o->count, o->offset, 0));
    }
    else if (o->kind == OP_ZERO)
      CHECK_OK (qed_image_zero (img, o->count, o->offset, QED_MAY_TRIM));
    else if (o->kind == OP_TRIM)
      CHECK_OK (qed_image_trim (img, o->count, o->offset, 0));
    else
      CHECK_OK (qed_image_flush (img));
    o->end_rec = memfile_recorded (mf);
  }
  nrec = memfile_recorded (mf);

  /* Crash after each recorded operation k (k = 0: before any). */
  for (size_t k = 0; k <= nrec; k++) {
    unsigned last_flush = 0, end_later = 0;
    bool have_flush = false;

    /* The model at the last completed flush, and the ops started. */
    if (with_backing)
      memcpy (model, base, SIZE);
    else
      memset (model, 0, SIZE);
    memset (maybe_zero, 0, SIZE);
    for (unsigned i = 0; i < nops; i++) {
      if (ops[i].first_rec >= k && ops[i].first_rec != ops[i].end_rec)
        break;
      end_later = i + 1;
      if (ops[i].kind == OP_FLUSH && ops[i].end_rec <= k) {
        last_flush = i;
        have_flush = true;
      }
    }
    for (unsigned i = 0; have_flush && i < last_flush; i++)
      apply_model (model, maybe_zero, ops, i);

    for (int mode = MF_CRASH_KEEP_ALL; mode <= MF_CRASH_RANDOM; mode++) {
      struct memfile *crashed = memfile_crash (mf, k, mode, k);
      check_crash (crashed, model, maybe_zero, ops,
                   have_flush ? last_flush + 1 : 0, end_later, buf);
      memfile_free (crashed);
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
  return checked;
}

/* Workloads. */
static unsigned nops;
static struct op ops[512];

static void
add (enum op_kind kind, uint64_t offset, uint64_t count)
{
  CHECK (nops < sizeof ops / sizeof ops[0]);
  if (offset > SIZE)
    offset = SIZE;
  if (count > SIZE - offset)
    count = SIZE - offset;
  ops[nops++] = (struct op) { .kind = kind, .offset = offset, .count = count };
}

static void
sequential_fill (void)
{
  nops = 0;
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

  nops = 0;
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

  nops = 0;
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

  nops = 0;
  for (uint64_t off = 0; off < SIZE; off += span) {
    add (OP_WRITE, off + 5000, 3000);
    add (OP_WRITE, off + span / 2, 2 * CLUSTER + 7);
    add (OP_FLUSH, 0, 0);
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
  backing_path = test_path ("base.raw");
  overlay_path = test_path ("overlay.qed");
  for (size_t i = 0; i < SIZE; i++)
    base[i] = test_rand (&s);
  fd = open (backing_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  CHECK (fd >= 0 && write (fd, base, SIZE) == SIZE && close (fd) == 0);

  for (int b = 0; b <= 1; b++) {
    with_backing = b;
    sequential_fill ();
    total += run (b ? "sequential fill, backing" : "sequential fill", ops,
                  nops);
    random_small_writes (7 + b);
    total += run (b ? "random writes, backing" : "random writes", ops, nops);
    zeros_and_trims (11 + b);
    total += run (b ? "zeros and trims, backing" : "zeros and trims", ops,
                  nops);
    new_l2_tables ();
    total += run (b ? "new L2 tables, backing" : "new L2 tables", ops, nops);
  }
  printf ("%u crashed images checked\n", total);
  CHECK (total >= 1000);
  return 0;
}
