/* nbdkit-qed tests: the read cache in front of network files.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The cache (files/read-cache.c) over a memfile: random reads, from
 * one thread and from several, read what the file holds; it never
 * holds more blocks than its size allows; a failed inner read leaves
 * nothing behind, so the next read asks the file again; a miss being
 * read does not stop hits; the inner file's capabilities pass through
 * and close closes it.
 *
 * Whether a block is held is asked without changing what is held:
 * with every inner read failing, a read succeeds only from the cache.
 */

#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "memfile.h"
#include "qed-net.h"
#include "test.h"

#define BLOCK (64 * 1024)       /* the cache's block size */
#define SIZE (3 * 1024 * 1024 + 12345)  /* a partial last block */
#define NBLOCKS ((SIZE + BLOCK - 1) / BLOCK)
#define MAX_READ (300 * 1024)

static unsigned char data[SIZE];

/* A file over a memfile that reports its close, its identity and its
 * prefetches, which a memfile lacks.
 */
struct probe {
  struct qed_file base;
  struct qed_file *inner;
  int closed;
  int prefetches;
};

static int
probe_pread (struct qed_file *f, void *buf, size_t count, uint64_t offset)
{
  struct probe *p = (struct probe *) f;

  return p->inner->ops->pread (p->inner, buf, count, offset);
}

static int
probe_get_size (struct qed_file *f, uint64_t *size)
{
  struct probe *p = (struct probe *) f;

  return p->inner->ops->get_size (p->inner, size);
}

static void
probe_close (struct qed_file *f)
{
  ((struct probe *) f)->closed++;
}

static int
probe_identity (struct qed_file *f, uint64_t id[2])
{
  id[0] = 14;
  id[1] = 42;
  return 0;
}

static int
probe_prefetch (struct qed_file *f, uint64_t offset, uint64_t count)
{
  ((struct probe *) f)->prefetches++;
  return 0;
}

static const struct qed_file_ops probe_ops = {
  .pread = probe_pread,
  .get_size = probe_get_size,
  .close = probe_close,
  .identity = probe_identity,
  .prefetch = probe_prefetch,
};

static struct qed_file *
new_cache (struct memfile *mf, size_t cache_size)
{
  struct qed_file *f;

  CHECK_OK (qed_read_cache_new (memfile_file (mf), cache_size, &f));
  CHECK (f->writable == 0);
  CHECK (f->ops->pwrite == NULL && f->ops->flush == NULL &&
         f->ops->truncate == NULL && f->ops->punch == NULL &&
         f->ops->lock == NULL);
  return f;
}

/* Read [offset, offset + count) and compare it with the file. */
static void
read_check (struct qed_file *f, uint64_t offset, size_t count)
{
  static __thread unsigned char buf[MAX_READ];

  CHECK (count <= sizeof buf);
  memset (buf, 0xa5, count);
  CHECK_OK (f->ops->pread (f, buf, count, offset));
  CHECK (memcmp (buf, data + offset, count) == 0);
}

/* A random read inside the file: often small, often block-aligned,
 * sometimes across several blocks.
 */
static void
random_read (struct qed_file *f, uint64_t *rng)
{
  uint64_t offset, count;

  switch (test_rand (rng) % 3) {
  case 0:
    count = 1 + test_rand (rng) % 4096;
    break;
  case 1:
    count = BLOCK;
    break;
  default:
    count = 1 + test_rand (rng) % MAX_READ;
    break;
  }
  if (count > SIZE)
    count = SIZE;
  offset = test_rand (rng) % (SIZE - count + 1);
  if (count == BLOCK && test_rand (rng) % 2)
    offset -= offset % BLOCK;
  read_check (f, offset, count);
}

/* Blocks the cache holds, asked without changing what it holds. */
static unsigned
held_blocks (struct qed_file *f, struct memfile *mf)
{
  unsigned char buf[1];
  unsigned n = 0;
  uint64_t b;

  memfile_fail (mf, MF_PREAD, 0, EIO, true);
  for (b = 0; b < NBLOCKS; b++) {
    int r = f->ops->pread (f, buf, 1, b * BLOCK);
    CHECK (r == 0 || r == -EIO);
    if (r == 0)
      n++;
  }
  memfile_fail (mf, MF_PREAD, 0, 0, false);
  return n;
}

