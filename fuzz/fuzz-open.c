/* nbdkit-qed fuzzers: open any bytes as a QED image.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The input is an image file.  It is opened three times, from memory
 * (so no host file is ever touched: backing files are refused):
 * 1. read-only: check, then reads and block status over a few ranges;
 *    nothing may be written (the guard file aborts if it is);
 * 2. read-write with check=always, on a copy: check with repair, then
 *    writes, zeros and trims, and checks again;
 * 3. read-write without a check, on another copy: writes all over.
 * Any error code is fine.  Crashes, sanitizer reports, leaks, hangs,
 * reads past the end of the file and unbounded memory are not, and
 * neither are these, which hold for every image:
 * - block status extents are contiguous, non-empty, inside the
 *   request, and ranges reported as zero read as zeros;
 * - repair keeps what the image read: every cluster that read
 *   without error before (read-only) reads the same after it (only
 *   invalid entries, which failed with EIO, may change, and entries
 *   sharing clusters when repair says it cleared them);
 * - after a successful repair a new check finds nothing left to
 *   repair, and requests on the repaired image keep it consistent;
 * - without a repair, ranges whose entries are invalid (reads fail
 *   with EIO) still fail after writes elsewhere grew the file and the
 *   L2 cache was turned over.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guardfile.h"
#include "memfile.h"
#include "qed.h"

#define MAX_READ (256 * 1024)
/* A hostile image may ask repair to copy many clusters: it gets a
 * full disk beyond this file size.
 */
#define FILE_BUDGET (64 * 1024 * 1024)

/* Repair may give up copying shared clusters (past a budget) and clear
 * the entries instead, which changes what they read: it says so.
 */
static bool repair_cleared;

static void
quiet (enum qed_log_level level, const char *msg)
{
  if (getenv ("FUZZ_VERBOSE"))
    fprintf (stderr, "[%d] %s\n", (int) level, msg);
  if (strstr (msg, "too many shared clusters"))
    repair_cleared = true;
}

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  qed_set_log_function (quiet);
  return 0;
}

#define FAIL(...)                                                       \
  do {                                                                  \
    fprintf (stderr, "fuzz-open: " __VA_ARGS__);                        \
    fprintf (stderr, "\n");                                             \
    abort ();                                                           \
  } while (0)

static unsigned char read_buf[MAX_READ];

/* Clusters of data extents as a read-only open reads them, to compare
 * with what they read after repair.
 */
#define SNAP_CLUSTERS 64
struct snapshot {
  unsigned n;
  uint32_t cluster_size;
  uint64_t offset[SNAP_CLUSTERS];
  uint64_t len[SNAP_CLUSTERS];
  unsigned char *data[SNAP_CLUSTERS];
};
static struct snapshot snap;

static void
snapshot_free (void)
{
  for (unsigned i = 0; i < snap.n; i++)
    free (snap.data[i]);
  snap.n = 0;
}

struct extents {
  struct qed_image *img;
  uint64_t start, next, end;
  unsigned calls;
  uint64_t zero_read;           /* bytes of zero extents read back */
  bool snapshot;                /* record data in snap */
};

static int
extent (void *opaque, uint64_t offset, uint64_t length, unsigned type)
{
  struct extents *e = opaque;

  if (offset != e->next || length == 0 || length > e->end - offset)
    FAIL ("bad extent %" PRIu64 "+%" PRIu64 " (expected from %" PRIu64
          ", request ends at %" PRIu64 ")", offset, length, e->next, e->end);
  if (type & ~(unsigned) (QED_EXTENT_HOLE | QED_EXTENT_ZERO))
    FAIL ("bad extent type %u", type);
  e->next = offset + length;
  e->calls++;
  /* Data: remember the first clusters of it that read without error. */
  if (e->snapshot && !(type & QED_EXTENT_ZERO)) {
    uint64_t cs = snap.cluster_size, end = offset + length;
    for (uint64_t o = offset / cs * cs; o < end && snap.n < SNAP_CLUSTERS;
         o += cs) {
      uint64_t from = o > offset ? o : offset;
      uint64_t n = (o + cs < end ? o + cs : end) - from;
      if (n > MAX_READ)
        n = MAX_READ;
      if (qed_image_read (e->img, read_buf, n, from) == 0) {
        snap.offset[snap.n] = from;
        snap.len[snap.n] = n;
        snap.data[snap.n] = malloc (n);
        if (snap.data[snap.n] == NULL)
          abort ();
        memcpy (snap.data[snap.n], read_buf, n);
        snap.n++;
      }
    }
  }
  /* Zero extents read as zeros (a bounded sample of them). */
  if ((type & QED_EXTENT_ZERO) && e->zero_read < 4 * MAX_READ) {
    uint64_t n = length < MAX_READ ? length : MAX_READ;
    int r = qed_image_read (e->img, read_buf, n, offset);
    if (r < 0)
      FAIL ("reading a zero extent at %" PRIu64 ": %d", offset, r);
    for (uint64_t i = 0; i < n; i++)
      if (read_buf[i] != 0)
        FAIL ("zero extent at %" PRIu64 " reads %02x at +%" PRIu64,
              offset, read_buf[i], i);
    e->zero_read += n;
  }
  return e->calls >= 100000;    /* plenty; stop a runaway */
}

