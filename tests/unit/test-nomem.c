/* nbdkit-qed tests: running out of memory at every allocation.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The program is linked with -Wl,--wrap for malloc, calloc, realloc,
 * strdup, asprintf and vasprintf (see Makefile.am), so every call of
 * them from the engine's objects (and the test's) comes here.  While
 * a step of the workload is armed, the allocations are counted, and
 * the n-th one fails with ENOMEM (or, in a second sweep, it and every
 * one after it until the step returns, so that the error paths run
 * out of memory too).  The file layer under the engine and the opener
 * are the test's, not the engine's: they run shielded, uncounted.
 *
 * The workload (open with NEED_CHECK set, so that it repairs, then
 * writes across tables, reads, zero, trim, flush, block status, a
 * check, a repair of damage made under the open image, writes after
 * it, a shrink and a grow back, close) runs once to count its K
 * allocations, then once for each n in 1..K.  Each time:
 * - the step that met the failure returns -ENOMEM, or succeeds if
 *   only allocations the engine does without failed (a log message's
 *   text: it logs the format instead); every other step succeeds;
 * - after a failed request the image reads, in its range, either what
 *   it read before or what the request wrote, and goes on reading so;
 *   after a failed repair, the memory follows what it changed on disk;
 *   after a failed resize, the image has the old size or the new one
 *   and reads as before below the smaller;
 * - the image left in the memfile is consistent: if NEED_CHECK is
 *   clear, a read-only check finds no corruption and no leak; after a
 *   writable open (which repairs if NEED_CHECK is set) neither
 *   remains; it reads as the model (nothing acknowledged is lost);
 * - nothing leaks: in sanitizer builds LeakSanitizer is asked after
 *   every run; under valgrind, at the end.
 * The same with a QED backing file through an opener (and the repair
 * of the open by qed_image_enable_writes), and a short workload over
 * the POSIX files and opener.
 *
 * QED_NOMEM_ONLY=n runs only the n-th failure of each workload;
 * QED_NOMEM_VERBOSE=1 says where each failure hit, which
 * addr2line -f -i -e test-nomem OFFSET names.
 */

#include <config.h>

#include <dlfcn.h>
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/lsan_interface.h>
#endif

#include "memfile.h"
#include "qed-format.h"
#include "test.h"

#define CLUSTER 4096u
#define SIZE (8 * 1024 * 1024)  /* 4 L2 tables of one cluster */
#define TABLE_SPAN (2 * 1024 * 1024)

/* The allocation hook. */

enum alloc_fn { FN_MALLOC, FN_CALLOC, FN_REALLOC, FN_STRDUP, FN_ASPRINTF,
                FN_VASPRINTF };
static const char *const fn_names[] = {
  "malloc", "calloc", "realloc", "strdup", "asprintf", "vasprintf",
};

static bool with_backing;        /* the variant running */
static const char *variant = "plain";
static unsigned long run_fail_at;       /* for messages */
static bool armed;              /* count (and fail) allocations */
static __thread unsigned shield;  /* > 0: in the test's own code */
static unsigned long counted;   /* allocations counted while armed */
static unsigned long fail_at;   /* fail the fail_at-th; 0: none */
static bool persistent;         /* ... and every one after it in its step */
static bool failed;             /* the failure was injected */
static unsigned required_failed;  /* allocations the step cannot do
                                   * without that failed in it */
static enum alloc_fn failed_fn;  /* reset once a step met it */
static enum alloc_fn failed_fn_first;
static void *failed_caller;

/* Where the failed call came from, for addr2line -f -e test-nomem. */
static uintptr_t
caller_offset (void)
{
  Dl_info info;

  if (dladdr (failed_caller, &info) == 0)
    return (uintptr_t) failed_caller;
  return (uintptr_t) failed_caller - (uintptr_t) info.dli_fbase;
}

static void
fail_prefix (void)
{
  fprintf (stderr, "test-nomem: %s, failing allocation %lu%s",
           variant, run_fail_at,
           persistent ? " and those after it" : "");
  if (failed)
    fprintf (stderr, " (%s called from test-nomem+0x%" PRIxPTR ")",
             fn_names[failed_fn_first], caller_offset ());
  fprintf (stderr, ": ");
}