static void
test_random_reads (void)
{
  struct memfile *mf = memfile_new (data, SIZE);
  struct qed_file *f = new_cache (mf, 16 * BLOCK);
  uint64_t rng = 1, size;
  unsigned char buf[2];
  int i;

  CHECK_OK (f->ops->get_size (f, &size));
  CHECK (size == SIZE);
  for (i = 0; i < 5000; i++)
    random_read (f, &rng);
  /* The edges: the last byte, the last partial block, past the end. */
  read_check (f, SIZE - 1, 1);
  read_check (f, SIZE - SIZE % BLOCK, SIZE % BLOCK);
  read_check (f, SIZE - SIZE % BLOCK, SIZE % BLOCK);
  CHECK_ERR (f->ops->pread (f, buf, 2, SIZE - 1), EIO);
  CHECK_ERR (f->ops->pread (f, buf, 1, SIZE), EIO);
  CHECK_ERR (f->ops->pread (f, buf, 1, UINT64_MAX), EIO);
  CHECK (held_blocks (f, mf) <= 16);
  f->ops->close (f);
  memfile_free (mf);
}

/* Blocks read once are not read again while they fit; no more blocks
 * are held than fit, and whole blocks only (8.5 blocks hold 8).
 */
static void
test_bound (void)
{
  struct memfile *mf = memfile_new (data, SIZE);
  struct qed_file *f = new_cache (mf, 8 * BLOCK + BLOCK / 2);
  uint64_t b, before;

  for (b = 0; b < 8; b++)
    read_check (f, b * BLOCK, BLOCK);
  before = memfile_count (mf, MF_PREAD);
  for (b = 0; b < 8; b++)
    read_check (f, b * BLOCK + 100, BLOCK - 200);
  CHECK (memfile_count (mf, MF_PREAD) == before);
  CHECK (held_blocks (f, mf) == 8);

  /* Every block of the file, in one read and then one by one. */
  read_check (f, 0, MAX_READ);
  for (b = 0; b < NBLOCKS; b++)
    read_check (f, b * BLOCK, b == NBLOCKS - 1 ? SIZE % BLOCK : BLOCK);
  CHECK (held_blocks (f, mf) == 8);

  /* A block read again survives a scan that evicts the others. */
  read_check (f, 40 * BLOCK, 10);
  read_check (f, 40 * BLOCK, 10);
  for (b = 0; b < 7; b++)
    read_check (f, b * BLOCK, 10);
  before = memfile_count (mf, MF_PREAD);
  read_check (f, 40 * BLOCK, 10);
  CHECK (memfile_count (mf, MF_PREAD) == before);
  f->ops->close (f);
  memfile_free (mf);
}

/* A failed inner read caches nothing: not the block that failed, nor
 * the others of the same read; the next read succeeds.
 */
static void
test_errors_not_cached (void)
{
  struct memfile *mf = memfile_new (data, SIZE);
  struct qed_file *f = new_cache (mf, 16 * BLOCK);
  unsigned char buf[4 * BLOCK];
  uint64_t before;

  memfile_fail (mf, MF_PREAD, 0, EIO, false);
  CHECK_ERR (f->ops->pread (f, buf, sizeof buf, 2 * BLOCK), EIO);
  CHECK (held_blocks (f, mf) == 0);
  before = memfile_count (mf, MF_PREAD);
  read_check (f, 2 * BLOCK, sizeof buf);
  CHECK (memfile_count (mf, MF_PREAD) == before + 1);
  CHECK (held_blocks (f, mf) == 4);

  /* Hits before a failing miss: the read fails, the hits stay. */
  memfile_fail (mf, MF_PREAD, 0, EIO, false);
  CHECK_ERR (f->ops->pread (f, buf, 2 * BLOCK, 5 * BLOCK), EIO);
  CHECK (held_blocks (f, mf) == 4);
  read_check (f, 5 * BLOCK, 2 * BLOCK);
  CHECK (held_blocks (f, mf) == 5);

  f->ops->close (f);

  /* Too small to hold a block: refused, naming the size. */
  test_clear_log ();
  CHECK_ERR (qed_read_cache_new (memfile_file (mf), BLOCK - 1, &f), EINVAL);
  CHECK (test_log_contains ("a read cache of 65535 bytes is smaller than"
                            " one block"));
  memfile_free (mf);
}

struct held_read {
  pthread_t thread;
  struct qed_file *f;
  int ret;
};

