/* nbdkit-qed: changing the virtual size, and emptying an overlay.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Notes on the design
 * -------------------
 * Both calls have the image to themselves (whole_image_begin: the gate
 * closed, the commit token held), change the tables on disk directly,
 * as the check's repair does, and then make memory follow the disk
 * (image_reload).
 *
 * Nothing reads what lies past the end of the virtual disk, so entries
 * there can change without anyone seeing it.  Resizing relies on that:
 * the end moves when the header with the new image_size is durable,
 * and every other change happens past the end, before (growing) or
 * after (shrinking) that.
 *
 * Growing from S to N bytes:
 * 1. The last cluster, when S is not a cluster boundary, has bytes
 *    past S that must read as zeros.  A data cluster gets zeros written
 *    there.  An unallocated cluster over a backing file that reaches
 *    past S gets a new cluster holding the backing file's bytes up to S
 *    and zeros after, which is flushed before its entry is written (as
 *    an allocating write over a backing file is): the bytes up to S
 *    read the same through either.
 * 2. Every entry past S: the clusters up to N that the backing file
 *    reaches become zero clusters (QEMU's driver refuses to grow such
 *    an overlay instead); data clusters past S, which a shrink cut
 *    short by a crash or another program can leave there, are dropped;
 *    the L1 entries past N are cleared.  A new L2 table is written
 *    before its L1 entry (table_walk flushes first).
 * 3. If that dropped any cluster, compaction gives it back.
 * 4. A flush, then the header with N, flushed.
 * A crash before 4 leaves the size S and, past it, changes nobody
 * reads; at worst a new table nothing points at yet (a leak).
 *
 * Shrinking from S to N bytes:
 * 1. The image must be consistent, for the compaction: checked before
 *    anything changes.
 * 2. The header with N, flushed: from then on nothing past N is read.
 * 3. The L2 entries past N, and the L1 entries of tables wholly past
 *    N, are cleared.
 * 4. Compaction (relocate.c) moves the clusters in use into the holes
 *    and cuts the file.
 * A crash after 2 leaves the size N and every byte below N as it was.
 * Until 3 the clusters past N are still referenced (garbage, not
 * leaks); after 3 they are leaks until 4 ends, which a check with
 * repair gives back.  Garbage past N never shows: growing again clears
 * it first (step 2 of growing).
 *
 * Emptying: every L1 entry is cleared (table_walk writes a chunk of
 * them at a time: a crash leaves each entry as it was or cleared, and
 * an overlay whose backing file holds what it reads, reads the same
 * either way), then compaction flushes that and cuts the file after the
 * L1 table.
 *
 * Each sets NEED_CHECK (durably) before its first change and clears it
 * once done, so that the clusters a crash leaks are given back by the
 * next writable open, whose repair compacts the file.  (A failure does
 * not keep it: closing clears it, the image being consistent.)
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* How the entries past the end change (step 2 of growing, step 3 of
 * shrinking, emptying).
 */
struct past_end {
  struct qed_image *img;
  uint64_t from;                /* the first virtual cluster that changes */
  uint64_t zero_end;            /* [from, zero_end) become zero clusters */
  uint64_t l1_end;              /* L1 entries from here on are cleared */
  uint64_t last_cluster;        /* a virtual cluster below from ... */
  uint64_t last_host;           /* ... now pointed here (0: none) */
  uint64_t append_at;           /* host: where new clusters go */
  uint64_t file_size;           /* as extend_to leaves it */
  uint64_t l1_index;            /* of the L2 table being walked */
  bool dropped;                 /* clusters lost their references */
};

/* What the entry of virtual cluster vc becomes. */
static uint64_t
new_entry (const struct past_end *pe, uint64_t vc, uint64_t entry)
{
  if (pe->last_host && vc == pe->last_cluster)
    return pe->last_host;
  if (vc < pe->from)
    return entry;
  if (vc < pe->zero_end)
    return QED_ENTRY_ZERO;
  /* Both read as zeros: only data goes. */
  return entry == QED_ENTRY_ZERO ? QED_ENTRY_ZERO : QED_ENTRY_UNALLOCATED;
}

/* Make the file reach end (new clusters read as zeros). */
static int
extend_to (struct past_end *pe, uint64_t end)
{
  struct qed_image *img = pe->img;
  int r;

  if (end <= pe->file_size)
    return 0;
  if (img->file->ops->truncate == NULL) {
    qed_error ("%s: cannot allocate clusters: the file cannot grow",
               image_name (img));
    return -ENOSPC;
  }
  r = img->file->ops->truncate (img->file, end);
  if (r < 0) {
    qed_error ("%s: extending the file to 0x%" PRIx64 ": %s",
               image_name (img), end, strerror (-r));
    return r;
  }
  pe->file_size = end;
  return 0;
}