static bool
fail_now (enum alloc_fn fn, void *caller)
{
  if (!armed || shield > 0)
    return false;
  ++counted;
  if (fail_at == 0 || counted < fail_at ||
      (counted > fail_at && !persistent))
    return false;
  /* A log message is written without its arguments, if need be. */
  if (fn != FN_VASPRINTF)
    required_failed++;
  if (failed)
    return true;
  failed = true;
  failed_fn = failed_fn_first = fn;
  failed_caller = caller;
  errno = ENOMEM;
  return true;
}

#define CALLER __builtin_return_address (0)

void *__real_malloc (size_t n);
void *__real_calloc (size_t n, size_t size);
void *__real_realloc (void *p, size_t n);
char *__real_strdup (const char *s);
int __real_vasprintf (char **strp, const char *fmt, va_list ap);

void *__wrap_malloc (size_t n);
void *__wrap_calloc (size_t n, size_t size);
void *__wrap_realloc (void *p, size_t n);
char *__wrap_strdup (const char *s);
int __wrap_asprintf (char **strp, const char *fmt, ...);
int __wrap_vasprintf (char **strp, const char *fmt, va_list ap);

void *
__wrap_malloc (size_t n)
{
  return fail_now (FN_MALLOC, CALLER) ? NULL : __real_malloc (n);
}

void *
__wrap_calloc (size_t n, size_t size)
{
  return fail_now (FN_CALLOC, CALLER) ? NULL : __real_calloc (n, size);
}

void *
__wrap_realloc (void *p, size_t n)
{
  return fail_now (FN_REALLOC, CALLER) ? NULL : __real_realloc (p, n);
}

char *
__wrap_strdup (const char *s)
{
  return fail_now (FN_STRDUP, CALLER) ? NULL : __real_strdup (s);
}

int
__wrap_vasprintf (char **strp, const char *fmt, va_list ap)
{
  return fail_now (FN_VASPRINTF, CALLER) ? -1
    : __real_vasprintf (strp, fmt, ap);
}

int
__wrap_asprintf (char **strp, const char *fmt, ...)
{
  va_list ap;
  int r;

  if (fail_now (FN_ASPRINTF, CALLER))
    return -1;
  va_start (ap, fmt);
  r = __real_vasprintf (strp, fmt, ap);
  va_end (ap);
  return r;
}

/* A file that passes every operation to a memfile, shielded: what the
 * memfile allocates is not the engine's.
 */
struct shielded {
  struct qed_file file;         /* first */
  struct qed_file_ops ops;
  struct qed_file *inner;
};

#define INNER(f) (((struct shielded *) (f))->inner)
#define SHIELDED(call)                                                  \
  do {                                                                  \
    int r_;                                                             \
    shield++;                                                           \
    r_ = (call);                                                        \
    shield--;                                                           \
    return r_;                                                          \
  } while (0)

static int
sh_pread (struct qed_file *f, void *buf, size_t count, uint64_t offset)
{
  SHIELDED (INNER (f)->ops->pread (INNER (f), buf, count, offset));
}

static int
sh_get_size (struct qed_file *f, uint64_t *size)
{
  SHIELDED (INNER (f)->ops->get_size (INNER (f), size));
}

static int
sh_pwrite (struct qed_file *f, const void *buf, size_t count, uint64_t offset)
{
  SHIELDED (INNER (f)->ops->pwrite (INNER (f), buf, count, offset));
}

static int
sh_flush (struct qed_file *f)
{
  SHIELDED (INNER (f)->ops->flush (INNER (f)));
}

static int
sh_truncate (struct qed_file *f, uint64_t size)
{
  SHIELDED (INNER (f)->ops->truncate (INNER (f), size));
}

static int
sh_punch (struct qed_file *f, uint64_t offset, uint64_t count)
{
  SHIELDED (INNER (f)->ops->punch (INNER (f), offset, count));
}

static void
sh_close (struct qed_file *f)
{
  shield++;
  INNER (f)->ops->close (INNER (f));
  free (f);
  shield--;
}

