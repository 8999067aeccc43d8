/* nbdkit-qed: compaction: moving the clusters in use into the clusters
 * nothing references, so that the file ends after its last cluster in
 * use and has no leaks.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Notes on the design
 * -------------------
 * A cluster below the end of the file that nothing references is a
 * leak, and a file only gives space back from its end.  Shrinking and
 * emptying an image (resize.c) drop references anywhere in the file;
 * failed writes and crashes leave leaks too.  Compaction counts the
 * clusters in use -- the header, the L1 table, the L2 tables and the
 * data clusters they reference -- so the file needs exactly that many
 * and will end at E, that many clusters from its start.  Whatever lies
 * at or past E moves into the holes below it, then the file is cut at
 * E.  Below E, only what is in the way of a table moves.
 *
 * A data cluster fits any hole.  A table (table_size clusters) needs a
 * window: that many clusters in a row below E, free of the header and
 * of the tables that stay.  Windows are carved from the gaps between
 * the tables that stay, over holes and data clusters (which move out
 * of the way like the ones past E).  When the gaps are too fragmented
 * to hold every table that must move, the highest table that stays
 * moves as well, which joins the gaps on both sides of it, until they
 * hold them all: with every table moving, the space after the header
 * is one gap, large enough by the count above.
 *
 * The steps:
 * 1. The tables that move and lie (even partly) below E are copied
 *    past the end of the file first, so that their places are free
 *    for windows and data.
 * 2. Each data cluster at or past E, or inside a window, is copied
 *    into a hole below E, and its L2 entry pointed at the copy.
 * 3. Each table that moves is copied into its window, and its L1
 *    entry (for the L1 table, the header) pointed at the copy.
 * 4. The file is cut at E.
 *
 * Crash safety.  The file is flushed first, so that what the tables
 * reference on disk is what they reference durably.  A cluster is then
 * only copied into a place that nothing durable references: a hole, a
 * window whose data clusters have moved out (after a flush made their
 * new entries durable), or past the end of the file.  Every copy is
 * flushed before the entry pointing at it is written (table_walk
 * flushes before it writes entries; the header waits for a flush of
 * the L1 table's copy).  The place a cluster leaves is not written
 * again until its new entry is durable: places at or past E never
 * are, and the file is cut only after the last flush; places below E
 * that step 1 frees are reused after its flush.  So at any point every
 * entry on disk points at a whole copy of its cluster, the old one or
 * the new one, and a crash loses nothing: what it can leave behind is
 * copies nothing points at yet (leaks, which the next compaction gives
 * back).  An entry is 8 aligned bytes and the header lies in the first
 * sector, so each is written whole or not at all.
 *
 * Memory: a bitmap of the file's clusters (filled by check.c, which
 * also makes sure every cluster has one referrer: moving a cluster
 * that two entries share would leave one of them behind), hence at
 * most CHECK_WINDOW clusters; and the list of tables.
 *
 * Called with the gate closed and the commit token held: nothing else
 * reads or writes the file meanwhile.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* The l1_index of the L1 table itself, which the header points at. */
#define THE_L1_TABLE UINT64_MAX

/* A table in the file, in clusters. */
struct table_place {
  uint64_t at;                  /* its first cluster */
  uint64_t l1_index;            /* the L1 entry pointing at it */
  uint64_t to;                  /* where the current step moves it; 0: stays */
};

struct compaction {
  struct qed_image *img;
  uint64_t nclusters;           /* whole clusters of the file */
  uint64_t *used;               /* bitmap: in use, or a window */
  uint64_t end;                 /* E: the clusters in use */
  uint64_t tclusters;           /* clusters of one table */
  struct table_place *tables;   /* sorted by at */
  size_t ntables, tables_alloc;
  size_t nstay;                 /* tables[0..nstay) stay where they are */
  uint64_t *windows;            /* sorted: one for each table that moves */
  uint64_t next_hole;           /* no hole below this */
  uint64_t moved_data;
};

static bool
is_used (const struct compaction *c, uint64_t cl)
{
  return (c->used[cl / 64] >> (cl % 64)) & 1;
}

/* Mark [cl, cl + n) used or not (what lies past the file's end has no
 * bits).
 */
static void
set_used (struct compaction *c, uint64_t cl, uint64_t n, bool used)
{
  for (; n > 0 && cl < c->nclusters; n--, cl++)
    if (used)
      c->used[cl / 64] |= 1ull << (cl % 64);
    else
      c->used[cl / 64] &= ~(1ull << (cl % 64));
}

