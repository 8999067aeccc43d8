/* nbdkit-qed: a read cache in front of a slow read-only file.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Notes on the design.
 *
 * The cache holds aligned blocks of BLOCK_SIZE bytes of the inner
 * file.  64 KiB is QED's default cluster size (and a common one for
 * raw bases read by cluster copies), so a cluster copy fills whole
 * blocks with no waste, while a small read (the header, one L2 table
 * of a QED base) fetches 16 times less than a 1 MiB block would over
 * the network.  A read missing several consecutive blocks fetches
 * them with one inner read, so a large cluster still costs one
 * request.
 *
 * At most cache_size / BLOCK_SIZE blocks are held; each slot's buffer
 * is allocated on first use, so a large cache costs memory only once
 * it has been filled.  Eviction is CLOCK (second chance): a hit sets
 * the slot's referenced bit, and the hand sweeping for a victim clears
 * set bits and takes the first clear one.  It approximates LRU without
 * moving list entries on every hit.
 *
 * Locking: one mutex, lock, guards everything in struct read_cache
 * below it: the slots (their block numbers, bits and buffer contents),
 * the hash chains and the clock hand.  Hits are copied out under it
 * (a memcpy of at most a block per slot, short next to a network
 * read).  The inner read of a miss runs without it, into a private
 * buffer, and the blocks are inserted under it afterwards.  Two
 * threads that miss the same block at once both read it; the second
 * to insert finds it there and keeps the first copy (the inner file is
 * read-only, so both are the same bytes).  A failed inner read inserts
 * nothing, so the next read tries the inner file again.
 *
 * Reads that reach past the inner file's size (as it was when the
 * cache was made) go straight to the inner file, which fails them as
 * it does.
 */

#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qed.h"
#include "qed-net.h"

#define BLOCK_SIZE (64 * 1024)

/* No slot (the end of a hash chain). */
#define NO_SLOT UINT32_MAX

struct slot {
  uint64_t block;               /* block number held; valid when data */
  unsigned char *data;          /* BLOCK_SIZE bytes; NULL: never used */
  uint32_t next;                /* next slot in block's hash chain */
  bool in_use;                  /* holds block */
  bool referenced;              /* hit since the hand last passed */
};

struct read_cache {
  struct qed_file base;         /* first, so a qed_file * converts */
  struct qed_file_ops ops;      /* ours, with the inner file's capabilities */
  struct qed_file *inner;
  uint64_t size;                /* of the inner file */
  uint32_t nslots;
  uint32_t nbuckets;            /* a power of two */

  pthread_mutex_t lock;
  struct slot *slots;
  uint32_t *buckets;            /* first slot of each hash chain */
  uint32_t hand;                /* the clock hand: the next slot to look at */
};

static uint32_t
bucket_of (const struct read_cache *rc, uint64_t block)
{
  /* Fibonacci hashing spreads consecutive blocks over the buckets. */
  return ((block * UINT64_C (0x9e3779b97f4a7c15)) >> 32) & (rc->nbuckets - 1);
}

/* Called with lock held.  The slot holding block, or NO_SLOT. */
static uint32_t
lookup (const struct read_cache *rc, uint64_t block)
{
  uint32_t s;

  for (s = rc->buckets[bucket_of (rc, block)]; s != NO_SLOT;
       s = rc->slots[s].next)
    if (rc->slots[s].block == block)
      return s;
  return NO_SLOT;
}

/* Called with lock held.  Take slot s out of its hash chain. */
static void
unlink_slot (struct read_cache *rc, uint32_t s)
{
  uint32_t *p = &rc->buckets[bucket_of (rc, rc->slots[s].block)];

  while (*p != s)
    p = &rc->slots[*p].next;
  *p = rc->slots[s].next;
  rc->slots[s].in_use = false;
}

/* Called with lock held.  A slot to reuse: the first one the hand
 * finds not referenced since it last passed (or never used).
 */
static uint32_t
victim (struct read_cache *rc)
{
  for (;;) {
    uint32_t s = rc->hand;
    struct slot *sl = &rc->slots[s];

    rc->hand = (rc->hand + 1) % rc->nslots;
    if (!sl->in_use)
      return s;
    if (!sl->referenced)
      return s;
    sl->referenced = false;
  }
}