/* Made unarmed (or shielded); the engine frees it by closing it. */
static struct qed_file *
shielded_file (struct memfile *mf, bool writable)
{
  /* Not calloc between shield++ and shield--: the compiler knows
   * calloc, and may drop the pair around it.
   */
  struct shielded *s = __real_calloc (1, sizeof *s);

  if (s == NULL)
    abort ();
  s->inner = memfile_file (mf);
  s->ops.pread = sh_pread;
  s->ops.get_size = sh_get_size;
  s->ops.close = sh_close;
  s->ops.pwrite = sh_pwrite;
  s->ops.flush = sh_flush;
  s->ops.truncate = s->inner->ops->truncate ? sh_truncate : NULL;
  s->ops.punch = s->inner->ops->punch ? sh_punch : NULL;
  s->file.ops = &s->ops;
  s->file.writable = writable;
  return &s->file;
}

/* The opener of the backing variant: "base.qed" is the base memfile. */
static struct memfile *base_mf;

static int
mem_resolve (const struct qed_opener *o, const char *name, const char *base,
             char **resolved)
{
  *resolved = __real_strdup (name);
  return *resolved == NULL ? -ENOMEM : 0;
}

static int
mem_open (const struct qed_opener *o, const char *name, unsigned flags,
          struct qed_file **filep)
{
  if (strcmp (name, "base.qed") != 0)
    return -ENOENT;
  *filep = shielded_file (base_mf, flags & QED_OPEN_WRITE);
  return 0;
}

static const struct qed_opener mem_opener = {
  .resolve = mem_resolve, .open = mem_open,
};

/* The log: kept quiet (the runs fail on purpose), the last error kept. */
static char last_error[512];

static void
quiet_log (enum qed_log_level level, const char *msg)
{
  if (level == QED_LOG_ERROR)
    snprintf (last_error, sizeof last_error, "%s", msg);
  if (getenv ("QED_NOMEM_VERBOSE") && level != QED_LOG_DEBUG)
    fprintf (stderr, "  [log] %s\n", msg);
}

/* What the image must read.  After a failed request, the bytes it
 * covered may read as before or as the request wrote (alt).
 */
static unsigned char model[SIZE], alt[SIZE], buf[SIZE];
static bool verbose;

static void fail_prefix (void);

#define FAIL(...)                                                       \
  do {                                                                  \
    fail_prefix ();                                                     \
    fprintf (stderr, __VA_ARGS__);                                      \
    fprintf (stderr, "\n");                                             \
    exit (EXIT_FAILURE);                                                \
  } while (0)

static void
read_or_fail (struct qed_image *img, void *p, uint64_t count,
              uint64_t offset, int line)
{
  int r = qed_image_read (img, p, count, offset);

  if (r < 0)
    FAIL ("line %d: reading %" PRIu64 " bytes at %" PRIu64 ": %s", line,
          count, offset, strerror (-r));
}

/* The whole image reads as the model. */
static void
model_check (struct qed_image *img, int line)
{
  read_or_fail (img, buf, SIZE, 0, line);
  if (memcmp (buf, model, SIZE) != 0)
    for (size_t i = 0; i < SIZE; i++)
      if (buf[i] != model[i])
        FAIL ("line %d: byte %zu reads %02x, the model has %02x", line, i,
              buf[i], model[i]);
}

/* A request on [offset, offset + count) failed: each byte reads as
 * before (model) or as the request would have left it (alt); from now
 * on it must read so.
 */
static void
settle (struct qed_image *img, uint64_t offset, uint64_t count, int line)
{
  read_or_fail (img, buf, count, offset, line);
  for (uint64_t i = 0; i < count; i++) {
    if (buf[i] != model[offset + i] && buf[i] != alt[offset + i])
      FAIL ("line %d: after the failure byte %" PRIu64 " reads %02x, neither"
            " %02x (before) nor %02x (the request)", line, offset + i,
            buf[i], model[offset + i], alt[offset + i]);
    model[offset + i] = buf[i];
  }
}

/* One step of the workload, armed.  Returns its result, after checking
 * that it is 0 or, if the step met the failure, -ENOMEM (or 0 if the
 * allocation was optional).
 */
