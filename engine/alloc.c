/* nbdkit-qed: allocating clusters and linking them into the tables.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * See "Notes on the design" in internal.h for how reservations,
 * links and the committer fit together.
 *
 * The commit pipeline
 * -------------------
 * An allocation (struct alloc) lives on the requester's stack and goes
 * through these states (enum alloc_state):
 *
 *   RESERVED --data written--> QUEUED --a committer takes the queue-->
 *   COMMITTING --L2 entries written--> LINKED --applied in memory--> DONE
 *
 *   RESERVED   alloc_reserve, under the table lock, put it on
 *              img->inflight (writers of its clusters wait for it) and
 *              reserved its clusters (and a new L2 table if needed) at
 *              alloc_end.  The requester writes the data, no lock.
 *   QUEUED     alloc_commit put it on img->queue.  A data write that
 *              failed skips to DONE instead: its clusters were never
 *              linked, so they are given back (give_back) once nothing
 *              else is reserved above them; below a live reservation
 *              they stay leaked, as their bytes are not zeros any more.
 *   COMMITTING The thread that takes the commit token takes the whole
 *              queue as a batch, extends the file if needed (under the
 *              lock), then writes without the lock: NEED_CHECK or the
 *              ordering flush, the L2 entries slice by slice, then the
 *              L1 entries of new tables.
 *   LINKED     Its L2 entries are on disk.  A failure before that
 *              leaves it COMMITTING with ret set.
 *   DONE       apply_batch, under the lock, copied the entries of
 *              LINKED allocations into the cached slices, took it off
 *              img->inflight and woke its requester, which returns ret
 *              (a failure of the L1 entry of its new table too).
 *
 * A new L2 table (struct pending_table, on img->pending) goes through
 * enum table_state alongside the first allocations that use it:
 *
 *   RESERVED --zeros in place--> PREPARED --L1 entry written-->
 *   L1_WRITTEN --L1 entry in memory--> LINKED
 *
 *   RESERVED   its space was reserved with the allocation.
 *   PREPARED   the committer made its space read as zeros (writing
 *              them where the file had bytes at open), before the
 *              first entries were written into it.
 *   L1_WRITTEN the committer wrote the L1 entry, after the table's
 *              entries (and a flush where ordering needs one).
 *   LINKED     apply_batch set the L1 entry in memory; the table is
 *              freed when its last allocation is DONE.
 * A table whose entries or L1 entry failed stays where it was, and the
 * next allocation that needs it tries again from there.
 */

#include <config.h>

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static struct pending_table *
pending_find (struct qed_image *img, uint32_t l1_index)
{
  table_assert_held (img);
  for (struct pending_table *pt = img->pending; pt; pt = pt->next)
    if (pt->l1_index == l1_index && img->l1[l1_index] == 0)
      return pt;
  return NULL;
}

/* The slice of a new L2 table, created zeroed on first use and pinned
 * in the cache by the table until the table is linked.
 */
static int
pending_slice (struct qed_image *img, struct pending_table *pt,
               uint64_t key, struct l2_slice **sp)
{
  struct l2_slice *s = l2_cache_find (&img->cache, key);
  struct l2_slice **slices;

  if (s) {
    s->refs++;
    *sp = s;
    return 0;
  }
  slices = realloc (pt->slices, (pt->nslices + 1) * sizeof *slices);
  if (slices == NULL)
    return -ENOMEM;
  pt->slices = slices;
  if (slice_get (img, key, true, &s) < 0)
    return -ENOMEM;
  s->refs++;                    /* the table's pin */
  pt->slices[pt->nslices++] = s;
  *sp = s;
  return 0;
}

static bool drop_unused_table (struct qed_image *img, uint64_t *end);

/* A reservation failed (out of memory) after reserving a new table:
 * if nothing else uses the table, give its space back, or it would
 * stay a hole below the next reservations (a leak in a clean image).
 */
static void
drop_failed_table (struct qed_image *img)
{
  uint64_t end = img->alloc_end;

  if (drop_unused_table (img, &end))
    img->alloc_end = end;
}

