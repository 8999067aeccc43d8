/* nbdkit-qed: consistency check and repair.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The check walks the L1 table and every L2 table straight from the
 * file (not through the cache) and marks each cluster they reference
 * in a bitmap.  Invalid entries, clusters referenced twice and
 * clusters nothing references are counted in qemu-img check's
 * categories, in QEMU's order: each L2 table, then its entries; a
 * table sharing clusters with what came before is not walked.
 *
 * Repair clears invalid entries, gives the second referrer of a shared
 * cluster a copy of its own (so that every entry reads what it read
 * before), truncates leaked clusters at the end of the file, moves
 * clusters into the leaks left in the middle (compact in relocate.c)
 * and clears NEED_CHECK.  It settles the tables first, in every window,
 * and then walks their entries, so that a copied table is walked like
 * any other and no table is copied after entries in it pointed at
 * copies (a table shared from outside the first window would otherwise
 * be walked twice as one, and both its referrers end up with the same
 * copies of its clusters).  It copies at most as many bytes as the file
 * had (a hostile image can point thousands of entries at one table),
 * then clears the remaining entries that share clusters.
 *
 * The bitmap covers at most check_window clusters.  A larger file is
 * checked in several passes over the tables, one per window up to the
 * last referenced cluster (past it everything is a leak), so memory
 * stays bounded whatever the file size; a file whose references spread
 * over more than CHECK_MAX_PASSES windows is refused.
 *
 * Runs with the gate closed and the commit token held: nothing else
 * touches the image meanwhile.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define CHECK_MAX_PASSES 64

/* Tests make it small (qed_set_check_window). */
static uint64_t check_window = CHECK_WINDOW;

void
qed_set_check_window (uint64_t clusters)
{
  check_window = clusters ? clusters : CHECK_WINDOW;
}

/* What a walk over the L1 table does with each entry. */
enum phase {
  CHECK_ALL,                    /* check: each table, then its entries */
  SETTLE_TABLES,                /* repair, first: the tables only */
  WALK_ENTRIES,                 /* repair, then: the tables' entries */
};

struct checker {
  struct qed_image *img;
  struct qed_check_result *res;
  bool repair;
  bool first_pass;
  bool settle_only;             /* repair: a pass settling the tables */
  bool tables_settled;          /* ... which every window has had */
  uint64_t past_end;            /* clear_entries_past_end's count */
  enum phase phase;
  uint64_t file_size;
  uint64_t file_end;            /* whole clusters of the file */
  uint64_t win_start, win_end;  /* the clusters this pass marks */
  uint64_t *bitmap;
  uint64_t used_end;            /* end of the highest referenced cluster */
  uint64_t last_data;           /* the table's last data entry so far */
  uint64_t alloc_end;           /* where repair puts copies */
  uint64_t copy_budget;         /* bytes repair may still copy */
  bool budget_spent;
};

/* Mark n clusters from host.  Returns how many were marked before
 * (each one a corruption, as qemu-img check counts them).
 */
static uint64_t
mark (struct checker *ck, uint64_t host, uint64_t n)
{
  uint64_t c = host >> ck->img->cluster_bits;
  uint64_t end = host + (n << ck->img->cluster_bits);
  uint64_t marked_before = 0;

  if (end > ck->used_end && end <= ck->file_end)
    ck->used_end = end;
  for (; n > 0; n--, c++) {
    uint64_t bit;
    if (c < ck->win_start || c >= ck->win_end)
      continue;
    bit = c - ck->win_start;
    if (ck->bitmap[bit / 64] & (1ull << (bit % 64)))
      marked_before++;
    ck->bitmap[bit / 64] |= 1ull << (bit % 64);
  }
  return marked_before;
}

/* The checks of QEMU's qed_check_cluster_offset / table_offset.  Past
 * the file's end only repair's own copies are valid, which the first
 * pass (that clears what pointed past the end) has not met yet, except
 * for the tables it copied.
 */