static int
step_end (int r, const char *what, int line)
{
  armed = false;
  /* failed_fn is reset once a step has met the failure. */
  if (failed && failed_fn != (enum alloc_fn) -1) {
    if (verbose)
      fprintf (stderr, "  %s (line %d) met the failure of %s (called from"
               " +0x%" PRIxPTR "): %s\n", what, line, fn_names[failed_fn],
               caller_offset (), r < 0 ? strerror (-r) : "succeeded");
    if (r == 0 && required_failed > 0)
      FAIL ("line %d: %s succeeded although an allocation failed", line,
            what);
    if (r < 0 && r != -ENOMEM)
      FAIL ("line %d: %s returned %s instead of ENOMEM (last error: %s)",
            line, what, strerror (-r), last_error);
    failed_fn = (enum alloc_fn) -1;
    fail_at = 0;                /* the next steps have memory */
  }
  else if (r < 0)
    FAIL ("line %d: %s failed without an allocation failing: %s (%s)",
          line, what, strerror (-r), last_error);
  return r;
}

#define STEP(expr) (armed = true, step_end ((expr), #expr, __LINE__))

static void
do_write (struct qed_image *img, uint64_t offset, size_t n, uint64_t seed,
          int line)
{
  test_fill_pattern (alt + offset, n, seed);
  if (STEP (qed_image_write (img, alt + offset, n, offset, 0)) == 0)
    memcpy (model + offset, alt + offset, n);
  else
    settle (img, offset, n, line);
}

static void
do_zero (struct qed_image *img, uint64_t offset, size_t n, unsigned flags,
         int line)
{
  memset (alt + offset, 0, n);
  if (STEP (qed_image_zero (img, n, offset, flags)) == 0)
    memset (model + offset, 0, n);
  else
    settle (img, offset, n, line);
}

/* Trimmed contents are unspecified: zeros or what was there. */
static void
do_trim (struct qed_image *img, uint64_t offset, size_t n, int line)
{
  memset (alt + offset, 0, n);
  STEP (qed_image_trim (img, n, offset, 0));
  settle (img, offset, n, line);
}

static int
count_extent (void *opaque, uint64_t offset, uint64_t length, unsigned type)
{
  (*(unsigned *) opaque)++;
  return 0;
}

static int
do_check (struct qed_image *img, bool repair, int line)
{
  struct qed_check_result res;
  int r = STEP (qed_image_check (img, repair, &res));

  if (r == 0 && (res.corruptions || res.check_errors))
    FAIL ("line %d: the check found %" PRIu64 " corruptions, %" PRIu64
          " check errors", line, res.corruptions, res.check_errors);
  return r;
}

static uint64_t
cl (uint64_t n)
{
  return n * CLUSTER;
}

/* A resize to size (the disk is SIZE or small).  Failed, the image has
 * the old size or the new one (and reads as before below the smaller,
 * which model_check sees once it has grown back), and maybe leaked
 * clusters, which a repair with memory gives back.
 */
static void
do_resize (struct qed_image *img, uint64_t size, uint64_t small, int line)
{
  uint64_t old = qed_image_size (img), now;
  struct qed_check_result res;
  int r = STEP (qed_image_resize (img, size, true));

  now = qed_image_size (img);
  if (now != size && (r == 0 || now != old))
    FAIL ("line %d: resizing from %" PRIu64 " to %" PRIu64 " left %" PRIu64
          " bytes", line, old, size, now);
  if (r < 0)
    CHECK_OK (qed_image_check (img, true, &res));
  /* Once smaller, what was cut reads as zeros when it grows back. */
  if (now == small)
    memset (model + small, 0, SIZE - small);
}

static uint64_t l2_table (struct memfile *mf, unsigned l1_index);
static uint64_t read_entry (struct memfile *mf, uint64_t table,
                            unsigned index);
static void write_entry (struct memfile *mf, uint64_t table, unsigned index,
                         uint64_t entry);

/* Requests over the open image in mf; every step may meet the
 * failure.
 */
