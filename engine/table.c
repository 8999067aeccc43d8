/* nbdkit-qed: L1 and L2 tables and the header on disk.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "internal.h"

/* Entries table_walk reads and writes at once. */
#define WALK_CHUNK_ENTRIES 8192u

static bool
overlaps (uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
  return a < b + blen && b < a + alen;
}

/* Would an L2 table at host fit where the format allows one?  Tables
 * are validated against the file size at open (alloc_end then).
 */
bool
l1_entry_valid (const struct qed_image *img, uint64_t entry)
{
  return entry % img->cluster_size == 0 &&
    entry >= img->header_bytes &&
    entry <= img->alloc_end && img->alloc_end - entry >= img->table_bytes &&
    !overlaps (entry, img->table_bytes,
               img->header.l1_table_offset, img->table_bytes);
}

static int
compare_u64 (const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
  return x < y ? -1 : x > y;
}

int
table_reserve_l1 (struct qed_image *img, uint64_t entries)
{
  size_t n = entries ? entries : 1, bad_words = entries / 64 + 1;
  uint64_t *l1, *tables, *bad;

  if (entries <= img->l1_capacity && img->l1 != NULL)
    return 0;
  /* Each array is kept as soon as it has grown: the old contents stay
   * valid, and the capacity counts only when all three have.
   */
  if ((l1 = realloc (img->l1, n * sizeof *l1)) == NULL)
    return -ENOMEM;
  img->l1 = l1;
  if ((tables = realloc (img->tables, n * sizeof *tables)) == NULL)
    return -ENOMEM;
  img->tables = tables;
  if ((bad = realloc (img->l1_bad, bad_words * sizeof *bad)) == NULL)
    return -ENOMEM;
  img->l1_bad = bad;
  img->l1_capacity = entries;
  return 0;
}

int
table_load_l1 (struct qed_image *img)
{
  size_t n = img->l1_entries, bad_words = n / 64 + 1;  /* never 0 */
  uint64_t nbad = 0;
  int r;

  /* Allocated at open (and grown by a resize before it changes
   * anything), with the bitmap of bad entries too: a reload after a
   * repair reuses them, so that it cannot run out of memory after the
   * repair changed the tables on disk.
   */
  if ((r = table_reserve_l1 (img, n)) < 0)
    return r;
  memset (img->l1_bad, 0, bad_words * sizeof *img->l1_bad);
  r = img->file->ops->pread (img->file, img->l1, n * 8,
                             img->header.l1_table_offset);
  if (r < 0) {
    qed_error ("%s: reading the L1 table at 0x%" PRIx64 ": %s",
               image_name (img), img->header.l1_table_offset, strerror (-r));
    return r;
  }

  img->ntables = 0;
  for (size_t i = 0; i < n; i++) {
    img->l1[i] = le64toh (img->l1[i]);
    if (img->l1[i] == 0)
      continue;
    if (!l1_entry_valid (img, img->l1[i])) {
      img->l1_bad[i / 64] |= 1ull << (i % 64);
      if (nbad++ == 0)
        qed_debug ("%s: L1 entry %zu is invalid (0x%" PRIx64 "); reads and"
                   " writes of its range fail with EIO", image_name (img),
                   i, img->l1[i]);
      continue;
    }
    img->tables[img->ntables++] = img->l1[i];
  }
  qsort (img->tables, img->ntables, sizeof *img->tables, compare_u64);
  if (nbad > 1)
    qed_debug ("%s: %" PRIu64 " invalid L1 entries", image_name (img), nbad);
  return 0;
}

bool
l1_entry_is_bad (const struct qed_image *img, uint32_t index)
{
  return (img->l1_bad[index / 64] >> (index % 64)) & 1;
}

/* Does host fall inside a linked L2 table?  (Binary search.) */
static bool
inside_l2_table (const struct qed_image *img, uint64_t host)
{
  size_t lo = 0, hi = img->ntables;

  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (img->tables[mid] <= host)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo > 0 && host - img->tables[lo - 1] < img->table_bytes;
}

/* May entry index of the slice at slice_key point at a data cluster
 * there?  Past the end of the file at open only if this process linked
 * it (see new-links.c).
 */
bool
data_entry_valid (const struct qed_image *img, uint64_t entry,
                  uint64_t slice_key, unsigned index)
{
  bool inside = entry < img->open_end &&
    img->open_end - entry >= img->cluster_size;

  return entry % img->cluster_size == 0 &&
    entry >= img->header_bytes &&
    (inside || new_links_has (&img->new_links, slice_key, index)) &&
    !overlaps (entry, img->cluster_size,
               img->header.l1_table_offset, img->table_bytes) &&
    !inside_l2_table (img, entry);
}

