/* nbdkit-qed tests: a file in memory that can fail and crash.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "memfile.h"

struct record {
  enum memfile_op op;
  uint64_t offset, count;       /* truncate: count is the new size */
  unsigned char *data;          /* pwrite */
};

struct memfile {
  struct qed_file file;         /* first, so a qed_file * converts */
  struct qed_file_ops ops;      /* what this file can do */
  pthread_mutex_t lock;
  unsigned char *data;
  size_t size, alloc;
  uint64_t counts[6];
  uint64_t bytes_written;
  uint64_t hole_block;          /* memfile_holes */
  /* Fault injection. */
  unsigned fail_mask;
  uint64_t fail_skip;
  int fail_err;
  bool fail_persistent;
  /* Slow operations (memfile_delay). */
  unsigned delay_mask;
  unsigned delay_us;
  /* Holding an operation (memfile_hold). */
  unsigned hold_mask;
  bool held;
  pthread_cond_t hold_changed;
  /* Recording. */
  bool recording;
  unsigned char *base;
  size_t base_size;
  struct record *records;
  size_t nrecords;
};

static unsigned
op_index (enum memfile_op op)
{
  return __builtin_ctz (op);
}

/* Called without the lock: an operation that memfile_delay slows
 * takes its time, as a disk's would, while other threads go on.
 */
static void
delay (struct memfile *mf, enum memfile_op op)
{
  unsigned us;

  pthread_mutex_lock (&mf->lock);
  us = mf->delay_mask & op ? mf->delay_us : 0;
  pthread_mutex_unlock (&mf->lock);
  if (us)
    usleep (us);
}

/* Called with the lock held: should this operation fail?  An operation
 * that memfile_hold asked for waits here first.
 */
static int
injected (struct memfile *mf, enum memfile_op op)
{
  mf->counts[op_index (op)]++;
  if (mf->hold_mask & op) {
    mf->hold_mask = 0;
    mf->held = true;
    pthread_cond_broadcast (&mf->hold_changed);
    while (mf->held)
      pthread_cond_wait (&mf->hold_changed, &mf->lock);
  }
  if (mf->fail_err == 0 || !(mf->fail_mask & op))
    return 0;
  if (mf->fail_skip > 0) {
    mf->fail_skip--;
    return 0;
  }
  if (!mf->fail_persistent) {
    int e = mf->fail_err;
    mf->fail_err = 0;
    return -e;
  }
  return -mf->fail_err;
}

static int
resize (struct memfile *mf, size_t size)
{
  if (size > mf->alloc) {
    size_t alloc = mf->alloc ? mf->alloc : 65536;
    unsigned char *p;
    while (alloc < size)
      alloc *= 2;
    p = realloc (mf->data, alloc);
    if (p == NULL)
      return -ENOMEM;
    memset (p + mf->alloc, 0, alloc - mf->alloc);
    mf->data = p;
    mf->alloc = alloc;
  }
  if (size < mf->size)
    memset (mf->data + size, 0, mf->size - size);
  mf->size = size;
  return 0;
}

static void
record (struct memfile *mf, enum memfile_op op, uint64_t offset,
        uint64_t count, const void *data)
{
  struct record *r;

  if (!mf->recording)
    return;
  r = realloc (mf->records, (mf->nrecords + 1) * sizeof *r);
  if (r == NULL)
    abort ();
  mf->records = r;
  r = &mf->records[mf->nrecords++];
  r->op = op;
  r->offset = offset;
  r->count = count;
  r->data = NULL;
  if (data) {
    r->data = malloc (count);
    if (r->data == NULL)
      abort ();
    memcpy (r->data, data, count);
  }
}

static int
mf_pread (struct qed_file *f, void *buf, size_t count, uint64_t offset)
{
  struct memfile *mf = (struct memfile *) f;
  int r;

  delay (mf, MF_PREAD);
  pthread_mutex_lock (&mf->lock);
  r = injected (mf, MF_PREAD);
  if (r == 0 && (offset > mf->size || count > mf->size - offset))
    r = -EIO;
  if (r == 0)
    memcpy (buf, mf->data + offset, count);
  pthread_mutex_unlock (&mf->lock);
  return r;
}

static int
apply_write (struct memfile *mf, const void *buf, size_t count,
             uint64_t offset)
{
  int r = 0;

  if (offset + count > mf->size)
    r = resize (mf, offset + count);
  if (r == 0)
    memcpy (mf->data + offset, buf, count);
  return r;
}

static int
mf_pwrite (struct qed_file *f, const void *buf, size_t count, uint64_t offset)
{
  struct memfile *mf = (struct memfile *) f;
  int r;

  delay (mf, MF_PWRITE);
  pthread_mutex_lock (&mf->lock);
  r = injected (mf, MF_PWRITE);
  if (r == 0)
    r = apply_write (mf, buf, count, offset);
  if (r == 0) {
    mf->bytes_written += count;
    record (mf, MF_PWRITE, offset, count, buf);
  }
  pthread_mutex_unlock (&mf->lock);
  return r;
}