static void
workload (struct memfile *mf, struct qed_image *img)
{
  unsigned char rbuf[3 * CLUSTER];
  unsigned extents = 0;
  struct qed_check_result res;
  uint64_t t0, changes;

  /* Allocating writes: into table 0, which exists; across the end of
   * table 1 (which exists) into table 2 (new), in parts of clusters;
   * into table 3 (new), a part of one cluster.
   */
  do_write (img, cl (20), cl (3), 101, __LINE__);
  do_write (img, 2 * TABLE_SPAN - 6000, 20000, 102, __LINE__);
  do_write (img, 3 * TABLE_SPAN + cl (7) + 100, 300, 103, __LINE__);
  /* In place. */
  do_write (img, cl (1) + 10, 1000, 104, __LINE__);
  /* Reads of data, of a new table. */
  if (STEP (qed_image_read (img, rbuf, sizeof rbuf, cl (19))) == 0 &&
      memcmp (rbuf, model + cl (19), sizeof rbuf) != 0)
    FAIL ("line %d: the read does not match the model", __LINE__);
  if (STEP (qed_image_read (img, rbuf, sizeof rbuf, 2 * TABLE_SPAN)) == 0 &&
      memcmp (rbuf, model + 2 * TABLE_SPAN, sizeof rbuf) != 0)
    FAIL ("line %d: the read does not match the model", __LINE__);
  /* Zero: a part of a data cluster; whole data clusters (punched);
   * whole unallocated clusters in table 1 (over a backing file they
   * become zero clusters) and a part of one (over a backing file, a
   * new cluster).
   */
  do_zero (img, cl (2) + 5, 100, 0, __LINE__);
  do_zero (img, cl (20), cl (2), QED_MAY_TRIM, __LINE__);
  do_zero (img, TABLE_SPAN + cl (3), cl (2), 0, __LINE__);
  do_zero (img, TABLE_SPAN + cl (6) + 7, 300, 0, __LINE__);
  do_trim (img, cl (22), cl (1), __LINE__);
  STEP (qed_image_flush (img));
  STEP (qed_image_block_status (img, SIZE, 0, count_extent, &extents));
  do_check (img, false, __LINE__);

  /* Damage for the repair to fix under the open image: entry 40 of
   * table 0, unallocated (and cached so), shares the cluster of entry
   * 1.  Repaired, it reads as cluster 1; a repair that failed half way
   * must leave the memory following the disk, and the next repair
   * finishes the work.
   */
  t0 = l2_table (mf, 0);
  write_entry (mf, t0, 40, read_entry (mf, t0, 1));
  memcpy (model + cl (40), model + cl (1), CLUSTER);
  changes = memfile_count (mf, MF_PWRITE | MF_TRUNCATE | MF_PUNCH);
  if (do_check (img, true, __LINE__) < 0) {
    /* Cluster 40 reads as cluster 1 (shared still, or copied) only if
     * the memory followed the disk (the cache had it unallocated, as
     * it was before the damage, which the engine cannot know about
     * unless the repair got as far as changing something).  Nothing
     * is written before the next repair: cluster 40 may still share
     * cluster 1.
     */
    if (memfile_count (mf, MF_PWRITE | MF_TRUNCATE | MF_PUNCH) != changes)
      model_check (img, __LINE__);
    CHECK_OK (qed_image_check (img, true, &res));
    CHECK (res.corruptions == 0 && res.check_errors == 0);
  }
  model_check (img, __LINE__);

  /* After the repair reloaded the tables: allocate again, in table 0
   * and in the last table; write over the copy the repair made.
   */
  do_write (img, cl (30), cl (2), 105, __LINE__);
  do_write (img, SIZE - cl (3), cl (2), 106, __LINE__);
  do_write (img, cl (40) + 1, 100, 107, __LINE__);
  model_check (img, __LINE__);

  /* Shrink into table 2 (its clusters move, tables 2 and 3 go), then
   * grow back (over a backing file: zero clusters).
   */
  do_resize (img, 2 * TABLE_SPAN + cl (3) + 512, 2 * TABLE_SPAN + cl (3) + 512,
             __LINE__);
  do_resize (img, SIZE, 2 * TABLE_SPAN + cl (3) + 512, __LINE__);
  if (qed_image_size (img) != SIZE)
    CHECK_OK (qed_image_resize (img, SIZE, false));
  model_check (img, __LINE__);
}