/* L2 walk. */
static int
change_entry (void *opaque, uint64_t index, uint64_t *entry, bool *changed)
{
  struct past_end *pe = opaque;
  uint64_t e = new_entry (pe, (pe->l1_index << pe->img->table_bits) + index,
                          *entry);

  if (e != *entry) {
    if (*entry > QED_ENTRY_ZERO)
      pe->dropped = true;
    *entry = e;
    *changed = true;
  }
  return 0;
}

/* A new L2 table for L1 entry l1_index, if any of its entries changes
 * from unallocated.  Where the file had bytes its zeros are written;
 * past them extending the file makes them.
 */
static int
new_table (struct past_end *pe, uint64_t l1_index, uint64_t *entry,
           bool *changed)
{
  struct qed_image *img = pe->img;
  const uint64_t nelems = img->table_bytes / 8, chunk = QED_SLICE_ENTRIES;
  const uint64_t first = l1_index << img->table_bits;
  uint64_t host = pe->append_at, buf[QED_SLICE_ENTRIES];
  uint64_t zeros_from = pe->from > first ? pe->from : first;
  uint64_t zeros_end = pe->zero_end < first + nelems ? pe->zero_end
    : first + nelems;
  int r;

  /* (new_entry (pe, vc, 0) is not 0 for these clusters only.) */
  if (zeros_from >= zeros_end &&
      !(pe->last_host && pe->last_cluster >= first &&
        pe->last_cluster < first + nelems))
    return 0;
  if ((r = extend_to (pe, host + img->table_bytes)) < 0)
    return r;
  if (host < img->sparse_from &&
      (r = write_zeros (img, host, img->sparse_from - host <
                        img->table_bytes ? img->sparse_from - host
                        : img->table_bytes)) < 0) {
    qed_error ("%s: writing zeros at 0x%" PRIx64 ": %s", image_name (img),
               host, strerror (-r));
    return r;
  }
  for (uint64_t i = 0; i < nelems; i += chunk) {
    bool nonzero = false;

    for (uint64_t j = 0; j < chunk; j++)
      nonzero |= (buf[j] = new_entry (pe, first + i + j, 0)) != 0;
    if (nonzero &&
        (r = table_write_entries (img, host + i * 8, buf, chunk)) < 0)
      return r;
  }
  pe->append_at += img->table_bytes;
  *entry = host;
  *changed = true;
  return 0;
}

/* L1 walk. */
static int
change_l1_entry (void *opaque, uint64_t l1_index, uint64_t *entry,
                 bool *changed)
{
  struct past_end *pe = opaque;
  struct qed_image *img = pe->img;
  uint64_t first = l1_index << img->table_bits, start = pe->from;
  bool unreadable;
  int r;

  if (l1_index >= pe->l1_end) {
    if (*entry) {
      *entry = 0;
      *changed = true;
      pe->dropped = true;
    }
    return 0;
  }
  if (*entry && !l1_entry_valid (img, *entry)) {
    if (l1_index < img->l1_entries) {
      qed_error ("%s: L1 entry %" PRIu64 " is invalid (0x%" PRIx64 "):"
                 " check and repair the image first", image_name (img),
                 l1_index, *entry);
      return -EIO;
    }
    *entry = 0;                 /* garbage past the end: no table */
    *changed = true;
  }
  if (*entry == 0)
    return new_table (pe, l1_index, entry, changed);

  if (pe->last_host && pe->last_cluster < start)
    start = pe->last_cluster;
  pe->l1_index = l1_index;
  r = table_walk (img, *entry, start > first ? start - first : 0,
                  img->table_bytes / 8, change_entry, pe, &unreadable);
  if (unreadable)
    qed_error ("%s: reading L2 table at 0x%" PRIx64 ": %s", image_name (img),
               *entry, strerror (-r));
  return r;
}

static int
change_past_end (struct past_end *pe)
{
  struct qed_image *img = pe->img;
  uint64_t first = pe->from;
  bool unreadable;
  int r;

  if (pe->last_host && pe->last_cluster < first)
    first = pe->last_cluster;
  r = table_walk (img, img->header.l1_table_offset, first >> img->table_bits,
                  img->table_bytes / 8, change_l1_entry, pe, &unreadable);
  if (unreadable)
    qed_error ("%s: reading the L1 table: %s", image_name (img),
               strerror (-r));
  return r;
}