/* Called with the table lock held; run is RUN_UNALLOC or RUN_ZERO. */
int
alloc_reserve (struct qed_image *img, struct run *run, bool zero_clusters,
               struct alloc *a)
{
  uint64_t first = run->offset >> img->cluster_bits;
  uint64_t last = (run->offset + run->length - 1) >> img->cluster_bits;
  struct pending_table *pt = NULL;
  int r;

  table_assert_held (img);
  /* A file that cannot change size has no room for new clusters or
   * tables (zero clusters in an existing table need none).
   */
  if (img->file->ops->truncate == NULL &&
      (!zero_clusters || run->slice == NULL)) {
    qed_error ("%s: cannot allocate clusters: the file cannot grow",
               image_name (img));
    return -ENOSPC;
  }

  /* Another request allocating the first cluster: wait for it.  One
   * allocating a later cluster: stop short of it.
   */
  for (struct alloc *f = img->inflight; f; f = f->next_inflight) {
    uint64_t f_last = f->first + f->count - 1;
    if (f->first <= first && first <= f_last)
      return -EAGAIN;
    if (f->first > first && f->first <= last)
      last = f->first - 1;
  }

  /* Files end below 2^63: say ENOSPC where the file cannot grow (a
   * new L2 table may be needed too).
   */
  if (img->alloc_end > (uint64_t) INT64_MAX -
      (img->table_bytes + ((last - first + 1) << img->cluster_bits))) {
    qed_error ("%s: the image file cannot grow beyond 0x%" PRIx64,
               image_name (img), img->alloc_end);
    return -ENOSPC;
  }

  memset (a, 0, sizeof *a);
  a->first = first;
  a->count = last - first + 1;
  a->was = run->kind;
  a->l1_index = run->l1_index;
  a->index = run->index;

  if (run->slice == NULL) {     /* no L2 table yet */
    uint64_t l2i = first & ((UINT64_C (1) << img->table_bits) - 1);

    pt = pending_find (img, run->l1_index);
    if (pt == NULL) {
      pt = calloc (1, sizeof *pt);
      if (pt == NULL)
        return -ENOMEM;
      pt->l1_index = run->l1_index;
      pt->host = img->alloc_end;
      img->alloc_end += img->table_bytes;
      pt->next = img->pending;
      img->pending = pt;
    }
    r = pending_slice (img, pt, pt->host + (l2i - a->index) * 8, &a->slice);
    if (r < 0) {
      drop_failed_table (img);
      return r;
    }
    a->table = pt;
    pt->users++;
  }
  else {
    a->slice = run->slice;      /* the reference moves to the allocation */
    run->slice = NULL;
  }

  if (zero_clusters)
    a->host = QED_ENTRY_ZERO;
  else if ((r = new_links_reserve (&img->new_links, a->slice->key)) < 0) {
    slice_put (img, a->slice);
    if (a->table) {
      a->table->users--;
      drop_failed_table (img);
    }
    return r;
  }
  else {
    a->host = img->alloc_end;
    img->alloc_end += (uint64_t) a->count << img->cluster_bits;
    a->needs_flush = img->backing != NULL || a->host < img->sparse_from;
  }

  if (run->length > ((last + 1) << img->cluster_bits) - run->offset)
    run->length = ((last + 1) << img->cluster_bits) - run->offset;
  a->next_inflight = img->inflight;
  img->inflight = a;
  return 0;
}

uint64_t
alloc_host_of (const struct qed_image *img, const struct alloc *a,
               uint64_t offset)
{
  return a->host + (offset - (a->first << img->cluster_bits));
}

static bool
table_is_new (const struct alloc *a)
{
  return a->table != NULL && a->table->state != TABLE_LINKED;
}

/* Make a new table read as zeros: where the file did not reach at
 * open it does (the file was extended over it); before, write them.
 */
static int
prepare_table (struct qed_image *img, struct pending_table *pt)
{
  uint64_t end = pt->host + img->table_bytes;
  int r = 0;

  if (pt->host < img->sparse_from) {
    uint64_t n = (end < img->sparse_from ? end : img->sparse_from) - pt->host;
    r = write_zeros (img, pt->host, n);
  }
  if (r == 0)
    pt->state = TABLE_PREPARED;
  return r;
}

