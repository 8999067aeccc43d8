/* nbdkit-qed: which L2 entries this process pointed at new clusters.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * An L2 entry may point past the end the file had at open only if this
 * process linked it there.  Otherwise a corrupt entry pointing past
 * the end, in a slice not yet loaded, would become "valid" once
 * allocations grow the file over the place it points at, and would
 * then share a cluster with the range that was given it.  A slice can
 * be evicted and read again, so what was linked is kept here: a set,
 * by slice, of 512-bit masks of entries.  It costs 72 bytes per slice
 * that received new clusters since open.
 *
 * Called with the table lock held.
 */

#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct new_links_slot {
  uint64_t key;                 /* slice host offset; 0: empty slot */
  uint64_t mask[QED_SLICE_ENTRIES / 64];
};

static size_t
slot_of (const struct new_links *nl, uint64_t key)
{
  size_t i = ((key / QED_SLICE_BYTES) * 0x9e3779b97f4a7c15ull >> 32) &
    (nl->nslots - 1);

  while (nl->slots[i].key != 0 && nl->slots[i].key != key)
    i = (i + 1) & (nl->nslots - 1);
  return i;
}

/* Make room for key, so that new_links_add never fails. */
int
new_links_reserve (struct new_links *nl, uint64_t key)
{
  struct new_links_slot *old = nl->slots;
  size_t i, nold = nl->nslots;

  if (nl->nslots && nl->slots[slot_of (nl, key)].key == key)
    return 0;
  if (nl->count + 1 > nl->nslots / 2) {
    size_t n = nold ? nold * 2 : 64;
    nl->slots = calloc (n, sizeof *nl->slots);
    if (nl->slots == NULL) {
      nl->slots = old;
      return -ENOMEM;
    }
    nl->nslots = n;
    for (i = 0; i < nold; i++)
      if (old[i].key != 0)
        nl->slots[slot_of (nl, old[i].key)] = old[i];
    free (old);
  }
  i = slot_of (nl, key);
  nl->slots[i].key = key;
  nl->count++;
  return 0;
}

void
new_links_add (struct new_links *nl, uint64_t key, unsigned index,
               unsigned count)
{
  struct new_links_slot *s = &nl->slots[slot_of (nl, key)];

  for (unsigned i = index; i < index + count; i++)
    s->mask[i / 64] |= 1ull << (i % 64);
}

bool
new_links_has (const struct new_links *nl, uint64_t key, unsigned index)
{
  const struct new_links_slot *s;

  if (nl->nslots == 0)
    return false;
  s = &nl->slots[slot_of (nl, key)];
  return s->key == key && (s->mask[index / 64] >> (index % 64)) & 1;
}

void
new_links_free (struct new_links *nl)
{
  free (nl->slots);
  memset (nl, 0, sizeof *nl);
}