/* Flush what came before, then write the header with the new size. */
static int
set_size (struct qed_image *img, uint64_t size)
{
  uint64_t old = img->header.image_size;
  int r = img->file->ops->flush (img->file);

  if (r < 0) {
    qed_error ("%s: flush: %s", image_name (img), strerror (-r));
    return r;
  }
  __atomic_store_n (&img->header.image_size, size, __ATOMIC_RELEASE);
  r = header_write (img);
  if (r == 0 && (r = img->file->ops->flush (img->file)) < 0)
    qed_error ("%s: flush: %s", image_name (img), strerror (-r));
  if (r < 0) {
    __atomic_store_n (&img->header.image_size, old, __ATOMIC_RELEASE);
    return r;
  }
  img->l1_entries = l1_entries_for (img, size);
  return 0;
}

/* Step 1 of growing from old_size. */
static int
zero_last_cluster (struct past_end *pe, uint64_t old_size)
{
  struct qed_image *img = pe->img;
  uint64_t inside = cluster_offset (img, old_size);
  uint64_t start = old_size - inside;
  struct alloc a;
  struct run run;
  int r;

  if (inside == 0)
    return 0;
  if ((r = lookup_run_taking_lock (img, start, inside, &run)) < 0)
    return r;
  switch (run.kind) {
  case RUN_DATA:
    r = write_zeros (img, run.host + inside, img->cluster_size - inside);
    if (r < 0)
      qed_error ("%s: writing zeros at 0x%" PRIx64 ": %s", image_name (img),
                 run.host + inside, strerror (-r));
    return r;
  case RUN_BAD:
    qed_error ("%s: the entry of the last cluster is invalid: check and"
               " repair the image first", image_name (img));
    return -EIO;
  case RUN_ZERO:
    return 0;
  case RUN_UNALLOC:
    break;
  }
  if (img->backing == NULL || backing_size (img->backing) <= old_size)
    return 0;

  a = (struct alloc) {
    .first = start >> img->cluster_bits, .count = 1, .was = RUN_UNALLOC,
    .host = pe->append_at,
  };
  if ((r = extend_to (pe, a.host + img->cluster_size)) < 0 ||
      (r = write_new_clusters (img, &a, NULL, img->cluster_size - inside,
                               old_size)) < 0)
    return r;
  pe->append_at += img->cluster_size;
  pe->last_cluster = a.first;
  pe->last_host = a.host;
  return 0;
}

/* Start from what is on disk, durably: memory reloaded, and the file's
 * size for new clusters.  Nothing changes yet.
 */
static int
begin (struct qed_image *img, struct past_end *pe)
{
  int r = img->file->ops->flush (img->file);

  if (r < 0) {
    qed_error ("%s: flush: %s", image_name (img), strerror (-r));
    return r;
  }
  if ((r = image_reload (img)) < 0)
    return r;
  /* New clusters go past the end: nothing may point there. */
  if ((r = past_end_clear_now (img)) < 0)
    return r;
  pe->img = img;
  pe->append_at = img->alloc_end;
  pe->file_size = img->sparse_from;
  return 0;
}

static int
grow (struct qed_image *img, uint64_t new_size)
{
  uint64_t old_size = img->header.image_size, freed;
  uint64_t new_end = (new_size + img->cluster_size - 1) >> img->cluster_bits;
  struct past_end pe = { 0 };
  int r;

  /* Before anything changes: the one allocation that can fail. */
  if ((r = table_reserve_l1 (img, l1_entries_for (img, new_size))) < 0 ||
      (r = begin (img, &pe)) < 0)
    return r;
  pe.from = (old_size + img->cluster_size - 1) >> img->cluster_bits;
  pe.l1_end = l1_entries_for (img, new_size);
  if (img->backing) {
    uint64_t b = backing_size (img->backing);

    pe.zero_end = (b + img->cluster_size - 1) >> img->cluster_bits;
    if (pe.zero_end > new_end)
      pe.zero_end = new_end;
  }
  if ((r = need_check_set (img)) < 0 ||
      (r = zero_last_cluster (&pe, old_size)) < 0 ||
      (r = change_past_end (&pe)) < 0)
    return r;
  if (pe.dropped) {
    const char *why_not = compact_impossible (img, pe.file_size);

    if (why_not)
      qed_notice ("%s: clusters past the end of the disk were dropped and"
                  " are left in the file: %s", image_name (img), why_not);
    else if ((r = compact (img, &freed)) < 0)
      return r;
  }
  if ((r = set_size (img, new_size)) < 0)
    return r;
  return need_check_clear (img);
}