/* How far ahead of alloc_end the file grows (see "Notes on the
 * design" in internal.h); rounded up to a whole cluster.
 */
#define GROW_STEP (UINT64_C (1) << 20)

/* Called with the table lock held (no reservation can grow alloc_end
 * meanwhile): make sure the file covers every cluster and table the
 * batch links.  Most often the file already reaches that far (it grew
 * ahead, or the data writes did); otherwise extend it past the end of
 * every reservation, as a shorter size could cut data that a request
 * still in flight wrote past the batch, to the next multiple of
 * GROW_STEP while NEED_CHECK is set, so that the next reservations need
 * no ftruncate and their data writes no larger file.
 */
static int
extend_file (struct qed_image *img, const struct alloc *batch)
{
  uint64_t step = img->cluster_size, needed = 0, size;
  int r;

  table_assert_held (img);
  token_assert_held (img);
  for (const struct alloc *a = batch; a; a = a->next_queued) {
    if (a->written_end > img->file_end)
      img->file_end = a->written_end;
    if (a->host != QED_ENTRY_ZERO) {
      uint64_t end = a->host + ((uint64_t) a->count << img->cluster_bits);
      if (end > needed)
        needed = end;
    }
    if (table_is_new (a) && a->table->host + img->table_bytes > needed)
      needed = a->table->host + img->table_bytes;
  }
  if (needed <= img->file_end)
    return 0;
  /* Only while NEED_CHECK is set on disk, so that after a crash the
   * next writable open cuts the tail (a backing file's ordering
   * flushes leave it clear: there the file grows by clusters).
   */
  if ((img->header.features & QED_F_NEED_CHECK) && GROW_STEP > step)
    step = GROW_STEP;
  /* alloc_end is below 2^63 (alloc_reserve), and so is this. */
  size = (img->alloc_end + step - 1) & ~(step - 1);
  r = img->file->ops->truncate (img->file, size);
  if (r < 0 && size > img->alloc_end) {
    size = img->alloc_end;      /* a file size limit: no step ahead */
    r = img->file->ops->truncate (img->file, size);
  }
  if (r < 0) {
    qed_error ("%s: extending the file to 0x%" PRIx64 ": %s",
               image_name (img), size, strerror (-r));
    return r;
  }
  img->file_end = size;
  return 0;
}

/* Where the file may end: the clusters reserved, and the bytes it had
 * at open.
 */
static uint64_t
tail_start (const struct qed_image *img)
{
  return img->alloc_end > img->sparse_from ? img->alloc_end
    : img->sparse_from;
}

bool
has_grown_tail (const struct qed_image *img)
{
  return img->file_end > tail_start (img);
}

void
trim_grown_tail (struct qed_image *img)
{
  uint64_t keep = tail_start (img);
  int r;

  table_assert_held (img);
  token_assert_held (img);
  if (img->file_end <= keep)
    return;
  r = img->file->ops->truncate (img->file, keep);
  if (r < 0) {
    /* Zeros no entry references: a leak for the next check to cut. */
    qed_debug ("%s: cutting the file back to 0x%" PRIx64 ": %s",
               image_name (img), keep, strerror (-r));
    return;
  }
  img->file_end = keep;
}

void
trim_grown_tail_alone (struct qed_image *img)
{
  table_lock (img);
  trim_grown_tail (img);
  table_unlock (img);
}

/* Write one slice's share of a batch: the entries from the lowest to
 * the highest one changed, in one write.
 */
static void
write_slice_links (struct qed_image *img, struct alloc *batch,
                   struct l2_slice *s)
{
  uint64_t entries[QED_SLICE_ENTRIES];
  unsigned lo = QED_SLICE_ENTRIES, hi = 0;
  struct pending_table *pt = NULL;
  int r = 0;

  for (struct alloc *a = batch; a; a = a->next_queued)
    if (a->slice == s) {
      assert (a->state == ALLOC_COMMITTING);
      if (a->index < lo)
        lo = a->index;
      if (a->index + a->count > hi)
        hi = a->index + a->count;
      if (table_is_new (a))
        pt = a->table;
    }