static bool
offset_valid (const struct checker *ck, uint64_t host, uint64_t len,
              bool table)
{
  const struct qed_image *img = ck->img;
  uint64_t end = ck->first_pass &&
    !(table && (ck->phase == WALK_ENTRIES || ck->tables_settled))
    ? ck->file_end : ck->alloc_end;

  return host % img->cluster_size == 0 && host >= img->header_bytes &&
    host <= end && end - host >= len;
}

static void
count_corruptions (struct checker *ck, uint64_t n, bool fixed)
{
  if (fixed)
    ck->res->corruptions_fixed += n;
  else
    ck->res->corruptions += n;
}

/* Copy len bytes at from to a new place at the end of the file; *to
 * is 0 when the copy budget is spent.
 */
static int
copy_to_end (struct checker *ck, uint64_t from, uint64_t len, uint64_t *to)
{
  int r;

  if (len > ck->copy_budget) {
    if (!ck->budget_spent)
      qed_notice ("%s: repair: too many shared clusters to copy them all;"
                  " clearing the remaining entries that share clusters",
                  image_name (ck->img));
    ck->budget_spent = true;
    *to = 0;
    return 0;
  }
  ck->copy_budget -= len;
  *to = ck->alloc_end;
  if ((r = copy_host (ck->img, from, *to, len)) < 0)
    return r;
  ck->alloc_end += len;
  return 0;
}

/* An entry is invalid: count it once, and clear it when repairing. */
static void
invalid_entry (struct checker *ck, uint64_t *entry, bool *changed)
{
  if (!ck->first_pass)
    return;
  count_corruptions (ck, 1, ck->repair);
  if (ck->repair) {
    *entry = 0;
    *changed = true;
  }
}

/* Check one L2 table entry. */
static int
check_data_entry (void *opaque, uint64_t index, uint64_t *entry,
                  bool *changed)
{
  struct checker *ck = opaque;
  uint64_t copy;
  int r;

  if (*entry == QED_ENTRY_UNALLOCATED || *entry == QED_ENTRY_ZERO)
    return 0;
  if (ck->first_pass) {
    ck->res->allocated_clusters++;
    if (ck->last_data && ck->last_data + ck->img->cluster_size != *entry)
      ck->res->fragmented_clusters++;
    ck->last_data = *entry;
  }
  if (!offset_valid (ck, *entry, ck->img->cluster_size, false)) {
    invalid_entry (ck, entry, changed);
    return 0;
  }
  if (mark (ck, *entry, 1) == 0)
    return 0;
  /* Referenced before: give this entry a copy of its own. */
  count_corruptions (ck, 1, ck->repair);
  if (!ck->repair)
    return 0;
  r = copy_to_end (ck, *entry, ck->img->cluster_size, &copy);
  if (r < 0)
    return r;
  *entry = copy ? copy : QED_ENTRY_UNALLOCATED;
  *changed = true;
  return 0;
}

/* An L2 table that cannot be read is a check error (counted once). */
static int
check_l2_table (struct checker *ck, uint64_t table)
{
  bool unreadable;
  int r;

  ck->last_data = 0;
  r = table_walk (ck->img, table, 0, ck->img->table_bytes / 8,
                  check_data_entry, ck, &unreadable);

  if (unreadable) {
    if (ck->first_pass)
      ck->res->check_errors++;
    return 0;
  }
  return r;
}

/* Mark the table an L1 entry points at; when its clusters are shared,
 * count that and, repairing, clear or copy it.  Returns 1 if the
 * table's entries are to be walked.
 */
static int
settle_table (struct checker *ck, uint64_t *entry, bool *changed)
{
  struct qed_image *img = ck->img;
  uint64_t shared, copy, l1 = img->header.l1_table_offset;
  int r;

  shared = mark (ck, *entry, img->header.table_size);
  if (shared == 0)
    return 1;
  count_corruptions (ck, shared, ck->repair);
  if (!ck->repair)
    return 0;                   /* as QEMU: not walked */
  /* An entry into the L1 table points at no L2 table: clear it.  Any
   * other gets a copy of its own, so that its range reads as before.
   */
  if (*entry < l1 + img->table_bytes && l1 < *entry + img->table_bytes)
    copy = 0;
  else if ((r = copy_to_end (ck, *entry, img->table_bytes, &copy)) < 0)
    return r;
  *entry = copy;
  *changed = true;
  return 0;
}