/* The image the workload starts from. */
static unsigned char *start_bytes;
static size_t start_size;
static unsigned char start_model[SIZE];

static void
read_header (struct memfile *mf, struct qed_header *h)
{
  size_t size;

  qed_header_decode (memfile_data (mf, &size), h);
}

static uint64_t
l2_table (struct memfile *mf, unsigned l1_index)
{
  struct qed_header h;
  uint64_t e;

  read_header (mf, &h);
  CHECK_OK (memfile_file (mf)->ops->pread (memfile_file (mf), &e, 8,
                                           h.l1_table_offset + l1_index * 8));
  return le64toh (e);
}

static void
write_entry (struct memfile *mf, uint64_t table, unsigned index,
             uint64_t entry)
{
  uint64_t le = htole64 (entry);

  CHECK_OK (memfile_file (mf)->ops->pwrite (memfile_file (mf), &le, 8,
                                            table + index * 8));
}

static uint64_t
read_entry (struct memfile *mf, uint64_t table, unsigned index)
{
  uint64_t le;

  CHECK_OK (memfile_file (mf)->ops->pread (memfile_file (mf), &le, 8,
                                           table + index * 8));
  return le64toh (le);
}

static struct qed_open_options
open_options (enum qed_access access)
{
  struct qed_open_options opts = {
    .access = access,
    .opener = &mem_opener,
    .no_backing = !with_backing,
    /* The smallest cache (16 slices). */
    .l2_cache_size = 1,
  };

  return opts;
}

/* Build the starting image: data in tables 0 and 1 (and, with a
 * backing file, a base image under it), then damage that the repair
 * at open fixes without leaving leaks: an entry sharing another's
 * cluster, an entry past the end of the file, and NEED_CHECK.
 */
static void
make_start (void)
{
  struct qed_create_options copts = {
    .size = SIZE, .cluster_size = CLUSTER, .table_size = 1,
  };
  struct qed_open_options opts = open_options (QED_READ_WRITE);
  struct memfile *mf = memfile_new (NULL, 0);
  struct qed_image *img;
  struct qed_header h;
  unsigned char hdr[QED_HEADER_STRUCT_SIZE];
  uint64_t t0;
  const unsigned char *data;
  size_t n;

  memset (start_model, 0, sizeof start_model);
  if (with_backing) {
    struct qed_image *base;

    base_mf = memfile_new (NULL, 0);
    CHECK_OK (qed_create_file (memfile_file (base_mf), &copts));
    CHECK_OK (qed_image_open_file (shielded_file (base_mf, true), "base.qed",
                                   &opts, &base));
    test_model_write (start_model, base, 0, cl (16), 1);
    test_model_write (start_model, base, TABLE_SPAN, cl (16), 2);
    test_model_write (start_model, base, 2 * TABLE_SPAN - cl (2), cl (4), 3);
    test_model_write (start_model, base, SIZE - cl (8), cl (8), 4);
    CHECK_OK (qed_image_close (base));
    copts.backing_file = "base.qed";
    copts.backing_format = "qed";
  }
  CHECK_OK (qed_create_file (memfile_file (mf), &copts));
  CHECK_OK (qed_image_open_file (shielded_file (mf, true), "top.qed", &opts,
                                 &img));
  test_model_write (start_model, img, 0, cl (10), 11);
  test_model_write (start_model, img, TABLE_SPAN + cl (1), cl (2), 12);
  CHECK_OK (qed_image_close (img));

  /* Entry 12 of table 0 (unallocated) shares entry 3's cluster: the
   * repair gives it a copy.  Entry 13 points past the end of the file:
   * the repair clears it, and it reads as unallocated.
   */
  t0 = l2_table (mf, 0);
  CHECK (t0 != 0 && read_entry (mf, t0, 12) == 0 &&
         read_entry (mf, t0, 13) == 0);
  write_entry (mf, t0, 12, read_entry (mf, t0, 3));
  memcpy (start_model + cl (12), start_model + cl (3), CLUSTER);
  memfile_data (mf, &n);
  write_entry (mf, t0, 13, n + cl (16));
  data = memfile_data (mf, &n);
  memcpy (hdr, data, sizeof hdr);
  qed_header_decode (hdr, &h);
  h.features |= QED_F_NEED_CHECK;
  qed_header_encode (&h, hdr);
  CHECK_OK (memfile_file (mf)->ops->pwrite (memfile_file (mf), hdr,
                                            sizeof hdr, 0));

  data = memfile_data (mf, &n);
  start_bytes = malloc (n);
  CHECK (start_bytes != NULL);
  memcpy (start_bytes, data, n);
  start_size = n;
  memfile_free (mf);
}