static int
shrink (struct qed_image *img, uint64_t new_size)
{
  struct qed_check_result res;
  struct past_end pe = { 0 };
  const char *why_not;
  uint64_t freed;
  int r;

  if ((r = begin (img, &pe)) < 0)
    return r;
  if ((why_not = compact_impossible (img, pe.file_size)) != NULL) {
    qed_error ("%s: cannot shrink the image: %s", image_name (img), why_not);
    return -ENOTSUP;
  }
  if ((r = check_image (img, false, &res)) < 0)
    return r;
  if (res.corruptions || res.check_errors) {
    qed_error ("%s: cannot shrink the image: it has %" PRIu64 " %s and %"
               PRIu64 " %s: check and repair it first", image_name (img),
               res.corruptions,
               qed_plural (res.corruptions, "corruption", "corruptions"),
               res.check_errors, qed_plural (res.check_errors,
                                             "unreadable table",
                                             "unreadable tables"));
    return -EIO;
  }

  if ((r = need_check_set (img)) < 0 ||
      (r = set_size (img, new_size)) < 0)
    return r;
  pe.from = (new_size + img->cluster_size - 1) >> img->cluster_bits;
  pe.l1_end = img->l1_entries;
  if ((r = change_past_end (&pe)) < 0 ||
      (r = compact (img, &freed)) < 0)
    return r;
  return need_check_clear (img);
}

/* Whether or not it succeeded, the tables on disk may have changed. */
static int
reload_after (struct qed_image *img, int r)
{
  int r2 = image_reload (img);

  return r < 0 ? r : r2;
}

/* With the image to ourselves. */
static int
resize (struct qed_image *img, uint64_t new_size, bool allow_shrink)
{
  uint64_t max = qed_image_size_limit (img->cluster_size,
                                       img->header.table_size);
  uint64_t old_size = img->header.image_size;

  if (!img->writable) {
    qed_error ("%s: cannot resize: the image is read-only",
               image_name (img));
    return -EROFS;
  }
  if (new_size > max) {
    qed_error ("%s: cannot resize to %" PRIu64 " bytes: the largest size"
               " with %" PRIu32 "-byte clusters and %" PRIu32 "-cluster"
               " tables is %" PRIu64 " bytes", image_name (img), new_size,
               img->cluster_size, img->header.table_size, max);
    return -EINVAL;
  }
  new_size = (new_size + 511) & ~UINT64_C (511);
  if (new_size < old_size && !allow_shrink) {
    qed_error ("%s: not shrinking from %" PRIu64 " to %" PRIu64 " bytes,"
               " which drops the data past the new end: shrinking was not"
               " allowed", image_name (img), old_size, new_size);
    return -EINVAL;
  }
  if (new_size == old_size)
    return 0;
  if (new_size > old_size && img->header_only && img->backing_name) {
    qed_error ("%s: cannot grow the image: it was opened for its header"
               " alone, without its backing file, which the new range"
               " must not show", image_name (img));
    return -EINVAL;
  }
  qed_debug ("%s: resizing from %" PRIu64 " to %" PRIu64 " bytes",
             image_name (img), old_size, new_size);
  return reload_after (img, new_size > old_size ? grow (img, new_size)
                       : shrink (img, new_size));
}

int
qed_image_resize (struct qed_image *img, uint64_t new_size,
                  bool allow_shrink)
{
  int r;

  whole_image_begin (img);
  r = resize (img, new_size, allow_shrink);
  whole_image_end (img);
  return r;
}

static int
make_empty (struct qed_image *img)
{
  struct past_end pe = { 0 };
  const char *why_not;
  uint64_t freed;
  int r;

  if (!img->writable) {
    qed_error ("%s: cannot empty the image: it is read-only",
               image_name (img));
    return -EROFS;
  }
  if ((r = begin (img, &pe)) < 0)
    return reload_after (img, r);
  if ((why_not = compact_impossible (img, pe.file_size)) != NULL) {
    qed_error ("%s: cannot empty the image: %s", image_name (img), why_not);
    return -ENOTSUP;
  }
  /* from, zero_end and l1_end 0: every L1 entry is cleared. */
  r = need_check_set (img);
  if (r == 0)
    r = change_past_end (&pe);
  if (r == 0)
    r = compact (img, &freed);
  if (r == 0)
    r = need_check_clear (img);
  return reload_after (img, r);
}

int
qed_image_make_empty (struct qed_image *img)
{
  int r;

  whole_image_begin (img);
  r = make_empty (img);
  whole_image_end (img);
  return r;
}
