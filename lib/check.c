/* nbdkit-qed: consistency check and repair.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The check walks the L1 table and every L2 table straight from the
 * file (not through the cache) and marks each cluster they reference
 * in a bitmap.  Invalid entries, clusters referenced twice and
 * clusters nothing references are counted in qemu-img check's
 * categories.  Repair clears invalid entries, gives the second
 * referrer of a shared cluster a copy of its own (so every entry reads
 * what it read before), truncates leaked clusters at the end of the
 * file and clears NEED_CHECK.
 *
 * The bitmap covers at most CHECK_WINDOW clusters; a larger file is
 * checked in several passes over the tables, one per window, so memory
 * stays bounded whatever the file size.  Repair copies at most as many
 * bytes as the file had (a hostile image could share one table among
 * thousands of entries); past that it clears the entries instead.
 *
 * Runs with no requests in flight.
 */

#include <config.h>

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "internal.h"

#define CHECK_WINDOW (UINT64_C (1) << 28)      /* clusters: a 32 MiB bitmap */
#define CHUNK_ENTRIES 8192u                     /* entries read at once */

struct checker {
  struct qed_image *img;
  struct qed_check_result *res;
  bool repair;
  bool first_pass;
  uint64_t file_size;
  uint64_t nclusters;           /* whole clusters in the file */
  uint64_t win_start, win_end;  /* the clusters this pass marks */
  uint64_t *bitmap;
  uint64_t used_end;            /* end of the highest referenced cluster */
  uint64_t alloc_end;           /* where repair puts copies */
  uint64_t copy_budget;         /* bytes repair may still copy */
  bool budget_spent;
  char *copy_buf;               /* one cluster */
};

/* Mark n clusters from host.  Returns how many were marked before
 * (each one a corruption, as qemu-img check counts them).
 */