static int
mf_flush (struct qed_file *f)
{
  struct memfile *mf = (struct memfile *) f;
  int r;

  delay (mf, MF_FLUSH);
  pthread_mutex_lock (&mf->lock);
  r = injected (mf, MF_FLUSH);
  if (r == 0)
    record (mf, MF_FLUSH, 0, 0, NULL);
  pthread_mutex_unlock (&mf->lock);
  return r;
}

static int
mf_get_size (struct qed_file *f, uint64_t *size)
{
  struct memfile *mf = (struct memfile *) f;

  pthread_mutex_lock (&mf->lock);
  *size = mf->size;
  pthread_mutex_unlock (&mf->lock);
  return 0;
}

static int
mf_truncate (struct qed_file *f, uint64_t size)
{
  struct memfile *mf = (struct memfile *) f;
  int r;

  pthread_mutex_lock (&mf->lock);
  r = injected (mf, MF_TRUNCATE);
  if (r == 0)
    r = resize (mf, size);
  if (r == 0)
    record (mf, MF_TRUNCATE, 0, size, NULL);
  pthread_mutex_unlock (&mf->lock);
  return r;
}

static int
mf_punch (struct qed_file *f, uint64_t offset, uint64_t count)
{
  struct memfile *mf = (struct memfile *) f;
  int r;

  pthread_mutex_lock (&mf->lock);
  r = injected (mf, MF_PUNCH);
  if (r == 0 && offset < mf->size) {
    uint64_t n = count < mf->size - offset ? count : mf->size - offset;
    memset (mf->data + offset, 0, n);
    record (mf, MF_PUNCH, offset, count, NULL);
  }
  pthread_mutex_unlock (&mf->lock);
  return r;
}

/* Called with the lock held. */
static bool
is_hole (const struct memfile *mf, uint64_t offset)
{
  uint64_t block = offset - offset % mf->hole_block;
  uint64_t n;

  if (block >= mf->size)
    return true;
  n = mf->size - block < mf->hole_block ? mf->size - block : mf->hole_block;
  for (uint64_t i = 0; i < n; i++)
    if (mf->data[block + i])
      return false;
  return true;
}

static int
mf_extent (struct qed_file *f, uint64_t offset, uint64_t count,
           uint64_t *length, bool *hole)
{
  struct memfile *mf = (struct memfile *) f;
  uint64_t p = offset, end = offset + count;
  int r;

  pthread_mutex_lock (&mf->lock);
  r = injected (mf, MF_EXTENT);
  if (r == 0) {
    *hole = is_hole (mf, offset);
    /* On to the first block of the other kind. */
    while (p < end && is_hole (mf, p) == *hole)
      p += mf->hole_block - p % mf->hole_block;
    *length = (p < end ? p : end) - offset;
  }
  pthread_mutex_unlock (&mf->lock);
  return r;
}

static void
mf_close (struct qed_file *f)
{
}

/* No lock: a memfile is private to its test. */
static const struct qed_file_ops memfile_ops = {
  .pread = mf_pread,
  .get_size = mf_get_size,
  .close = mf_close,
  .pwrite = mf_pwrite,
  .flush = mf_flush,
  .truncate = mf_truncate,
  .punch = mf_punch,
};

struct memfile *
memfile_new (const void *data, size_t size)
{
  struct memfile *mf = calloc (1, sizeof *mf);

  if (mf == NULL)
    abort ();
  mf->ops = memfile_ops;
  mf->file.ops = &mf->ops;
  mf->file.writable = 1;
  pthread_mutex_init (&mf->lock, NULL);
  pthread_cond_init (&mf->hold_changed, NULL);
  if (resize (mf, size) < 0)
    abort ();
  if (size)
    memcpy (mf->data, data, size);
  return mf;
}

void
memfile_without (struct memfile *mf, unsigned mask)
{
  if (mask & MF_TRUNCATE)
    mf->ops.truncate = NULL;
  if (mask & MF_PUNCH)
    mf->ops.punch = NULL;
  if (mask & MF_EXTENT)
    mf->ops.extent = NULL;
}

void
memfile_holes (struct memfile *mf, uint64_t block)
{
  mf->hole_block = block;
  mf->ops.extent = mf_extent;
}

void
memfile_delay (struct memfile *mf, unsigned mask, unsigned us)
{
  pthread_mutex_lock (&mf->lock);
  mf->delay_mask = mask;
  mf->delay_us = us;
  pthread_mutex_unlock (&mf->lock);
}

void
memfile_hold (struct memfile *mf, unsigned mask)
{
  pthread_mutex_lock (&mf->lock);
  mf->hold_mask = mask;
  pthread_mutex_unlock (&mf->lock);
}

void
memfile_wait_held (struct memfile *mf)
{
  pthread_mutex_lock (&mf->lock);
  while (!mf->held)
    pthread_cond_wait (&mf->hold_changed, &mf->lock);
  pthread_mutex_unlock (&mf->lock);
}

void
memfile_release (struct memfile *mf)
{
  pthread_mutex_lock (&mf->lock);
  mf->held = false;
  pthread_cond_broadcast (&mf->hold_changed);
  pthread_mutex_unlock (&mf->lock);
}