/* Check one L1 entry (in this walk's phase). */
static int
check_l1_entry (void *opaque, uint64_t index, uint64_t *entry, bool *changed)
{
  struct checker *ck = opaque;
  int r;

  if (*entry == 0)
    return 0;
  if (!offset_valid (ck, *entry, ck->img->table_bytes, true)) {
    invalid_entry (ck, entry, changed);
    return 0;
  }
  if (ck->phase == WALK_ENTRIES)
    return check_l2_table (ck, *entry);
  r = settle_table (ck, entry, changed);
  if (r > 0 && ck->phase == CHECK_ALL)
    return check_l2_table (ck, *entry);
  return r < 0 ? r : 0;
}

static int
walk_l1 (struct checker *ck)
{
  struct qed_image *img = ck->img;
  bool unreadable;
  int r = table_walk (img, img->header.l1_table_offset, 0,
                      img->table_bytes / 8, check_l1_entry, ck, &unreadable);

  if (unreadable)
    qed_error ("%s: check: reading the L1 table: %s", image_name (img),
               strerror (-r));
  return r;
}

/* One pass: mark what lies in the window, count its leaks. */
static int
check_pass (struct checker *ck)
{
  struct qed_image *img = ck->img;
  uint64_t c;
  int r;

  memset (ck->bitmap, 0, (ck->win_end - ck->win_start + 63) / 64 * 8);
  mark (ck, img->header.l1_table_offset, img->header.table_size);
  if (ck->repair) {
    ck->phase = SETTLE_TABLES;
    if ((r = walk_l1 (ck)) < 0 || ck->settle_only)
      return r;
    ck->phase = WALK_ENTRIES;
  }
  else
    ck->phase = CHECK_ALL;
  if ((r = walk_l1 (ck)) < 0)
    return r;

  /* Leaks: unmarked clusters, 64 at a time; the header is none. */
  for (c = ck->win_start; c < ck->win_end; c += 64) {
    uint64_t bit = c - ck->win_start, word = ~ck->bitmap[bit / 64];

    if (c + 64 > ck->win_end || c < img->header.header_size)
      for (unsigned i = 0; i < 64; i++)
        if (c + i >= ck->win_end || c + i < img->header.header_size)
          word &= ~(1ull << i);
    ck->res->leaks += __builtin_popcountll (word);
  }
  return 0;
}

/* The first pass over window 0, which also finds the last referenced
 * cluster, then one pass per window up to it (windows after it would
 * only count leaks, one at a time).
 */
static int
all_passes (struct checker *ck, uint64_t nclusters)
{
  uint64_t last;
  int r;

  ck->first_pass = true;
  ck->win_start = 0;
  ck->win_end = nclusters < check_window ? nclusters : check_window;
  if ((r = check_pass (ck)) < 0)
    return r;
  ck->first_pass = false;
  last = ck->used_end >> ck->img->cluster_bits;
  if (last > ck->win_end &&
      (last - ck->win_end) / check_window >= CHECK_MAX_PASSES) {
    qed_error ("%s: check: the tables reference clusters spread over %"
               PRIu64 " bytes of file, too far apart to check with"
               " bounded memory", image_name (ck->img), ck->used_end);
    return -EFBIG;
  }
  for (ck->win_start = ck->win_end; ck->win_start < last;
       ck->win_start = ck->win_end) {
    ck->win_end = last - ck->win_start < check_window ? last
      : ck->win_start + check_window;
    if ((r = check_pass (ck)) < 0)
      return r;
  }
  return 0;
}

