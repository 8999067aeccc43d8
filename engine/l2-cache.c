/* nbdkit-qed: a bounded, reference-counted cache of L2 table slices.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <assert.h>
#include <stdlib.h>

#include "l2-cache.h"

static size_t
bucket_of (const struct l2_cache *c, uint64_t key)
{
  /* Keys are multiples of QED_SLICE_BYTES; mix the higher bits in. */
  uint64_t h = (key / QED_SLICE_BYTES) * 0x9e3779b97f4a7c15ull;
  return (h >> 32) & (c->nbuckets - 1);
}

static void
lru_unlink (struct l2_slice *s)
{
  s->lru_prev->lru_next = s->lru_next;
  s->lru_next->lru_prev = s->lru_prev;
}

static void
lru_push_front (struct l2_cache *c, struct l2_slice *s)
{
  s->lru_next = c->lru.lru_next;
  s->lru_prev = &c->lru;
  c->lru.lru_next->lru_prev = s;
  c->lru.lru_next = s;
}

int
l2_cache_init (struct l2_cache *c, size_t budget_bytes)
{
  size_t max = budget_bytes / sizeof (struct l2_slice);

  if (max < 16)
    max = 16;
  c->max = max;
  c->count = 0;
  for (c->nbuckets = 16; c->nbuckets < max; c->nbuckets *= 2)
    ;
  c->buckets = calloc (c->nbuckets, sizeof *c->buckets);
  if (c->buckets == NULL)
    return -1;
  c->lru.lru_next = c->lru.lru_prev = &c->lru;
  return 0;
}

static void
hash_remove (struct l2_cache *c, struct l2_slice *s)
{
  struct l2_slice **pp = &c->buckets[bucket_of (c, s->key)];

  while (*pp != s)
    pp = &(*pp)->hash_next;
  *pp = s->hash_next;
}

static void
drop (struct l2_cache *c, struct l2_slice *s)
{
  hash_remove (c, s);
  lru_unlink (s);
  c->count--;
  free (s);
}

void
l2_cache_free (struct l2_cache *c)
{
  while (c->lru.lru_next != &c->lru)
    drop (c, c->lru.lru_next);
  free (c->buckets);
  c->buckets = NULL;
}

struct l2_slice *
l2_cache_find (struct l2_cache *c, uint64_t key)
{
  struct l2_slice *s;

  for (s = c->buckets[bucket_of (c, key)]; s; s = s->hash_next)
    if (s->key == key) {
      /* Lookups holding the read side of the table lock set it too. */
      if (!__atomic_load_n (&s->used, __ATOMIC_RELAXED))
        __atomic_store_n (&s->used, true, __ATOMIC_RELAXED);
      return s;
    }
  return NULL;
}

struct l2_slice *
l2_cache_insert (struct l2_cache *c, uint64_t key)
{
  struct l2_slice *s = NULL, *v, *prev;

  /* Evict least recently used slices nobody holds until there is room
   * (after the cache grew past its budget, more than one), reusing the
   * first.  A slice used since it was last passed over goes back to
   * the head instead; a second sweep finds them unused if the first
   * sweep found nothing else.
   */
  for (int sweep = 0; sweep < 2 && c->count >= c->max; sweep++) {
    struct l2_slice *first_moved = NULL;

    for (v = c->lru.lru_prev; c->count >= c->max && v != &c->lru &&
           v != first_moved; v = prev) {
      prev = v->lru_prev;
      if (v->refs != 0 || v->state != SLICE_READY)
        continue;
      if (v->used) {
        v->used = false;
        lru_unlink (v);
        lru_push_front (c, v);
        if (first_moved == NULL)
          first_moved = v;
        continue;
      }
      hash_remove (c, v);
      lru_unlink (v);
      c->count--;
      if (s == NULL)
        s = v;
      else
        free (v);
    }
  }
  if (s == NULL) {
    s = malloc (sizeof *s);
    if (s == NULL)
      return NULL;
  }
  s->key = key;
  s->state = SLICE_LOADING;
  s->refs = 1;
  s->used = false;
  s->has_bad = false;
  s->hash_next = c->buckets[bucket_of (c, key)];
  c->buckets[bucket_of (c, key)] = s;
  lru_push_front (c, s);
  c->count++;
  return s;
}

void
l2_cache_remove (struct l2_cache *c, struct l2_slice *s)
{
  assert (s->refs == 1);
  drop (c, s);
}

void
l2_cache_drop_all (struct l2_cache *c)
{
  struct l2_slice *s, *prev;

  for (s = c->lru.lru_prev; s != &c->lru; s = prev) {
    prev = s->lru_prev;
    if (s->refs == 0)
      drop (c, s);
  }
}