/* The image left in mf is consistent and reads as the model. */
static void
verify (struct memfile *mf)
{
  struct qed_open_options opts;
  struct qed_image *img;
  struct qed_check_result res;
  struct qed_header h;
  int r;

  read_header (mf, &h);
  if (!(h.features & QED_F_NEED_CHECK)) {
    /* Clean: consistent as it is. */
    opts = open_options (QED_READ_ONLY);
    r = qed_image_open_file (shielded_file (mf, false), "top.qed", &opts,
                             &img);
    if (r < 0)
      FAIL ("read-only open after the run: %s (%s)", strerror (-r),
            last_error);
    CHECK_OK (qed_image_check (img, false, &res));
    if (res.corruptions || res.check_errors)
      FAIL ("the image is clean but has %" PRIu64 " corruptions, %" PRIu64
            " check errors", res.corruptions, res.check_errors);
    if (res.leaks)
      FAIL ("the image is clean but leaks %" PRIu64 " clusters", res.leaks);
    model_check (img, __LINE__);
    CHECK_OK (qed_image_close (img));
  }

  opts = open_options (QED_READ_WRITE);
  r = qed_image_open_file (shielded_file (mf, true), "top.qed", &opts, &img);
  if (r < 0)
    FAIL ("writable open after the run: %s (%s)", strerror (-r), last_error);
  CHECK_OK (qed_image_check (img, false, &res));
  if (res.corruptions || res.check_errors || res.leaks)
    FAIL ("after the repair at open: %" PRIu64 " corruptions, %" PRIu64
          " leaks, %" PRIu64 " check errors", res.corruptions, res.leaks,
          res.check_errors);
  model_check (img, __LINE__);
  CHECK_OK (qed_image_close (img));
}

/* One run, failing the n-th allocation (none: 0).  Returns the number
 * of allocations counted.
 */
static unsigned long
run (unsigned long n)
{
  struct memfile *mf = memfile_new (start_bytes, start_size);
  struct qed_open_options opts = open_options (QED_READ_WRITE);
  struct qed_image *img = NULL;
  struct qed_file *file;
  int r;

  counted = 0;
  fail_at = run_fail_at = n;
  failed = false;
  required_failed = 0;
  failed_fn = (enum alloc_fn) -1;
  memcpy (model, start_model, SIZE);

  /* With a backing file, open first and repair in enable_writes: one
   * that failed leaves the image open, and can be tried again.
   */
  if (with_backing)
    opts.access = QED_WRITE_ON_DEMAND;
  file = shielded_file (mf, true);
  r = STEP (qed_image_open_file (file, "top.qed", &opts, &img));
  if (r == 0 && with_backing &&
      STEP (qed_image_enable_writes (img)) < 0)
    CHECK_OK (qed_image_enable_writes (img));
  if (r == 0) {
    workload (mf, img);
    STEP (qed_image_close (img));
  }
  if (n > 0 && !failed)
    FAIL ("the workload made only %lu allocations", counted);
  verify (mf);
  memfile_free (mf);

#ifdef __SANITIZE_ADDRESS__
  if (__lsan_do_recoverable_leak_check () != 0)
    FAIL ("LeakSanitizer found leaks");
#endif
  return counted;
}