int
check_mark_referenced (struct qed_image *img, uint64_t nclusters,
                       uint64_t *bitmap)
{
  struct qed_check_result res = { 0 };
  struct checker ck = {
    .img = img, .res = &res, .first_pass = true, .bitmap = bitmap,
    .win_end = nclusters, .file_end = nclusters << img->cluster_bits,
    .used_end = img->header_bytes,
  };
  int r;

  token_assert_held (img);
  ck.file_size = ck.alloc_end = ck.file_end;
  r = check_pass (&ck);
  if (r == 0 && (res.corruptions || res.check_errors)) {
    qed_error ("%s: the image has %" PRIu64 " %s and %" PRIu64 " %s: check"
               " and repair it first", image_name (img), res.corruptions,
               qed_plural (res.corruptions, "corruption", "corruptions"),
               res.check_errors, qed_plural (res.check_errors,
                                             "unreadable table",
                                             "unreadable tables"));
    r = -EIO;
  }
  return r;
}

/* Give back leaked clusters at the end of the file. */
static int
truncate_leaks (struct checker *ck)
{
  struct qed_file *f = ck->img->file;
  uint64_t end = ck->alloc_end > ck->file_end ? ck->alloc_end : ck->used_end;
  uint64_t leaked;
  int r;

  if (end >= ck->file_size || ck->res->check_errors ||
      f->ops->truncate == NULL)
    return 0;
  leaked = (ck->file_end - end) >> ck->img->cluster_bits;
  r = f->ops->truncate (f, end);
  if (r < 0) {
    qed_error ("%s: repair: truncating leaked clusters: %s",
               image_name (ck->img), strerror (-r));
    return r;
  }
  ck->res->leaks -= leaked;
  ck->res->leaks_fixed += leaked;
  return 0;
}

/* Leaks left in the middle of the file: move clusters into them. */
static int
compact_leaks (struct checker *ck)
{
  struct qed_image *img = ck->img;
  const char *why_not;
  uint64_t size, freed;
  int r;

  if (ck->res->leaks == 0 || ck->res->corruptions || ck->res->check_errors)
    return 0;
  if ((r = img->file->ops->get_size (img->file, &size)) < 0)
    return r;
  if ((why_not = compact_impossible (img, size)) != NULL) {
    qed_notice ("%s: repair: %" PRIu64 " %s left in the file: %s",
                image_name (img), ck->res->leaks,
                qed_plural (ck->res->leaks, "leaked cluster is",
                            "leaked clusters are"), why_not);
    return 0;
  }
  if ((r = compact (img, &freed)) < 0)
    return r;
  ck->res->leaks_fixed += ck->res->leaks;
  ck->res->leaks = 0;
  return 0;
}

int
check_image (struct qed_image *img, bool repair,
             struct qed_check_result *res)
{
  struct checker ck = { .img = img, .res = res, .repair = repair };
  uint64_t nclusters;
  int r;

  token_assert_held (img);
  memset (res, 0, sizeof *res);
  trim_grown_tail_alone (img);  /* what the file grew ahead is no leak */
  r = img->file->ops->get_size (img->file, &ck.file_size);
  if (r < 0)
    return r;
  ck.file_end = ck.alloc_end = cluster_start (img, ck.file_size);
  ck.copy_budget = ck.file_size;
  ck.used_end = img->header_bytes;
  nclusters = ck.file_end >> img->cluster_bits;
  res->total_clusters = (img->header.image_size + img->cluster_size - 1)
    >> img->cluster_bits;

  ck.bitmap = malloc ((nclusters < check_window ? nclusters : check_window)
                      / 64 * 8 + 8);
  if (ck.bitmap == NULL)
    return -ENOMEM;

  if (repair) {
    ck.settle_only = true;
    if ((r = all_passes (&ck, nclusters)) < 0)
      goto out;
    ck.settle_only = false;
    ck.tables_settled = true;
  }
  if ((r = all_passes (&ck, nclusters)) < 0)
    goto out;
  if (nclusters > ck.win_end)
    res->leaks += nclusters - ck.win_end;

  if (repair) {
    if ((r = truncate_leaks (&ck)) < 0 ||
        (r = compact_leaks (&ck)) < 0)
      goto out;
    if (res->corruptions == 0 && res->check_errors == 0)
      r = need_check_clear (img);
    if (r == 0 && (res->corruptions_fixed || res->leaks_fixed))
      r = img->file->ops->flush (img->file);
    if (r == 0)
      r = image_reload (img);
  }
  if (r == 0)
    r = img->file->ops->get_size (img->file, &res->image_end);