static void
block_status (struct qed_image *img, uint64_t count, uint64_t offset,
              bool snapshot)
{
  struct extents e = { .img = img, .start = offset, .next = offset,
                       .end = offset + count, .snapshot = snapshot };
  int r = qed_image_block_status (img, count, offset, extent, &e);

  if (r == 0 && count > 0 && e.calls == 0)
    FAIL ("block status of %" PRIu64 "+%" PRIu64 " reported nothing",
          offset, count);
}

static void
read_range (struct qed_image *img, uint64_t count, uint64_t offset)
{
  qed_image_read (img, read_buf, count < MAX_READ ? count : MAX_READ,
                  offset);
}

/* FNV-1a, to pick offsets that depend on the input. */
static uint64_t
hash (const uint8_t *data, size_t size, uint64_t h)
{
  for (size_t i = 0; i < size; i++)
    h = (h ^ data[i]) * 0x100000001b3ull;
  return h;
}

/* Reads and block status over the start, the end and two places that
 * depend on the input.  Block status is asked for at most 4 GiB at a
 * time, as an NBD request can.
 */
static void
exercise_reads (struct qed_image *img, uint64_t h, bool snapshot)
{
  uint64_t size = qed_image_size (img);
  uint64_t bs = size < UINT32_MAX ? size : UINT32_MAX;
  uint64_t offsets[4];

  offsets[0] = 0;
  offsets[1] = size > MAX_READ ? size - MAX_READ : 0;
  offsets[2] = size ? (h % size) & ~UINT64_C (511) : 0;
  offsets[3] = size ? ((h >> 20) * 0x9e3779b97f4a7c15ull) % size : 0;
  for (int i = 0; i < 4; i++) {
    read_range (img, size - offsets[i], offsets[i]);
    block_status (img, size - offsets[i] < bs ? size - offsets[i] : bs,
                  offsets[i], false);
  }
  block_status (img, bs, 0, snapshot);
  /* Past the end: must fail. */
  if (qed_image_read (img, read_buf, 1, size) != -EINVAL)
    FAIL ("a read past the end did not fail with EINVAL");
}

static void
check_clean (struct qed_image *img, const char *when)
{
  struct qed_check_result res;
  int r = qed_image_check (img, false, &res);

  if (r < 0)
    FAIL ("check %s failed: %s", when, strerror (-r));
  if (res.corruptions || res.check_errors)
    FAIL ("check %s: %" PRIu64 " corruptions, %" PRIu64 " check errors",
          when, res.corruptions, res.check_errors);
}

/* Collect clusters of data extents whose reads fail (invalid entries). */
struct bad_clusters {
  struct qed_image *img;
  uint32_t cluster_size;
  unsigned n, looked;
  uint64_t offset[16];
};
static struct bad_clusters bad;   /* found by the read-only pass */

static int
find_bad (void *opaque, uint64_t offset, uint64_t length, unsigned type)
{
  struct bad_clusters *b = opaque;
  uint64_t cs = b->cluster_size, end = offset + length;

  if (type & QED_EXTENT_ZERO)
    return 0;
  for (uint64_t o = offset / cs * cs; o < end; o += cs) {
    if (b->n == 16 || ++b->looked > 256)
      return 1;
    if (qed_image_read (b->img, read_buf, 1, o > offset ? o : offset) == -EIO)
      b->offset[b->n++] = o > offset ? o : offset;
  }
  return 0;
}