const char *
compact_impossible (const struct qed_image *img, uint64_t file_size)
{
  if (img->file->ops->truncate == NULL)
    return "the file cannot change size";
  if ((file_size >> img->cluster_bits) > CHECK_WINDOW)
    return "the file has more than 2^28 clusters, too many to map with"
      " bounded memory";
  return NULL;
}

static int
compare_at (const void *a, const void *b)
{
  const struct table_place *x = a, *y = b;

  return x->at < y->at ? -1 : x->at > y->at;
}

static int
add_table (struct compaction *c, uint64_t at, uint64_t l1_index)
{
  if (c->ntables == c->tables_alloc) {
    size_t n = c->tables_alloc ? 2 * c->tables_alloc : 64;
    struct table_place *t = realloc (c->tables, n * sizeof *t);

    if (t == NULL)
      return -ENOMEM;
    c->tables = t;
    c->tables_alloc = n;
  }
  c->tables[c->ntables++] = (struct table_place) {
    .at = at, .l1_index = l1_index,
  };
  return 0;
}

/* L1 walk: list the L2 tables. */
static int
collect_table (void *opaque, uint64_t index, uint64_t *entry, bool *changed)
{
  struct compaction *c = opaque;

  if (*entry == 0)
    return 0;
  return add_table (c, *entry >> c->img->cluster_bits, index);
}

static struct table_place *
find_table (const struct compaction *c, uint64_t at)
{
  struct table_place key = { .at = at };

  return bsearch (&key, c->tables, c->ntables, sizeof key, compare_at);
}

/* Carve windows from the gap [start, end) until need are carved,
 * leaving data clusters where they are while the gap has clusters to
 * spare (each one left in place is a copy saved).
 */
static void
carve (struct compaction *c, uint64_t start, uint64_t end, size_t need,
       size_t *nwindows)
{
  uint64_t t = c->tclusters, n = (end - start) / t, p = start;

  if (n > need - *nwindows)
    n = need - *nwindows;
  for (; n > 0; n--) {
    while (end - p > n * t && is_used (c, p))
      p++;
    c->windows[(*nwindows)++] = p;
    p += t;
  }
}

/* Decide which tables move and the windows they move to. */
static int
plan (struct compaction *c)
{
  const uint64_t t = c->tclusters, e = c->end;
  const uint64_t h = c->img->header.header_size;
  struct table_place *tb = c->tables;
  uint64_t capacity = 0, prev = h;
  size_t n = 0, need, nwindows = 0;

  /* The tables wholly below E stay, at first: a prefix of the list. */
  while (n < c->ntables && tb[n].at + t <= e)
    n++;
  for (size_t i = 0; i < n; i++) {
    capacity += (tb[i].at - prev) / t;
    prev = tb[i].at + t;
  }
  capacity += (e - prev) / t;

  /* Too fragmented: the highest table that stays moves too. */
  while (capacity < c->ntables - n) {
    uint64_t before;

    if (n == 0) {
      qed_error ("%s: compacting: no room below cluster %" PRIu64 " for %zu"
                 " tables (the count of clusters in use is wrong)",
                 image_name (c->img), e, c->ntables);
      return -EIO;
    }
    before = n >= 2 ? tb[n - 2].at + t : h;
    capacity -= (tb[n - 1].at - before) / t + (e - tb[n - 1].at - t) / t;
    capacity += (e - before) / t;
    n--;
  }
  c->nstay = n;

  need = c->ntables - n;
  c->windows = malloc ((need ? need : 1) * sizeof *c->windows);
  if (c->windows == NULL)
    return -ENOMEM;
  prev = h;
  for (size_t i = 0; i <= n && nwindows < need; i++) {
    carve (c, prev, i < n ? tb[i].at : e, need, &nwindows);
    if (i < n)
      prev = tb[i].at + t;
  }
  assert (nwindows == need);
  return 0;
}

/* L1 walk: point the entries of the tables that move at their copies. */
static int
repoint_table (void *opaque, uint64_t index, uint64_t *entry, bool *changed)
{
  struct compaction *c = opaque;
  struct table_place *tp;

  if (*entry == 0)
    return 0;
  tp = find_table (c, *entry >> c->img->cluster_bits);
  if (tp && tp->to) {
    *entry = tp->to << c->img->cluster_bits;
    *changed = true;
  }
  return 0;
}