static void *
run_held_read (void *arg)
{
  struct held_read *h = arg;
  unsigned char buf[100];

  h->ret = h->f->ops->pread (h->f, buf, sizeof buf, 20 * BLOCK);
  if (h->ret == 0 && memcmp (buf, data + 20 * BLOCK, sizeof buf) != 0)
    h->ret = -EILSEQ;
  return NULL;
}

/* While one thread's miss waits in the inner file, hits go on. */
static void
test_miss_does_not_block_hits (void)
{
  struct memfile *mf = memfile_new (data, SIZE);
  struct qed_file *f = new_cache (mf, 16 * BLOCK);
  struct held_read h = { .f = f };

  read_check (f, 3 * BLOCK, BLOCK);
  memfile_hold (mf, MF_PREAD);
  CHECK (pthread_create (&h.thread, NULL, run_held_read, &h) == 0);
  memfile_wait_held (mf);
  alarm (30);                   /* a hang here is the failure */
  read_check (f, 3 * BLOCK, BLOCK);
  alarm (0);
  memfile_release (mf);
  CHECK (pthread_join (h.thread, NULL) == 0);
  CHECK_OK (h.ret);
  f->ops->close (f);
  memfile_free (mf);
}

struct reader {
  pthread_t thread;
  struct qed_file *f;
  uint64_t seed;
};

static void *
run_reader (void *arg)
{
  struct reader *rd = arg;
  int i;

  for (i = 0; i < 1500; i++)
    random_read (rd->f, &rd->seed);
  return NULL;
}

/* Threads reading at once, with a slow file and a small cache, so
 * that misses overlap, evict each other's blocks and fill the same
 * blocks at once.
 */
static void
test_threads (void)
{
  struct memfile *mf = memfile_new (data, SIZE);
  struct qed_file *f = new_cache (mf, 12 * BLOCK);
  struct reader rd[6];
  unsigned i;

  memfile_delay (mf, MF_PREAD, 50);
  for (i = 0; i < 6; i++) {
    rd[i].f = f;
    rd[i].seed = 100 + i;
    CHECK (pthread_create (&rd[i].thread, NULL, run_reader, &rd[i]) == 0);
  }
  for (i = 0; i < 6; i++)
    CHECK (pthread_join (rd[i].thread, NULL) == 0);
  memfile_delay (mf, 0, 0);
  CHECK (held_blocks (f, mf) <= 12);
  f->ops->close (f);
  memfile_free (mf);
}

/* What the inner file can do passes through; close closes it. */
static void
test_pass_through (void)
{
  struct memfile *mf = memfile_new (data, SIZE);
  struct probe p = { .base = { .ops = &probe_ops }, .inner = memfile_file (mf) };
  struct qed_file *f;
  uint64_t id[2], length;
  bool hole;

  CHECK_OK (qed_read_cache_new (&p.base, 4 * BLOCK, &f));
  CHECK (f->ops->extent == NULL);
  CHECK_OK (f->ops->identity (f, id));
  CHECK (id[0] == 14 && id[1] == 42);
  CHECK_OK (f->ops->prefetch (f, 0, BLOCK));
  CHECK (p.prefetches == 1);
  read_check (f, 1000, 2 * BLOCK);
  f->ops->close (f);
  CHECK (p.closed == 1);

  /* Holes: the memfile's zero blocks. */
  memfile_holes (mf, 4096);
  f = new_cache (mf, 4 * BLOCK);
  CHECK (f->ops->identity == NULL && f->ops->prefetch == NULL);
  CHECK (f->ops->extent != NULL);
  CHECK_OK (f->ops->extent (f, 100, 1000, &length, &hole));
  CHECK (!hole && length == 1000);
  CHECK_OK (f->ops->extent (f, SIZE + 8192, 1000, &length, &hole));
  CHECK (hole && length == 1000);
  f->ops->close (f);
  memfile_free (mf);
}

int
main (void)
{
  test_capture_log ();
  /* No zero blocks, and every block different. */
  test_fill_pattern (data, SIZE, 7);
  for (size_t i = 0; i < SIZE; i += 4096)
    data[i] |= 1;

  test_random_reads ();
  test_bound ();
  test_errors_not_cached ();
  test_miss_does_not_block_hits ();
  test_threads ();
  test_pass_through ();
  return 0;
}