 out:
  /* A repair that failed half way may have changed tables on disk:
   * what is in memory must follow them, or requests would use tables
   * the disk no longer links.
   */
  if (r < 0 && repair)
    image_reload (img);
  free (ck.bitmap);
  return r;
}

/* Entries that point at or past the end of the file at open read as
 * errors, but once the file grows over the place they point at they
 * would be valid, and share their cluster with the range the new
 * cluster was given (within one open new_links knows them; after a
 * reopen, or for another program, nothing would).  So they are cleared
 * before the file first grows (see "Entries past the end" in
 * internal.h): this walks every L2 table, in chunks, without the cache.
 */
static int
clear_past_end (void *opaque, uint64_t index, uint64_t *entry, bool *changed)
{
  struct checker *ck = opaque;

  if (*entry > QED_ENTRY_ZERO && *entry >= ck->img->open_end) {
    ck->past_end++;
    *entry = 0;
    *changed = true;
  }
  return 0;
}

static bool
table_past_end (const struct qed_image *img, uint64_t table)
{
  return table >= img->open_end || img->open_end - table < img->table_bytes;
}

int
clear_entries_past_end (struct qed_image *img, uint64_t *count)
{
  struct checker ck = { .img = img };
  uint64_t zero = 0;
  bool unreadable;
  int r;

  token_assert_held (img);
  table_assert_not_held (img);
  /* Nothing links clusters past open_end until this is done, so every
   * entry there is invalid; the token keeps the committer out, and
   * only its holder changes img->l1 (apply_batch) outside of reloads.
   */
  for (uint64_t l1i = 0; l1i < img->l1_entries; l1i++) {
    uint64_t table = img->l1[l1i];

    if (table == 0)
      continue;
    if (table_past_end (img, table)) {
      ck.past_end++;
      r = table_write_entries (img, img->header.l1_table_offset + l1i * 8,
                               &zero, 1);
      if (r < 0)
        return r;
      continue;
    }
    if (l1_entry_is_bad (img, l1i))
      continue;                 /* invalid for good: not walked */
    r = table_walk (img, table, 0, img->table_bytes / 8, clear_past_end, &ck,
                    &unreadable);
    if (unreadable)
      qed_error ("%s: reading L2 table at 0x%" PRIx64 ": %s",
                 image_name (img), table, strerror (-r));
    if (r < 0)
      return r;
  }
  /* Durable before anything is written past the end. */
  if (ck.past_end > 0 && (r = img->file->ops->flush (img->file)) < 0) {
    qed_error ("%s: flush: %s", image_name (img), strerror (-r));
    return r;
  }
  *count = ck.past_end;
  return 0;
}

void
forget_entries_past_end (struct qed_image *img)
{
  struct l2_cache *c = &img->cache;

  table_assert_held (img);
  token_assert_held (img);
  for (uint64_t l1i = 0; l1i < img->l1_entries; l1i++)
    if (img->l1[l1i] != 0 && l1_entry_is_bad (img, l1i) &&
        table_past_end (img, img->l1[l1i])) {
      img->l1[l1i] = 0;
      img->l1_bad[l1i / 64] &= ~(UINT64_C (1) << (l1i % 64));
    }
  for (size_t b = 0; b < c->nbuckets; b++)
    for (struct l2_slice *s = c->buckets[b]; s; s = s->hash_next) {
      bool has_bad = false;

      if (s->state != SLICE_READY || !s->has_bad)
        continue;
      for (unsigned i = 0; i < QED_SLICE_ENTRIES; i++) {
        if (!l2_slice_is_bad (s, i))
          continue;
        if (s->entries[i] >= img->open_end) {
          s->entries[i] = 0;
          s->bad[i / 64] &= ~(UINT64_C (1) << (i % 64));
        }
        else
          has_bad = true;
      }
      s->has_bad = has_bad;
    }
}