static void
run_all (bool backing)
{
  unsigned long k, only = 0;
  const char *s = getenv ("QED_NOMEM_ONLY");

  with_backing = backing;
  variant = backing ? "backing" : "plain";
  make_start ();
  persistent = false;
  k = run (0);
  printf ("test-nomem: %s: %lu allocations in the workload\n",
          backing ? "with a backing file" : "plain", k);
  if (s)
    only = strtoul (s, NULL, 0);
  for (int p = 0; p <= 1; p++) {
    persistent = p;
    for (unsigned long n = 1; n <= k; n++)
      if (only == 0 || n == only) {
        if (verbose)
          fprintf (stderr, "run %lu of %lu%s\n", n, k,
                   persistent ? " (persistent)" : "");
        run (n);
      }
  }
  free (start_bytes);
  if (base_mf) {
    memfile_free (base_mf);
    base_mf = NULL;
  }
}

/* The POSIX file layer and opener, which the memfile variants do not
 * use: create an image over a raw backing file named relative to it,
 * open it by path, write, close.
 */
static void
run_posix (unsigned long n)
{
  char *top = test_path ("top.qed"), *base = test_path ("base.raw");
  struct qed_create_options copts = {
    .size = 1024 * 1024, .cluster_size = CLUSTER,
    .backing_file = "base.raw", .backing_format = "raw",
  };
  struct qed_open_options opts = { .access = QED_READ_WRITE };
  unsigned char *before = model, *after = alt, *got = buf;
  struct qed_check_result res;
  struct qed_image *img;
  bool wrote = false;
  FILE *fp;
  int r;

  test_fill_pattern (before, 2 * CLUSTER, 3);
  fp = fopen (base, "w");
  CHECK (fp && fwrite (before, 1, 2 * CLUSTER, fp) == 2 * CLUSTER &&
         fclose (fp) == 0);
  unlink (top);

  counted = 0;
  fail_at = run_fail_at = n;
  failed = false;
  required_failed = 0;
  failed_fn = (enum alloc_fn) -1;
  r = STEP (qed_create (top, &copts));
  if (r == 0 && STEP (qed_image_open (top, &opts, &img)) == 0) {
    test_fill_pattern (after, CLUSTER, 4);
    wrote = STEP (qed_image_write (img, after, CLUSTER, 100, 0)) == 0;
    STEP (qed_image_close (img));
  }
  if (n > 0 && !failed)
    FAIL ("the workload made only %lu allocations", counted);

  /* Unless the create failed: consistent, and the write's range reads
   * as before or as written.
   */
  if (r == 0) {
    CHECK_OK (qed_image_open (top, &opts, &img));
    CHECK_OK (qed_image_check (img, false, &res));
    if (res.corruptions || res.check_errors || res.leaks)
      FAIL ("%" PRIu64 " corruptions, %" PRIu64 " leaks, %" PRIu64
            " check errors", res.corruptions, res.leaks, res.check_errors);
    CHECK_OK (qed_image_read (img, got, 2 * CLUSTER, 0));
    if (memcmp (got + 100, after, CLUSTER) != 0 &&
        (wrote || memcmp (got, before, 2 * CLUSTER) != 0))
      FAIL ("the image does not read as written");
    CHECK_OK (qed_image_close (img));
  }
  free (top);
  free (base);

#ifdef __SANITIZE_ADDRESS__
  if (__lsan_do_recoverable_leak_check () != 0)
    FAIL ("LeakSanitizer found leaks");
#endif
  if (n == 0)
    printf ("test-nomem: posix files: %lu allocations in the workload\n",
            counted);
}

static void
run_all_posix (void)
{
  unsigned long k, only = 0;
  const char *s = getenv ("QED_NOMEM_ONLY");

  variant = "posix";
  persistent = false;
  run_posix (0);
  k = counted;
  if (s)
    only = strtoul (s, NULL, 0);
  for (int p = 0; p <= 1; p++) {
    persistent = p;
    for (unsigned long n = 1; n <= k; n++)
      if (only == 0 || n == only)
        run_posix (n);
  }
}

int
main (void)
{
  verbose = getenv ("QED_NOMEM_VERBOSE") != NULL;
  qed_set_log_function (quiet_log);
  qed_set_check_window (64);    /* several windows per check */
  run_all (false);
  run_all (true);
  run_all_posix ();
  return 0;
}