/* The L1 table moves: copy it, then point the header at the copy. */
static int
move_l1_table (struct compaction *c, struct table_place *tp)
{
  struct qed_image *img = c->img;
  uint64_t old = img->header.l1_table_offset;
  int r;

  r = copy_host (img, tp->at << img->cluster_bits,
                 tp->to << img->cluster_bits, img->table_bytes);
  if (r < 0)
    return r;
  if ((r = img->file->ops->flush (img->file)) < 0) {
    qed_error ("%s: compacting: flush: %s", image_name (img), strerror (-r));
    return r;
  }
  img->header.l1_table_offset = tp->to << img->cluster_bits;
  r = header_write (img);
  if (r == 0)
    r = img->file->ops->flush (img->file);
  if (r < 0)
    img->header.l1_table_offset = old;
  return r;
}

/* Move each table whose to is set: copy the L2 tables, point their L1
 * entries at the copies (after a flush), then the same for the L1
 * table, which holds those entries, and the header.
 */
static int
move_tables (struct compaction *c)
{
  struct qed_image *img = c->img;
  struct table_place *l1 = NULL;
  bool l2_moves = false, unreadable;
  int r;

  for (size_t i = 0; i < c->ntables; i++) {
    struct table_place *tp = &c->tables[i];

    if (tp->to == 0)
      continue;
    if (tp->l1_index == THE_L1_TABLE) {
      l1 = tp;
      continue;
    }
    r = copy_host (img, tp->at << img->cluster_bits,
                   tp->to << img->cluster_bits, img->table_bytes);
    if (r < 0)
      return r;
    l2_moves = true;
  }
  if (l2_moves) {
    r = table_walk (img, img->header.l1_table_offset, 0,
                    img->table_bytes / 8, repoint_table, c, &unreadable);
    if (r == 0 && (r = img->file->ops->flush (img->file)) < 0)
      qed_error ("%s: compacting: flush: %s", image_name (img),
                 strerror (-r));
    if (unreadable)
      qed_error ("%s: compacting: reading the L1 table: %s",
                 image_name (img), strerror (-r));
    if (r < 0)
      return r;
  }
  if (l1 && (r = move_l1_table (c, l1)) < 0)
    return r;

  for (size_t i = 0; i < c->ntables; i++) {
    struct table_place *tp = &c->tables[i];

    if (tp->to == 0)
      continue;
    set_used (c, tp->at, c->tclusters, false);
    set_used (c, tp->to, c->tclusters, true);
    tp->at = tp->to;
    tp->to = 0;
  }
  qsort (c->tables, c->ntables, sizeof *c->tables, compare_at);
  return 0;
}

static bool
in_window (const struct compaction *c, uint64_t cl)
{
  size_t lo = 0, hi = c->ntables - c->nstay;

  /* The last window starting at or before cl. */
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (c->windows[mid] <= cl)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo > 0 && cl - c->windows[lo - 1] < c->tclusters;
}

/* The lowest free cluster below E, now used. */
static int
take_hole (struct compaction *c, uint64_t *cl)
{
  for (uint64_t i = c->next_hole; i < c->end; ) {
    if (i % 64 == 0 && c->used[i / 64] == ~0ull) {
      i += 64;
      continue;
    }
    if (!is_used (c, i)) {
      set_used (c, i, 1, true);
      c->next_hole = i + 1;
      *cl = i;
      return 0;
    }
    i++;
  }
  qed_error ("%s: compacting: no free cluster left below cluster %" PRIu64
             " (the count of clusters in use is wrong)",
             image_name (c->img), c->end);
  return -EIO;
}

/* L2 walk: a data cluster at or past E, or in a window, moves into a
 * hole.
 */
static int
move_data_cluster (void *opaque, uint64_t index, uint64_t *entry,
                   bool *changed)
{
  struct compaction *c = opaque;
  struct qed_image *img = c->img;
  uint64_t cl, hole;
  int r;

  if (*entry <= QED_ENTRY_ZERO)
    return 0;
  cl = *entry >> img->cluster_bits;
  if (cl < c->end && !in_window (c, cl))
    return 0;
  if ((r = take_hole (c, &hole)) < 0 ||
      (r = copy_host (img, *entry, hole << img->cluster_bits,
                      img->cluster_size)) < 0)
    return r;
  *entry = hole << img->cluster_bits;
  *changed = true;
  c->moved_data++;
  return 0;
}