  if (lo >= hi)                 /* cannot happen: a is in the batch */
    return;
  memcpy (entries + lo, s->entries + lo, (hi - lo) * 8);
  for (struct alloc *a = batch; a; a = a->next_queued)
    if (a->slice == s)
      for (unsigned i = 0; i < a->count; i++)
        entries[a->index + i] = a->host == QED_ENTRY_ZERO ? QED_ENTRY_ZERO
          : a->host + ((uint64_t) i << img->cluster_bits);

  if (pt && pt->state == TABLE_RESERVED)
    r = prepare_table (img, pt);
  if (r == 0)
    r = table_write_entries (img, s->key + lo * 8, entries + lo, hi - lo);
  for (struct alloc *a = batch; a; a = a->next_queued)
    if (a->slice == s) {
      if (r == 0)               /* its requester polls it: atomic */
        __atomic_store_n (&a->state, ALLOC_LINKED, __ATOMIC_RELAXED);
      a->ret = r;
    }
}

/* Point the L1 entries at the batch's new tables, after the tables. */
static void
link_new_tables (struct qed_image *img, struct alloc *batch)
{
  bool ordered = false, any = false;
  int flush_r = 0;

  for (struct alloc *a = batch; a; a = a->next_queued)
    if (table_is_new (a) && a->state == ALLOC_LINKED) {
      any = true;
      if (img->backing || a->table->host < img->sparse_from)
        ordered = true;
    }
  if (!any)
    return;
  if (ordered)
    flush_r = img->file->ops->flush (img->file);

  for (struct alloc *a = batch; a; a = a->next_queued) {
    struct pending_table *pt = a->table;
    bool first = true;
    uint64_t le;
    int r;

    if (!table_is_new (a) || a->state != ALLOC_LINKED)
      continue;
    for (struct alloc *b = batch; b != a; b = b->next_queued)
      if (b->table == pt && b->state == ALLOC_LINKED)
        first = false;
    if (!first)
      continue;

    r = flush_r;
    if (r == 0) {
      le = htole64 (pt->host);
      r = img->file->ops->pwrite (img->file, &le, 8,
                                  img->header.l1_table_offset +
                                  (uint64_t) pt->l1_index * 8);
      if (r < 0)
        qed_error ("%s: writing L1 entry %" PRIu32 ": %s",
                   image_name (img), pt->l1_index, strerror (-r));
    }
    if (r == 0)
      pt->state = TABLE_L1_WRITTEN;
    else
      for (struct alloc *b = batch; b; b = b->next_queued)
        if (b->table == pt)
          b->ret = r;
  }
}

/* The committer's work, without the table lock; r is what extending
 * the file returned.
 */
static void
commit_batch (struct qed_image *img, struct alloc *batch, int r)
{
  bool allocates = false, ordered = false;

  table_assert_not_held (img);
  token_assert_held (img);
  for (struct alloc *a = batch; a; a = a->next_queued) {
    if (a->host != QED_ENTRY_ZERO || table_is_new (a))
      allocates = true;
    if (a->needs_flush)
      ordered = true;
  }
  if (r == 0 && allocates && img->backing == NULL)
    r = need_check_set (img);
  if (r == 0 && ordered)
    r = img->file->ops->flush (img->file);
  if (r < 0) {
    for (struct alloc *a = batch; a; a = a->next_queued)
      a->ret = r;
    return;
  }

  for (struct alloc *a = batch; a; a = a->next_queued) {
    bool first_of_slice = true;
    for (struct alloc *b = batch; b != a; b = b->next_queued)
      if (b->slice == a->slice)
        first_of_slice = false;
    if (first_of_slice)
      write_slice_links (img, batch, a->slice);
  }
  link_new_tables (img, batch);
}

/* Called with the table lock held: the allocation is over. */
static void
alloc_finish (struct qed_image *img, struct alloc *a)
{
  struct alloc **pp = &img->inflight;
  struct pending_table *pt = a->table;

  table_assert_held (img);
  while (*pp != a)
    pp = &(*pp)->next_inflight;
  *pp = a->next_inflight;
  slice_put (img, a->slice);

  if (pt && --pt->users == 0 && pt->state == TABLE_LINKED) {
    struct pending_table **tp = &img->pending;
    while (*tp != pt)
      tp = &(*tp)->next;
    *tp = pt->next;
    free (pt->slices);
    free (pt);
  }
  a->state = ALLOC_DONE;
}