void
memfile_free (struct memfile *mf)
{
  for (size_t i = 0; i < mf->nrecords; i++)
    free (mf->records[i].data);
  free (mf->records);
  free (mf->base);
  free (mf->data);
  pthread_cond_destroy (&mf->hold_changed);
  pthread_mutex_destroy (&mf->lock);
  free (mf);
}

struct qed_file *
memfile_file (struct memfile *mf)
{
  return &mf->file;
}

const unsigned char *
memfile_data (struct memfile *mf, size_t *size)
{
  *size = mf->size;
  return mf->data;
}

uint64_t
memfile_count (struct memfile *mf, unsigned mask)
{
  uint64_t n = 0;

  pthread_mutex_lock (&mf->lock);
  for (unsigned i = 0; i < sizeof mf->counts / sizeof mf->counts[0]; i++)
    if (mask & (1u << i))
      n += mf->counts[i];
  pthread_mutex_unlock (&mf->lock);
  return n;
}

uint64_t
memfile_bytes_written (struct memfile *mf)
{
  uint64_t n;

  pthread_mutex_lock (&mf->lock);
  n = mf->bytes_written;
  pthread_mutex_unlock (&mf->lock);
  return n;
}

void
memfile_fail (struct memfile *mf, unsigned mask, uint64_t skip, int err,
              bool persistent)
{
  pthread_mutex_lock (&mf->lock);
  mf->fail_mask = mask;
  mf->fail_skip = skip;
  mf->fail_err = err;
  mf->fail_persistent = persistent;
  pthread_mutex_unlock (&mf->lock);
}

void
memfile_record (struct memfile *mf)
{
  pthread_mutex_lock (&mf->lock);
  free (mf->base);
  mf->base = malloc (mf->size ? mf->size : 1);
  if (mf->base == NULL)
    abort ();
  memcpy (mf->base, mf->data, mf->size);
  mf->base_size = mf->size;
  mf->recording = true;
  pthread_mutex_unlock (&mf->lock);
}

size_t
memfile_recorded (struct memfile *mf)
{
  size_t n;

  pthread_mutex_lock (&mf->lock);
  n = mf->nrecords;
  pthread_mutex_unlock (&mf->lock);
  return n;
}

/* The recorded operations are read without the lock: once the threads
 * using the file are done.
 */
enum memfile_op
memfile_recorded_op (struct memfile *mf, size_t i, uint64_t *offset,
                     uint64_t *count)
{
  *offset = mf->records[i].offset;
  *count = mf->records[i].count;
  return mf->records[i].op;
}

size_t
memfile_flushed (struct memfile *mf, size_t n)
{
  while (n > 0 && mf->records[n - 1].op != MF_FLUSH)
    n--;
  return n;
}

/* A disk writes a request sector by sector: only a sector is atomic. */
#define SECTOR 512

/* A coin of the crash's generator. */
static bool
coin (uint64_t *s)
{
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s & 1;
}

static void
apply_record (struct memfile *c, const struct record *r)
{
  switch (r->op) {
  case MF_PWRITE:
    if (apply_write (c, r->data, r->count, r->offset) < 0)
      abort ();
    break;
  case MF_TRUNCATE:
    if (resize (c, r->count) < 0)
      abort ();
    break;
  case MF_PUNCH:
    if (r->offset < c->size)
      memset (c->data + r->offset, 0,
              r->count < c->size - r->offset ? r->count
              : c->size - r->offset);
    break;
  default:
    break;
  }
}

/* The sectors of a write that a torn crash left on disk: each one
 * that the coin keeps.
 */
static void
apply_torn (struct memfile *c, const struct record *r, uint64_t *s)
{
  uint64_t end = r->offset + r->count, next;

  for (uint64_t p = r->offset; p < end; p = next) {
    next = (p / SECTOR + 1) * SECTOR;
    if (next > end)
      next = end;
    if (coin (s) &&
        apply_write (c, r->data + (p - r->offset), next - p, p) < 0)
      abort ();
  }
}

struct memfile *
memfile_crash (struct memfile *mf, size_t n, enum memfile_crash_mode mode,
               uint64_t seed)
{
  struct memfile *c = memfile_new (mf->base, mf->base_size);
  size_t flushed = memfile_flushed (mf, n);
  uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;

  for (size_t i = 0; i < n; i++) {
    const struct record *r = &mf->records[i];

    if (i >= flushed) {
      bool keep;
      switch (mode) {
      case MF_CRASH_KEEP_ALL: keep = true; break;
      case MF_CRASH_DROP_ALL: keep = false; break;
      case MF_CRASH_KEEP_LAST: keep = i == n - 1; break;
      case MF_CRASH_TORN:
        if (r->op == MF_PWRITE) {
          apply_torn (c, r, &s);
          continue;
        }
        /* fallthrough */
      default:
        keep = coin (&s);
      }
      if (!keep)
        continue;
    }
    apply_record (c, r);
  }
  return c;
}