static int
move_data_clusters (struct compaction *c)
{
  struct qed_image *img = c->img;
  bool unreadable;
  int r;

  for (uint64_t w = 0; w < c->ntables - c->nstay; w++)
    set_used (c, c->windows[w], c->tclusters, true);
  c->next_hole = img->header.header_size;
  for (size_t i = 0; i < c->ntables; i++) {
    uint64_t table = c->tables[i].at << img->cluster_bits;

    if (c->tables[i].l1_index == THE_L1_TABLE)
      continue;
    r = table_walk (img, table, 0, img->table_bytes / 8, move_data_cluster,
                    c, &unreadable);
    if (unreadable)
      qed_error ("%s: compacting: reading L2 table at 0x%" PRIx64 ": %s",
                 image_name (img), table, strerror (-r));
    if (r < 0)
      return r;
  }
  /* The windows are free once the new entries are durable. */
  if ((r = img->file->ops->flush (img->file)) < 0)
    qed_error ("%s: compacting: flush: %s", image_name (img), strerror (-r));
  return r;
}

/* Steps 1 to 3 of the notes, once E and the tables are known. */
static int
relocate (struct compaction *c)
{
  struct qed_image *img = c->img;
  uint64_t scratch = c->nclusters;
  size_t moving;
  bool below_end = false;
  int r;

  if ((r = plan (c)) < 0)
    return r;
  moving = c->ntables - c->nstay;
  for (size_t i = c->nstay; i < c->ntables; i++)
    if (c->tables[i].at < c->end) {
      c->tables[i].to = scratch;
      scratch += c->tclusters;
      below_end = true;
    }
  if (below_end && (r = move_tables (c)) < 0)
    return r;
  /* The tables that move still come after those that stay. */
  if ((r = move_data_clusters (c)) < 0)
    return r;
  for (size_t j = 0; j < moving; j++)
    c->tables[c->nstay + j].to = c->windows[j];
  if (moving && (r = move_tables (c)) < 0)
    return r;

  qed_debug ("%s: compacting: moved %" PRIu64 " data %s and %zu %s",
             image_name (img), c->moved_data,
             qed_plural (c->moved_data, "cluster", "clusters"), moving,
             qed_plural (moving, "table", "tables"));
  return 0;
}

/* Step 4: the file ends at E. */
static int
cut (struct compaction *c)
{
  struct qed_image *img = c->img;
  int r = img->file->ops->truncate (img->file, c->end << img->cluster_bits);

  if (r == 0)
    r = img->file->ops->flush (img->file);
  if (r < 0)
    qed_error ("%s: compacting: cutting the file at 0x%" PRIx64 ": %s",
               image_name (img), c->end << img->cluster_bits, strerror (-r));
  return r;
}

int
compact (struct qed_image *img, uint64_t *freed)
{
  struct compaction c = { .img = img, .tclusters = img->header.table_size };
  struct qed_file *f = img->file;
  const char *why_not;
  bool unreadable;
  uint64_t size;
  int r;

  token_assert_held (img);
  *freed = 0;
  if ((r = f->ops->flush (f)) < 0 || (r = f->ops->get_size (f, &size)) < 0) {
    qed_error ("%s: compacting: %s", image_name (img), strerror (-r));
    return r;
  }
  if ((why_not = compact_impossible (img, size)) != NULL) {
    qed_error ("%s: cannot compact the file: %s", image_name (img), why_not);
    return -ENOTSUP;
  }
  c.nclusters = size >> img->cluster_bits;
  c.used = malloc ((c.nclusters + 63) / 64 * 8 + 8);
  if (c.used == NULL)
    return -ENOMEM;
  if ((r = check_mark_referenced (img, c.nclusters, c.used)) < 0)
    goto out;
  c.end = img->header.header_size;
  for (uint64_t w = 0; w < (c.nclusters + 63) / 64; w++)
    c.end += __builtin_popcountll (c.used[w]);

  if (c.end < c.nclusters) {
    r = table_walk (img, img->header.l1_table_offset, 0,
                    img->table_bytes / 8, collect_table, &c, &unreadable);
    if (unreadable)
      qed_error ("%s: compacting: reading the L1 table: %s",
                 image_name (img), strerror (-r));
    if (r == 0)
      r = add_table (&c, img->header.l1_table_offset >> img->cluster_bits,
                     THE_L1_TABLE);
    if (r < 0)
      goto out;
    qsort (c.tables, c.ntables, sizeof *c.tables, compare_at);
    r = relocate (&c);
  }
  if (r == 0 && size > c.end << img->cluster_bits)
    r = cut (&c);
  if (r == 0)
    *freed = c.nclusters - c.end;

 out:
  free (c.used);
  free (c.tables);
  free (c.windows);
  return r;
}