/* Called with the table lock held, still holding the commit token:
 * make the batch visible in memory.
 */
static void
apply_batch (struct qed_image *img, struct alloc *batch)
{
  bool allocated = false;
  struct alloc *next;

  table_assert_held (img);
  token_assert_held (img);
  for (struct alloc *a = batch; a; a = a->next_queued) {
    struct pending_table *pt = a->table;

    if (a->state == ALLOC_LINKED)
      for (unsigned i = 0; i < a->count; i++)
        a->slice->entries[a->index + i] = a->host == QED_ENTRY_ZERO
          ? QED_ENTRY_ZERO : a->host + ((uint64_t) i << img->cluster_bits);
    if (a->host != QED_ENTRY_ZERO) {
      allocated = true;
      /* Also what may be on disk after a failed write: the entries
       * are valid either way, the clusters being ours.
       */
      new_links_add (&img->new_links, a->slice->key, a->index, a->count);
    }

    if (pt && pt->state == TABLE_L1_WRITTEN) {
      img->l1[pt->l1_index] = pt->host;
      tables_index_add (img, pt->host);
      for (size_t i = 0; i < pt->nslices; i++)
        slice_put (img, pt->slices[i]);
      pt->nslices = 0;
      pt->state = TABLE_LINKED;
    }
  }
  for (struct alloc *a = batch; a; a = next) {
    next = a->next_queued;
    alloc_finish (img, a);
  }
  if (allocated)
    img->last_alloc_ns = now_ns ();
}

/* A new table that no allocation uses any more and nothing was written
 * to, ending at *end, goes too: its space and its zeroed slices.
 */
static bool
drop_unused_table (struct qed_image *img, uint64_t *end)
{
  for (struct pending_table **tp = &img->pending; *tp; tp = &(*tp)->next) {
    struct pending_table *pt = *tp;

    if (pt->users == 0 && pt->state == TABLE_RESERVED &&
        pt->host + img->table_bytes == *end) {
      for (size_t i = 0; i < pt->nslices; i++)
        l2_cache_remove (&img->cache, pt->slices[i]);
      *end = pt->host;
      *tp = pt->next;
      free (pt->slices);
      free (pt);
      return true;
    }
  }
  return false;
}

/* Called with the table lock held: the data writes into a's clusters
 * failed (they are not linked, and never will be).  Give back every
 * failed reservation at the end of what is reserved, cutting the file
 * back to where it was, so that a run of failures (a full disk) leaves
 * no leaked clusters.  The file is cut under the lock for the reason
 * extend_file extends it under the lock.
 */
static void
give_back (struct qed_image *img, const struct alloc *a)
{
  struct host_range *failed;
  uint64_t end = img->alloc_end, keep;
  bool found;
  int r;

  table_assert_held (img);
  if (a->host != QED_ENTRY_ZERO) {
    uint64_t a_end = a->host + ((uint64_t) a->count << img->cluster_bits);

    /* At the end (always, without concurrent allocations) it goes at
     * once, unrecorded: out of memory, it must not be leaked.
     */
    if (a_end == end)
      end = a->host;
    else if ((failed = realloc (img->failed, (img->nfailed + 1)
                                * sizeof *failed)) != NULL) {
      img->failed = failed;
      failed[img->nfailed].start = a->host;
      failed[img->nfailed++].end = a_end;
    }
    /* else leaked: the next check finds it.  Tables below still go. */
  }

  do {
    found = false;
    for (size_t i = 0; i < img->nfailed; i++)
      if (img->failed[i].end == end) {
        end = img->failed[i].start;
        img->failed[i] = img->failed[--img->nfailed];
        found = true;
      }
    found |= drop_unused_table (img, &end);
  } while (found);
  if (end == img->alloc_end)
    return;

  /* Never below the bytes the file had at open. */
  keep = end > img->sparse_from ? end : img->sparse_from;
  r = img->file->ops->truncate (img->file, keep);
  if (r < 0) {
    qed_debug ("%s: cutting back failed allocations to 0x%" PRIx64 ": %s",
               image_name (img), keep, strerror (-r));
    return;                     /* leaked (the ranges are forgotten) */
  }
  qed_debug ("%s: gave back %" PRIu64 " bytes of failed allocations",
             image_name (img), img->alloc_end - end);
  img->alloc_end = end;
  if (img->file_end > keep)
    img->file_end = keep;
}

