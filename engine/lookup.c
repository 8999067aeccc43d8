/* nbdkit-qed: finding what a range of the virtual disk maps to.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "internal.h"

int
check_range (const struct qed_image *img, uint64_t count, uint64_t offset,
             const char *what)
{
  if (img->header_only) {
    qed_error ("%s: %s refused: the image was opened for its header only",
               image_name (img), what);
    return -EINVAL;
  }
  if (offset > img->header.image_size ||
      count > img->header.image_size - offset) {
    qed_error ("%s: %s beyond the end of the disk", image_name (img), what);
    return -EINVAL;
  }
  return 0;
}

/* Called with the table lock held, which is dropped and retaken while
 * the slice is read.
 */
int
slice_get (struct qed_image *img, uint64_t key, bool create_zeroed,
           struct l2_slice **sp)
{
  struct l2_slice *s;
  int r;

  table_assert_held (img);
  for (;;) {
    s = l2_cache_find (&img->cache, key);
    if (s == NULL)
      break;
    if (s->state == SLICE_READY) {
      s->refs++;
      *sp = s;
      return 0;
    }
    /* Another thread is reading it; it may also fail and vanish. */
    table_wait (img, &img->slice_loaded);
  }

  s = l2_cache_insert (&img->cache, key);
  if (s == NULL)
    return -ENOMEM;
  if (create_zeroed) {
    memset (s->entries, 0, sizeof s->entries);
    s->state = SLICE_READY;
    *sp = s;
    return 0;
  }

  table_unlock (img);
  r = table_read_slice (img, s);
  table_lock (img);
  if (r < 0)
    l2_cache_remove (&img->cache, s);
  else {
    slice_validate (img, s);
    s->state = SLICE_READY;
    *sp = s;
  }
  pthread_cond_broadcast (&img->slice_loaded);
  return r;
}

/* Called with the table lock held. */
void
slice_put (struct qed_image *img, struct l2_slice *s)
{
  table_assert_held (img);
  assert (s->refs > 0);
  s->refs--;
}

void
run_release (struct qed_image *img, struct run *run)
{
  if (run->slice) {
    slice_put (img, run->slice);
    run->slice = NULL;
  }
}

static enum run_kind
classify (const struct l2_slice *s, unsigned i)
{
  if (l2_slice_is_bad (s, i))
    return RUN_BAD;
  if (s->entries[i] == QED_ENTRY_UNALLOCATED)
    return RUN_UNALLOC;
  if (s->entries[i] == QED_ENTRY_ZERO)
    return RUN_ZERO;
  return RUN_DATA;
}

/* Say so the first time a request touches an invalid entry; lookups
 * holding only the read side of the table lock race here, hence the
 * atomic exchange.
 */
static void
report_bad (struct qed_image *img, const struct run *run, uint64_t entry,
            const char *table)
{
  if (__atomic_exchange_n (&img->reported_bad, true, __ATOMIC_RELAXED))
    return;
  qed_error ("%s: invalid %s entry 0x%" PRIx64 " maps virtual offset %"
             PRIu64 "; requests touching it fail with EIO (further invalid"
             " entries are not reported)", image_name (img), table, entry,
             run->offset);
}

/* The first half of a lookup, with either side of the table lock:
 * bound the run by its L2 slice and read its L1 entry.  Returns the
 * host offset of the slice holding the run's entries, or 0 when the L1
 * entry alone says what the run is (unallocated, or bad).
 */
static uint64_t
run_start (struct qed_image *img, uint64_t offset, uint64_t length,
           struct run *run)
{
  uint64_t vc = offset >> img->cluster_bits;
  uint64_t l2i = vc & ((UINT64_C (1) << img->table_bits) - 1);
  unsigned idx = l2i % QED_SLICE_ENTRIES;
  uint64_t slice_end = (vc + (QED_SLICE_ENTRIES - idx)) << img->cluster_bits;
  uint64_t l1e;

  if (length > slice_end - offset)
    length = slice_end - offset;
  run->offset = offset;
  run->length = length;
  run->l1_index = vc >> img->table_bits;
  run->slice = NULL;
  run->index = idx;
  run->host = 0;

  if (l1_entry_is_bad (img, run->l1_index)) {
    run->kind = RUN_BAD;
    report_bad (img, run, img->l1[run->l1_index], "L1");
    return 0;
  }
  l1e = img->l1[run->l1_index];
  if (l1e == 0) {
    run->kind = RUN_UNALLOC;
    return 0;
  }
  return l1e + (l2i - idx) * 8;
}

/* The second half: the run is as long as the entries of slice s from
 * run->index on map alike (contiguous data clusters, or the same kind).
 */
static void
run_finish (struct qed_image *img, const struct l2_slice *s, struct run *run)
{
  unsigned idx = run->index;
  uint64_t vc = run->offset >> img->cluster_bits;
  uint64_t need, n;
  enum run_kind kind;

  kind = classify (s, idx);
  need = (cluster_offset (img, run->offset) + run->length
          + img->cluster_size - 1) >> img->cluster_bits;
  for (n = 1; n < need; n++) {
    if (classify (s, idx + n) != kind)
      break;
    if (kind == RUN_DATA &&
        s->entries[idx + n] != s->entries[idx] + n * img->cluster_size)
      break;
  }
  run->kind = kind;
  if (n < need)
    run->length = ((vc + n) << img->cluster_bits) - run->offset;
  if (kind == RUN_DATA)
    run->host = s->entries[idx] + cluster_offset (img, run->offset);
  else if (kind == RUN_BAD)
    report_bad (img, run, s->entries[idx], "L2");
}

/* Called with the table lock held, which is dropped and retaken while
 * an L2 slice is read, before any entry is looked at.  Runs end at the
 * end of an L2 slice.
 */
int
lookup_run (struct qed_image *img, uint64_t offset, uint64_t length,
            struct run *run)
{
  uint64_t key;
  int r;

  table_assert_held (img);
  key = run_start (img, offset, length, run);
  if (key == 0)
    return 0;
  r = slice_get (img, key, false, &run->slice);
  if (r < 0)
    return r;
  run_finish (img, run->slice, run);
  return 0;
}

/* The lookup with the read side of the table lock alone (see the notes
 * in internal.h), for callers that act on the run after it, as
 * lookup_run_taking_lock.  False when it would need to load a slice.
 */
bool
lookup_run_shared (struct qed_image *img, uint64_t offset, uint64_t length,
                   struct run *run)
{
  struct l2_slice *s;
  uint64_t key;
  bool found = true;

  pthread_rwlock_rdlock (&img->lookup_lock);
  key = run_start (img, offset, length, run);
  if (key != 0) {
    s = l2_cache_find (&img->cache, key);
    found = s && s->state == SLICE_READY;
    if (found)
      run_finish (img, s, run);
  }
  pthread_rwlock_unlock (&img->lookup_lock);
  return found;
}

/* Takes the table lock for the lookup (only its read side when the
 * slice is in the cache), for callers that act on the run after it
 * (see the notes in internal.h: a data cluster, once mapped, stays
 * mapped).  The run holds no slice.
 */
int
lookup_run_taking_lock (struct qed_image *img, uint64_t offset,
                        uint64_t length, struct run *run)
{
  int r;

  if (lookup_run_shared (img, offset, length, run))
    return 0;
  table_lock (img);
  r = lookup_run (img, offset, length, run);
  run_release (img, run);
  table_unlock (img);
  return r;
}