void
tables_index_add (struct qed_image *img, uint64_t host)
{
  size_t i = img->ntables;

  /* The array has room for one table per L1 entry. */
  while (i > 0 && img->tables[i - 1] > host) {
    img->tables[i] = img->tables[i - 1];
    i--;
  }
  img->tables[i] = host;
  img->ntables++;
}

int
table_read_slice (struct qed_image *img, struct l2_slice *s)
{
  int r;

  table_assert_not_held (img);
  r = img->file->ops->pread (img->file, s->entries, QED_SLICE_BYTES, s->key);
  if (r < 0) {
    qed_error ("%s: reading L2 table at 0x%" PRIx64 ": %s",
               image_name (img), s->key, strerror (-r));
    return r;
  }
  for (unsigned i = 0; i < QED_SLICE_ENTRIES; i++)
    s->entries[i] = le64toh (s->entries[i]);
  return 0;
}

/* Mark the entries of a freshly read slice that point where no data
 * cluster may be.  Called with the table lock held.
 */
void
slice_validate (struct qed_image *img, struct l2_slice *s)
{
  table_assert_held (img);
  s->has_bad = false;
  memset (s->bad, 0, sizeof s->bad);
  for (unsigned i = 0; i < QED_SLICE_ENTRIES; i++) {
    uint64_t e = s->entries[i];
    if (e > QED_ENTRY_ZERO && !data_entry_valid (img, e, s->key, i)) {
      s->bad[i / 64] |= 1ull << (i % 64);
      s->has_bad = true;
    }
  }
}

int
table_write_entries (struct qed_image *img, uint64_t host,
                     const uint64_t *entries, size_t n)
{
  uint64_t buf[QED_SLICE_ENTRIES];
  int r;

  token_assert_held (img);
  for (size_t i = 0; i < n; i++)
    buf[i] = htole64 (entries[i]);
  r = img->file->ops->pwrite (img->file, buf, n * 8, host);
  if (r < 0)
    qed_error ("%s: writing table entries at 0x%" PRIx64 ": %s",
               image_name (img), host, strerror (-r));
  return r;
}

static int
read_chunk (struct qed_image *img, uint64_t host, uint64_t *entries, size_t n)
{
  int r = img->file->ops->pread (img->file, entries, n * 8, host);

  if (r < 0)
    return r;
  for (size_t i = 0; i < n; i++)
    entries[i] = le64toh (entries[i]);
  return 0;
}

/* Write back a chunk of entries the walk's function changed.  Clusters
 * they now point at (copies the function made) are flushed first, so
 * no entry reaches the disk before the data it points at.
 */
static int
write_chunk (struct qed_image *img, uint64_t host, uint64_t *entries,
             size_t n)
{
  struct qed_file *f = img->file;
  int r = f->ops->flush (f);

  for (size_t i = 0; i < n; i++)
    entries[i] = htole64 (entries[i]);
  if (r == 0)
    r = f->ops->pwrite (f, entries, n * 8, host);
  for (size_t i = 0; i < n; i++)
    entries[i] = le64toh (entries[i]);
  if (r < 0)
    qed_error ("%s: writing table entries at 0x%" PRIx64 ": %s",
               image_name (img), host, strerror (-r));
  return r;
}

int
table_walk (struct qed_image *img, uint64_t table, uint64_t first,
            uint64_t end, table_entry_fn fn, void *opaque, bool *unreadable)
{
  CLEANUP_FREE uint64_t *entries = malloc (WALK_CHUNK_ENTRIES * 8);
  int r;

  token_assert_held (img);
  *unreadable = false;
  if (entries == NULL)
    return -ENOMEM;
  for (uint64_t i = first; i < end; i += WALK_CHUNK_ENTRIES) {
    size_t n = end - i < WALK_CHUNK_ENTRIES ? end - i : WALK_CHUNK_ENTRIES;
    bool changed = false;

    if ((r = read_chunk (img, table + i * 8, entries, n)) < 0) {
      *unreadable = true;
      return r;
    }
    for (size_t j = 0; j < n; j++)
      if ((r = fn (opaque, i + j, &entries[j], &changed)) < 0)
        return r;
    if (changed && (r = write_chunk (img, table + i * 8, entries, n)) < 0)
      return r;
  }
  return 0;
}

int
header_write (struct qed_image *img)
{
  unsigned char buf[QED_HEADER_STRUCT_SIZE];
  int r;

  token_assert_held (img);
  qed_header_encode (&img->header, buf);
  r = img->file->ops->pwrite (img->file, buf, sizeof buf, 0);
  if (r < 0)
    qed_error ("%s: writing the header: %s", image_name (img), strerror (-r));
  return r;
}
