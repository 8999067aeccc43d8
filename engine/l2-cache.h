/* nbdkit-qed: a bounded, reference-counted cache of L2 table slices.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * L2 tables are cached in slices of QED_SLICE_BYTES, so a lookup loads
 * 4 KiB whatever the table size (a table can be 1 GiB) and the budget
 * is a number of slices.  A slice is found by its host offset.
 *
 * Every function here is called with the image's table lock held; the
 * cache has no lock of its own.  l2_cache_find is also called with the
 * read side of the table lock only (see internal.h): it changes nothing
 * but the slice's used flag, atomically.
 */

#ifndef QED_L2_CACHE_H
#define QED_L2_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QED_SLICE_BYTES 4096u
#define QED_SLICE_ENTRIES (QED_SLICE_BYTES / 8)

enum slice_state {
  SLICE_LOADING,                /* being read; wait on the image's cond */
  SLICE_READY,
};

struct l2_slice {
  /* What a lookup touches first, together. */
  uint64_t key;                 /* host offset of the slice */
  struct l2_slice *hash_next;
  enum slice_state state;
  unsigned refs;                /* referenced slices are never evicted */
  bool used;                    /* hit since it was last passed over */
  bool has_bad;
  struct l2_slice *lru_prev, *lru_next; /* most recent at lru head */
  uint64_t bad[QED_SLICE_ENTRIES / 64];
  /* Entries in CPU byte order, exactly as on disk (a bad entry keeps
   * its value); bad marks the entries found invalid when loaded.
   */
  uint64_t entries[QED_SLICE_ENTRIES];
};

struct l2_cache {
  struct l2_slice **buckets;
  size_t nbuckets;              /* power of two */
  size_t count, max;
  struct l2_slice lru;          /* list head */
};

int l2_cache_init (struct l2_cache *c, size_t budget_bytes);
void l2_cache_free (struct l2_cache *c);

/* Find a slice and mark it used; NULL if absent.  Does not take a
 * reference.  A hit only sets a flag: eviction gives used slices a
 * second chance (moving them to the head) instead of every hit moving
 * its slice.
 */
struct l2_slice *l2_cache_find (struct l2_cache *c, uint64_t key);

/* Add a slice for key (which must be absent) in state SLICE_LOADING
 * with one reference, evicting the least recently used unreferenced
 * slice when the cache is full.  When every slice is referenced the
 * cache grows past its budget until references are dropped.  NULL
 * only when out of memory.
 */
struct l2_slice *l2_cache_insert (struct l2_cache *c, uint64_t key);

/* Drop a slice that failed to load (it must have one reference). */
void l2_cache_remove (struct l2_cache *c, struct l2_slice *s);

/* Drop every unreferenced slice (after a repair rewrote tables). */
void l2_cache_drop_all (struct l2_cache *c);

static inline bool
l2_slice_is_bad (const struct l2_slice *s, unsigned i)
{
  return s->has_bad && (s->bad[i / 64] >> (i % 64)) & 1;
}

#endif /* QED_L2_CACHE_H */