/* With the token held, no lock: clear the entries past the end (see
 * "Entries past the end" in internal.h) and say so.
 */
static int
clear_past_end_logged (struct qed_image *img)
{
  uint64_t n = 0;
  int r = clear_entries_past_end (img, &n);

  if (r < 0)
    qed_error ("%s: cannot clear the table entries that point past the"
               " end of the file: %s", image_name (img), strerror (-r));
  else if (n > 0)
    qed_notice ("%s: %" PRIu64 " table %s past the end of the file;"
                " cleared before the file grows", image_name (img), n,
                qed_plural (n, "entry points", "entries point"));
  return r;
}

int
past_end_clear_now (struct qed_image *img)
{
  int r;

  token_assert_held (img);
  if (img->past_end == PAST_END_CLEAR)
    return 0;
  if ((r = clear_past_end_logged (img)) < 0)
    return r;
  table_lock (img);
  forget_entries_past_end (img);
  img->past_end = PAST_END_CLEAR;
  table_unlock (img);
  return 0;
}

int
alloc_may_grow (struct qed_image *img)
{
  int r;

  table_assert_held (img);
  switch (img->past_end) {
  case PAST_END_CLEAR:
    return 0;
  case PAST_END_CLEARING:
    /* Its thread holds the token until it is done. */
    table_wait (img, &img->commit_done);
    return 1;
  case PAST_END_UNCHECKED:
    break;
  }
  token_take (img);
  if (img->past_end != PAST_END_UNCHECKED) {
    token_give (img);
    return 1;
  }
  img->past_end = PAST_END_CLEARING;
  table_unlock (img);
  r = clear_past_end_logged (img);
  table_lock (img);
  if (r == 0)
    forget_entries_past_end (img);
  img->past_end = r == 0 ? PAST_END_CLEAR : PAST_END_UNCHECKED;
  token_give (img);
  return r < 0 ? r : 1;
}

void
token_take (struct qed_image *img)
{
  table_assert_held (img);
  while (img->committing)
    table_wait (img, &img->commit_done);
  img->committing = true;
  set_owner (&img->token_owner, true);
}

void
token_give (struct qed_image *img)
{
  table_assert_held (img);
  token_assert_held (img);
  set_owner (&img->token_owner, false);
  img->committing = false;
  pthread_cond_broadcast (&img->commit_done);
}

int
alloc_commit (struct qed_image *img, struct alloc *a, int data_ret)
{
  struct alloc **tail;

  table_lock (img);
  assert (a->state == ALLOC_RESERVED);
  if (data_ret < 0) {
    alloc_finish (img, a);
    give_back (img, a);
    pthread_cond_broadcast (&img->alloc_done);
    table_unlock (img);
    return data_ret;
  }

  for (tail = &img->queue; *tail; tail = &(*tail)->next_queued)
    ;
  a->next_queued = NULL;
  a->state = ALLOC_QUEUED;
  *tail = a;

  while (__atomic_load_n (&a->state, __ATOMIC_RELAXED) != ALLOC_DONE) {
    if (!img->committing) {
      struct alloc *batch = img->queue;
      int r;

      token_take (img);
      img->queue = NULL;
      for (struct alloc *b = batch; b; b = b->next_queued)
        b->state = ALLOC_COMMITTING;
      r = extend_file (img, batch);
      table_unlock (img);
      commit_batch (img, batch, r);
      table_lock (img);
      apply_batch (img, batch);
      token_give (img);
      pthread_cond_broadcast (&img->alloc_done);
    }
    else
      table_wait (img, &img->commit_done);
  }
  table_unlock (img);
  return a->ret;
}