static void
pass_read_only (const uint8_t *data, size_t size)
{
  struct guard_options gopts = { .read_only = true };
  struct qed_open_options opts = {
    .access = QED_READ_ONLY,
    .no_backing = true,
    .no_locking = true,
    .l2_cache_size = 1,         /* the minimum: a few slices */
  };
  struct memfile *mf = memfile_new (data, size);
  struct qed_file *f = guard_new (memfile_file (mf), &gopts);
  struct qed_check_result res;
  struct qed_image *img;

  if (qed_image_open_file (f, "fuzz.qed", &opts, &img) == 0) {
    qed_image_check (img, false, &res);
    bad = (struct bad_clusters) {
      .img = img, .cluster_size = qed_image_cluster_size (img),
    };
    qed_image_block_status (img, qed_image_size (img) < UINT32_MAX
                            ? qed_image_size (img) : UINT32_MAX, 0,
                            find_bad, &bad);
    snap.cluster_size = qed_image_cluster_size (img);
    exercise_reads (img, hash (data, size, 0xcbf29ce484222325ull), true);
    if (qed_image_check (img, true, &res) != -EROFS)
      FAIL ("repair of a read-only image did not fail with EROFS");
    qed_image_close (img);
  }
  memfile_free (mf);
}

static void
pass_read_write (const uint8_t *data, size_t size)
{
  struct guard_options gopts = { .max_size = FILE_BUDGET };
  struct qed_open_options opts = {
    .access = QED_READ_WRITE,
    .no_backing = true,
    .no_locking = true,
    .always_check = true,
    .l2_cache_size = 1,
  };
  struct memfile *mf = memfile_new (data, size);
  struct qed_file *f = guard_new (memfile_file (mf), &gopts);
  uint64_t h = hash (data, size, 0x84222325cbf29ce4ull);
  struct qed_check_result res;
  struct qed_image *img;
  static unsigned char pattern[8192];

  repair_cleared = false;
  if (qed_image_open_file (f, "fuzz.qed", &opts, &img) < 0) {
    memfile_free (mf);
    return;
  }
  if (qed_image_check (img, true, &res) == 0 && res.check_errors == 0 &&
      guard_enospc_count (f) == 0) {
    uint64_t vsize = qed_image_size (img), off;

    /* Repaired: every cluster reads as before, nothing is left to
     * repair, and requests keep it so.
     */
    for (unsigned i = 0; i < snap.n && !repair_cleared; i++) {
      int r = qed_image_read (img, read_buf, snap.len[i], snap.offset[i]);
      if (r < 0)
        FAIL ("after repair, reading %" PRIu64 "+%" PRIu64 " fails: %s",
              snap.offset[i], snap.len[i], strerror (-r));
      if (memcmp (read_buf, snap.data[i], snap.len[i]) != 0)
        FAIL ("after repair, %" PRIu64 "+%" PRIu64 " reads differently",
              snap.offset[i], snap.len[i]);
    }
    check_clean (img, "after repair");
    memset (pattern, 0x5a, sizeof pattern);
    off = vsize ? (h % vsize) : 0;
    qed_image_write (img, pattern, vsize - off < sizeof pattern
                     ? vsize - off : sizeof pattern, off, 0);
    off = vsize ? ((h >> 17) % vsize) : 0;
    qed_image_zero (img, vsize - off < 3 * 4096 ? vsize - off : 3 * 4096,
                    off, QED_MAY_TRIM);
    off = vsize ? ((h >> 29) % vsize) : 0;
    qed_image_trim (img, vsize - off, off, 0);
    qed_image_write (img, pattern, vsize < 100 ? vsize : 100, 0, QED_FUA);
    exercise_reads (img, h, false);
    if (guard_enospc_count (f) == 0)
      check_clean (img, "after requests on the repaired image");
  }
  else
    exercise_reads (img, h, false);
  qed_image_close (img);
  memfile_free (mf);
}

/* Little-endian integers of the input, 0 past its end. */
static uint64_t
input_le (const uint8_t *data, size_t size, uint64_t offset, unsigned n)
{
  uint64_t v = 0;

  for (unsigned i = 0; i < n; i++)
    if (offset + i < size)
      v |= (uint64_t) data[offset + i] << (8 * i);
  return v;
}

/* Does the L2 table mapping virtual offset overlap the table of
 * another L1 entry?  Then the slot of a cleared entry is written
 * through the other range like any unallocated slot of that table
 * (the image is corrupt that way whatever the engine does).
 */