/* Called with lock held.  Keep a copy of block, whose bytes are at
 * data, unless it is there already.  Without memory for a new buffer
 * the block is simply not kept.
 */
static void
insert (struct read_cache *rc, uint64_t block, const unsigned char *data,
        size_t len)
{
  uint32_t s, b;
  struct slot *sl;

  if (lookup (rc, block) != NO_SLOT)
    return;
  s = victim (rc);
  sl = &rc->slots[s];
  if (sl->data == NULL && (sl->data = malloc (BLOCK_SIZE)) == NULL)
    return;
  if (sl->in_use)
    unlink_slot (rc, s);
  memcpy (sl->data, data, len);
  sl->block = block;
  sl->in_use = true;
  /* Not referenced: a block read once is the first to go, so a long
   * sequential read does not push out blocks that are read again.
   */
  sl->referenced = false;
  b = bucket_of (rc, block);
  sl->next = rc->buckets[b];
  rc->buckets[b] = s;
}

/* Bytes of block in the file (less than a block only for the last). */
static size_t
block_len (const struct read_cache *rc, uint64_t block)
{
  uint64_t start = block * BLOCK_SIZE;

  return rc->size - start < BLOCK_SIZE ? rc->size - start : BLOCK_SIZE;
}

/* The part of [offset, offset + count) inside block, as an offset in
 * the block, an offset in the request, and a length.
 */
static void
overlap (uint64_t block, uint64_t offset, size_t count, size_t *in_block,
         size_t *in_req, size_t *len)
{
  uint64_t start = block * BLOCK_SIZE;
  uint64_t from = offset > start ? offset : start;
  uint64_t to = offset + count < start + BLOCK_SIZE ?
    offset + count : start + BLOCK_SIZE;

  *in_block = from - start;
  *in_req = from - offset;
  *len = to - from;
}

/* Copy the blocks from *block on that are cached into buf, advancing
 * *block past them; then the blocks from there to *miss_end (at most
 * last + 1) are not cached.
 */
static void
copy_hits (struct read_cache *rc, unsigned char *buf, size_t count,
           uint64_t offset, uint64_t *block, uint64_t last,
           uint64_t *miss_end)
{
  size_t in_block, in_req, len;
  uint32_t s;

  pthread_mutex_lock (&rc->lock);
  for (; *block <= last && (s = lookup (rc, *block)) != NO_SLOT; ++*block) {
    overlap (*block, offset, count, &in_block, &in_req, &len);
    memcpy (buf + in_req, rc->slots[s].data + in_block, len);
    rc->slots[s].referenced = true;
  }
  for (*miss_end = *block; *miss_end <= last; ++*miss_end)
    if (lookup (rc, *miss_end) != NO_SLOT)
      break;
  pthread_mutex_unlock (&rc->lock);
}

/* Read blocks [first, end) from the inner file, copy what the request
 * wants of them into buf, and keep them.
 */
static int
fill (struct read_cache *rc, unsigned char *buf, size_t count,
      uint64_t offset, uint64_t first, uint64_t end)
{
  uint64_t start = first * BLOCK_SIZE;
  uint64_t stop = end * BLOCK_SIZE < rc->size ? end * BLOCK_SIZE : rc->size;
  size_t in_block, in_req, len;
  unsigned char *tmp;
  uint64_t b;
  int r;

  if ((tmp = malloc (stop - start)) == NULL)
    return -ENOMEM;
  r = rc->inner->ops->pread (rc->inner, tmp, stop - start, start);
  if (r < 0) {
    free (tmp);
    return r;
  }
  for (b = first; b < end; b++) {
    overlap (b, offset, count, &in_block, &in_req, &len);
    memcpy (buf + in_req, tmp + (b - first) * BLOCK_SIZE + in_block, len);
  }
  pthread_mutex_lock (&rc->lock);
  for (b = first; b < end; b++)
    insert (rc, b, tmp + (b - first) * BLOCK_SIZE, block_len (rc, b));
  pthread_mutex_unlock (&rc->lock);
  free (tmp);
  return 0;
}