static uint64_t
mark (struct checker *ck, uint64_t host, uint64_t n)
{
  uint64_t c = host >> ck->img->cluster_bits;
  uint64_t marked_before = 0;

  if (host + (n << ck->img->cluster_bits) > ck->used_end &&
      host < ck->file_size)
    ck->used_end = host + (n << ck->img->cluster_bits);
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

/* The checks of QEMU's qed_check_cluster_offset / table_offset. */
static bool
offset_valid (const struct checker *ck, uint64_t host, uint64_t len)
{
  const struct qed_image *img = ck->img;
  uint64_t end = cluster_start (img, ck->file_size);

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
  struct qed_file *f = ck->img->file;
  uint64_t cs = ck->img->cluster_size;
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
  if (ck->copy_buf == NULL && (ck->copy_buf = malloc (cs)) == NULL)
    return -ENOMEM;
  *to = ck->alloc_end;
  for (uint64_t done = 0; done < len; done += cs) {
    if ((r = f->ops->pread (f, ck->copy_buf, cs, from + done)) < 0 ||
        (r = f->ops->pwrite (f, ck->copy_buf, cs, *to + done)) < 0) {
      qed_error ("%s: repair: copying a cluster from 0x%" PRIx64 ": %s",
                 image_name (ck->img), from + done, strerror (-r));
      return r;
    }
  }
  ck->alloc_end += len;
  return 0;
}

/* Write back a chunk of table entries the repair changed.  Copies it
 * points at are flushed first, so no entry reaches the disk before the
 * data it points at.
 */
static int
write_chunk (struct checker *ck, uint64_t host, uint64_t *entries, size_t n)
{
  struct qed_file *f = ck->img->file;
  int r = f->ops->flush (f);

  for (size_t i = 0; i < n; i++)
    entries[i] = htole64 (entries[i]);
  if (r == 0)
    r = f->ops->pwrite (f, entries, n * 8, host);
  for (size_t i = 0; i < n; i++)
    entries[i] = le64toh (entries[i]);
  if (r < 0)
    qed_error ("%s: repair: writing table entries at 0x%" PRIx64 ": %s",
               image_name (ck->img), host, strerror (-r));
  return r;
}

static int
read_chunk (struct checker *ck, uint64_t host, uint64_t *entries, size_t n)
{
  struct qed_file *f = ck->img->file;
  int r = f->ops->pread (f, entries, n * 8, host);

  if (r < 0)
    return r;
  for (size_t i = 0; i < n; i++)
    entries[i] = le64toh (entries[i]);
  return 0;
}

/* Check one L2 table entry; returns true if it was changed. */
static int
check_data_entry (struct checker *ck, uint64_t *entry, bool *changed)
{
  uint64_t copy;
  int r;

  if (*entry == QED_ENTRY_UNALLOCATED || *entry == QED_ENTRY_ZERO)
    return 0;
  if (ck->first_pass)
    ck->res->allocated_clusters++;
  if (!offset_valid (ck, *entry, ck->img->cluster_size)) {
    if (ck->first_pass) {
      count_corruptions (ck, 1, ck->repair);
      if (ck->repair) {
        *entry = QED_ENTRY_UNALLOCATED;
        *changed = true;
      }
    }
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

static int
check_l2_table (struct checker *ck, uint64_t table)
{
  uint64_t nelems = ck->img->table_bytes / 8;
  CLEANUP_FREE uint64_t *entries = malloc (CHUNK_ENTRIES * 8);
  int r;

  if (entries == NULL)
    return -ENOMEM;
  for (uint64_t i = 0; i < nelems; i += CHUNK_ENTRIES) {
    size_t n = nelems - i < CHUNK_ENTRIES ? nelems - i : CHUNK_ENTRIES;
    bool changed = false;

    if (read_chunk (ck, table + i * 8, entries, n) < 0) {
      if (ck->first_pass)
        ck->res->check_errors++;
      return 0;
    }
    for (size_t j = 0; j < n; j++)
      if ((r = check_data_entry (ck, &entries[j], &changed)) < 0)
        return r;
    if (changed && (r = write_chunk (ck, table + i * 8, entries, n)) < 0)
      return r;
  }
  return 0;
}

/* Check one L1 entry and the table it points at. */
static int
check_l1_entry (struct checker *ck, uint64_t *entry, bool *changed)
{
  struct qed_image *img = ck->img;
  uint64_t shared, copy, l1 = img->header.l1_table_offset;
  int r;

  if (*entry == 0)
    return 0;
  if (!offset_valid (ck, *entry, img->table_bytes)) {
    if (ck->first_pass) {
      count_corruptions (ck, 1, ck->repair);
      if (ck->repair) {
        *entry = 0;
        *changed = true;
      }
    }
    return 0;
  }
  shared = mark (ck, *entry, img->header.table_size);
  if (shared == 0)
    return check_l2_table (ck, *entry);

  /* Some of the table's clusters are referenced before.  A check
   * leaves such a table unwalked (as QEMU does).  Repair clears an
   * entry that points into the L1 table -- that is no L2 table -- and
   * gives any other a copy of its own, so its range reads as before.
   */
  count_corruptions (ck, shared, ck->repair);
  if (!ck->repair)
    return 0;
  if (*entry < l1 + img->table_bytes && l1 < *entry + img->table_bytes) {
    *entry = 0;
    *changed = true;
    return 0;
  }
  if ((r = copy_to_end (ck, *entry, img->table_bytes, &copy)) < 0)
    return r;
  *entry = copy;
  *changed = true;
  return copy ? check_l2_table (ck, copy) : 0;
}

static int
check_pass (struct checker *ck)
{
  struct qed_image *img = ck->img;
  uint64_t l1 = img->header.l1_table_offset, nelems = img->table_bytes / 8;
  CLEANUP_FREE uint64_t *entries = malloc (CHUNK_ENTRIES * 8);
  int r;

  if (entries == NULL)
    return -ENOMEM;
  mark (ck, l1, img->header.table_size);
  for (uint64_t i = 0; i < nelems; i += CHUNK_ENTRIES) {
    size_t n = nelems - i < CHUNK_ENTRIES ? nelems - i : CHUNK_ENTRIES;
    bool changed = false;

    if ((r = read_chunk (ck, l1 + i * 8, entries, n)) < 0) {
      qed_error ("%s: check: reading the L1 table: %s", image_name (img),
                 strerror (-r));
      return r;
    }
    for (size_t j = 0; j < n; j++)
      if ((r = check_l1_entry (ck, &entries[j], &changed)) < 0)
        return r;
    if (changed && (r = write_chunk (ck, l1 + i * 8, entries, n)) < 0)
      return r;
  }

  for (uint64_t c = ck->win_start; c < ck->win_end; c++) {
    uint64_t bit = c - ck->win_start;
    if (c >= img->header.header_size &&
        !(ck->bitmap[bit / 64] & (1ull << (bit % 64))))
      ck->res->leaks++;
  }
  return 0;
}

/* Give back leaked clusters at the end of the file. */
static int
truncate_leaks (struct checker *ck)
{
  struct qed_file *f = ck->img->file;
  uint64_t end = ck->alloc_end > cluster_start (ck->img, ck->file_size)
    ? ck->alloc_end : ck->used_end;
  uint64_t leaked;
  int r;

  if (end >= ck->file_size || ck->res->check_errors)
    return 0;
  leaked = (cluster_start (ck->img, ck->file_size) - end)
    >> ck->img->cluster_bits;
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

/* After a repair the tables on disk changed: reload what is cached.
 * New L2 tables that earlier failed writes left unlinked go too: the
 * repair may have truncated their space, and allocation starts again
 * from the end of the file.
 */
static int
reload (struct qed_image *img)
{
  struct pending_table *pt, *next;
  uint64_t size;
  int r = img->file->ops->get_size (img->file, &size);

  if (r < 0)
    return r;
  for (pt = img->pending; pt; pt = next) {
    next = pt->next;
    for (size_t i = 0; i < pt->nslices; i++)
      slice_put (img, pt->slices[i]);
    free (pt->slices);
    free (pt);
  }
  img->pending = NULL;
  free (img->l1);
  free (img->l1_bad);
  free (img->tables);
  img->l1 = img->l1_bad = img->tables = NULL;
  img->alloc_end = cluster_start (img, size);
  img->sparse_from = size;
  l2_cache_drop_all (&img->cache);
  return table_load_l1 (img);
}

int
check_image (struct qed_image *img, bool repair,
             struct qed_check_result *res)
{
  struct checker ck = { .img = img, .res = res, .repair = repair };
  int r;

  memset (res, 0, sizeof *res);
  r = img->file->ops->get_size (img->file, &ck.file_size);
  if (r < 0)
    return r;
  ck.nclusters = ck.file_size >> img->cluster_bits;
  ck.alloc_end = cluster_start (img, ck.file_size);
  ck.copy_budget = ck.file_size;
  ck.used_end = img->header_bytes;
  res->total_clusters = (img->header.image_size + img->cluster_size - 1)
    >> img->cluster_bits;

  ck.bitmap = malloc (((ck.nclusters < CHECK_WINDOW ? ck.nclusters
                        : CHECK_WINDOW) + 63) / 64 * 8 + 8);
  if (ck.bitmap == NULL)
    return -ENOMEM;
  for (ck.win_start = 0, ck.first_pass = true;
       ck.first_pass || ck.win_start < ck.nclusters;
       ck.win_start = ck.win_end, ck.first_pass = false) {
    ck.win_end = ck.nclusters - ck.win_start < CHECK_WINDOW
      ? ck.nclusters : ck.win_start + CHECK_WINDOW;
    memset (ck.bitmap, 0, ((ck.win_end - ck.win_start) + 63) / 64 * 8 + 8);
    if ((r = check_pass (&ck)) < 0)
      goto out;
  }

  if (repair) {
    if ((r = truncate_leaks (&ck)) < 0)
      goto out;
    if (res->corruptions == 0 && res->check_errors == 0)
      r = need_check_clear (img);
    if (r == 0 && (res->corruptions_fixed || res->leaks_fixed))
      r = img->file->ops->flush (img->file);
    if (r == 0)
      r = reload (img);
  }
  if (r == 0)
    r = img->file->ops->get_size (img->file, &res->image_end);

 out:
  free (ck.bitmap);
  free (ck.copy_buf);
  return r;
}

int
qed_image_check (struct qed_image *img, bool repair, struct qed_check_result *res)
{
  if (repair && !img->writable) {
    qed_error ("%s: cannot repair: the image is read-only", image_name (img));
    return -EROFS;
  }
  return check_image (img, repair, res);
}