static bool
l2_table_shared (const uint8_t *data, size_t size, uint64_t offset)
{
  uint64_t cluster = input_le (data, size, 4, 4);
  uint64_t table = cluster * input_le (data, size, 8, 4);
  uint64_t l1 = input_le (data, size, 40, 8);
  uint64_t vsize = input_le (data, size, 48, 8), span, n, mine, t;

  if (cluster == 0 || table == 0 || table / 8 > UINT64_MAX / cluster)
    return false;
  span = table / 8 * cluster;
  n = vsize / span + (vsize % span != 0);
  mine = input_le (data, size, l1 + offset / span * 8, 8);
  for (uint64_t i = 0; i < n && l1 + i * 8 < size; i++) {
    if (i == offset / span)
      continue;
    t = input_le (data, size, l1 + i * 8, 8);
    if (t != 0 && mine != 0 && (t > mine ? t - mine : mine - t) < table)
      return true;
  }
  return false;
}

/* Served writable without NEED_CHECK: invalid entries (the read-only
 * pass found some) fail with EIO.  What they read must not change
 * after writes elsewhere have grown the file, perhaps past where they
 * point, before their L2 slices were first read: except that entries
 * pointing past the end of the file are cleared when the file first
 * grows, so an EIO may become zeros (there is no backing file), never
 * data, unless the entry's table is shared with another range, whose
 * writes then land in it (the old repair at open unshared tables).
 */
static void
pass_write_unchecked (const uint8_t *data, size_t size)
{
  struct guard_options gopts = { .max_size = FILE_BUDGET };
  struct qed_open_options opts = {
    .access = QED_READ_WRITE,
    .no_backing = true,
    .no_locking = true,
    .l2_cache_size = 1,
  };
  struct memfile *mf;
  struct qed_file *f;
  uint64_t h = hash (data, size, 0x1234567887654321ull), vsize;
  struct qed_image *img;
  static unsigned char pattern[4096];
  int before_r[sizeof bad.offset / sizeof bad.offset[0]];
  unsigned char before[sizeof bad.offset / sizeof bad.offset[0]];

  /* NEED_CHECK: a writable open repairs, and nothing is invalid. */
  if (bad.n == 0 || size < 64 || (data[16] & 2))
    return;
  mf = memfile_new (data, size);
  f = guard_new (memfile_file (mf), &gopts);
  if (qed_image_open_file (f, "fuzz.qed", &opts, &img) < 0) {
    memfile_free (mf);
    return;
  }
  vsize = qed_image_size (img);
  for (unsigned i = 0; i < bad.n; i++) {
    before_r[i] = qed_image_read (img, read_buf, 1, bad.offset[i]);
    before[i] = read_buf[0];
  }
  if (vsize >= sizeof pattern) {
    /* Writes all over: each may allocate an L2 table and a cluster. */
    memset (pattern, 0xa5, sizeof pattern);
    uint64_t span = (uint64_t) 512 * bad.cluster_size;  /* an L2 slice */
    for (unsigned i = 0; i < 24; i++) {
      uint64_t off = (h % (vsize - sizeof pattern + 1)) & ~UINT64_C (511);
      bool near_bad = false;
      h = (h ^ i) * 0x9e3779b97f4a7c15ull + 1;
      /* Not in the slices of the invalid entries: those are read
       * for the first time below.
       */
      for (unsigned j = 0; j < bad.n; j++)
        near_bad |= off / span == bad.offset[j] / span ||
          (off + sizeof pattern - 1) / span == bad.offset[j] / span;
      if (!near_bad)
        qed_image_write (img, pattern, sizeof pattern, off, 0);
    }
  }
  for (unsigned i = 0; i < bad.n; i++) {
    int r = qed_image_read (img, read_buf, 1, bad.offset[i]);
    bool cleared = before_r[i] == -EIO && r == 0 &&
      (read_buf[0] == 0 || l2_table_shared (data, size, bad.offset[i]));
    if (!cleared &&
        (r != before_r[i] || (r == 0 && read_buf[0] != before[i])))
      FAIL ("the invalid entry at %" PRIu64 " reads %s after writes"
            " elsewhere, %s before", bad.offset[i],
            r == 0 ? "data" : strerror (-r),
            before_r[i] == 0 ? "other data" : strerror (-before_r[i]));
  }
  qed_image_close (img);
  memfile_free (mf);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  pass_read_only (data, size);
  pass_read_write (data, size);
  pass_write_unchecked (data, size);
  snapshot_free ();
  bad.n = 0;
  return 0;
}