static int
cache_pread (struct qed_file *f, void *buf, size_t count, uint64_t offset)
{
  struct read_cache *rc = (struct read_cache *) f;
  uint64_t block, last, miss_end;
  int r;

  if (count == 0 || offset > rc->size || count > rc->size - offset)
    return rc->inner->ops->pread (rc->inner, buf, count, offset);

  block = offset / BLOCK_SIZE;
  last = (offset + count - 1) / BLOCK_SIZE;
  while (block <= last) {
    copy_hits (rc, buf, count, offset, &block, last, &miss_end);
    if (block == miss_end)
      continue;
    if ((r = fill (rc, buf, count, offset, block, miss_end)) < 0)
      return r;
    block = miss_end;
  }
  return 0;
}

static int
cache_get_size (struct qed_file *f, uint64_t *size)
{
  struct read_cache *rc = (struct read_cache *) f;

  return rc->inner->ops->get_size (rc->inner, size);
}

static int
cache_identity (struct qed_file *f, uint64_t id[2])
{
  struct read_cache *rc = (struct read_cache *) f;

  return rc->inner->ops->identity (rc->inner, id);
}

static int
cache_prefetch (struct qed_file *f, uint64_t offset, uint64_t count)
{
  struct read_cache *rc = (struct read_cache *) f;

  return rc->inner->ops->prefetch (rc->inner, offset, count);
}

static int
cache_extent (struct qed_file *f, uint64_t offset, uint64_t count,
              uint64_t *length, bool *hole)
{
  struct read_cache *rc = (struct read_cache *) f;

  return rc->inner->ops->extent (rc->inner, offset, count, length, hole);
}

static void
cache_close (struct qed_file *f)
{
  struct read_cache *rc = (struct read_cache *) f;
  uint32_t s;

  rc->inner->ops->close (rc->inner);
  for (s = 0; s < rc->nslots; s++)
    free (rc->slots[s].data);
  free (rc->slots);
  free (rc->buckets);
  pthread_mutex_destroy (&rc->lock);
  free (rc);
}

int
qed_read_cache_new (struct qed_file *inner, size_t cache_size,
                    struct qed_file **filep)
{
  struct read_cache *rc;
  /* Whole blocks only; past 256 TiB the bound is moot. */
  size_t nslots = cache_size / BLOCK_SIZE < NO_SLOT ?
    cache_size / BLOCK_SIZE : NO_SLOT - 1;
  uint32_t s;
  int r;

  if (nslots == 0) {
    qed_log (QED_LOG_ERROR, "a read cache of %zu bytes is smaller than"
             " one block of the cache (%d bytes)", cache_size, BLOCK_SIZE);
    inner->ops->close (inner);
    return -EINVAL;
  }
  if ((rc = calloc (1, sizeof *rc)) == NULL) {
    inner->ops->close (inner);
    return -ENOMEM;
  }
  rc->inner = inner;
  if ((r = inner->ops->get_size (inner, &rc->size)) < 0)
    goto fail;
  rc->nslots = nslots;
  for (rc->nbuckets = 1; rc->nbuckets < rc->nslots; rc->nbuckets *= 2)
    ;
  rc->slots = calloc (rc->nslots, sizeof *rc->slots);
  rc->buckets = malloc (rc->nbuckets * sizeof *rc->buckets);
  if (rc->slots == NULL || rc->buckets == NULL) {
    r = -ENOMEM;
    goto fail;
  }
  memset (rc->buckets, 0xff, rc->nbuckets * sizeof *rc->buckets);
  for (s = 0; s < rc->nslots; s++)
    rc->slots[s].next = NO_SLOT;
  pthread_mutex_init (&rc->lock, NULL);

  /* What the inner file can do, we can: the capabilities pass through. */
  rc->ops.pread = cache_pread;
  rc->ops.get_size = cache_get_size;
  rc->ops.close = cache_close;
  if (inner->ops->identity)
    rc->ops.identity = cache_identity;
  if (inner->ops->prefetch)
    rc->ops.prefetch = cache_prefetch;
  if (inner->ops->extent)
    rc->ops.extent = cache_extent;
  rc->base.ops = &rc->ops;
  rc->base.writable = 0;
  *filep = &rc->base;
  return 0;

 fail:
  free (rc->slots);
  free (rc->buckets);
  free (rc);
  inner->ops->close (inner);
  return r;
}
