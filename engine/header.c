/* nbdkit-qed: the on-disk QED header.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "qed-format.h"

static uint32_t
get32 (const unsigned char *p)
{
  uint32_t v;
  memcpy (&v, p, sizeof v);
  return le32toh (v);
}

static uint64_t
get64 (const unsigned char *p)
{
  uint64_t v;
  memcpy (&v, p, sizeof v);
  return le64toh (v);
}

static void
put32 (unsigned char *p, uint32_t v)
{
  v = htole32 (v);
  memcpy (p, &v, sizeof v);
}

static void
put64 (unsigned char *p, uint64_t v)
{
  v = htole64 (v);
  memcpy (p, &v, sizeof v);
}

void
qed_header_decode (const unsigned char buf[QED_HEADER_STRUCT_SIZE],
                   struct qed_header *h)
{
  h->magic = get32 (buf + 0);
  h->cluster_size = get32 (buf + 4);
  h->table_size = get32 (buf + 8);
  h->header_size = get32 (buf + 12);
  h->features = get64 (buf + 16);
  h->compat_features = get64 (buf + 24);
  h->autoclear_features = get64 (buf + 32);
  h->l1_table_offset = get64 (buf + 40);
  h->image_size = get64 (buf + 48);
  h->backing_filename_offset = get32 (buf + 56);
  h->backing_filename_size = get32 (buf + 60);
}

void
qed_header_encode (const struct qed_header *h,
                   unsigned char buf[QED_HEADER_STRUCT_SIZE])
{
  put32 (buf + 0, h->magic);
  put32 (buf + 4, h->cluster_size);
  put32 (buf + 8, h->table_size);
  put32 (buf + 12, h->header_size);
  put64 (buf + 16, h->features);
  put64 (buf + 24, h->compat_features);
  put64 (buf + 32, h->autoclear_features);
  put64 (buf + 40, h->l1_table_offset);
  put64 (buf + 48, h->image_size);
  put32 (buf + 56, h->backing_filename_offset);
  put32 (buf + 60, h->backing_filename_size);
}

static bool
is_power_of_2 (uint64_t v)
{
  return v != 0 && (v & (v - 1)) == 0;
}

uint64_t
qed_image_size_limit (uint32_t cluster_size, uint32_t table_size)
{
  uint64_t max = qed_max_image_size (cluster_size, table_size);

  return max > INT64_MAX ? INT64_MAX - 511 : max;
}

bool
qed_cluster_size_valid (uint32_t cluster_size)
{
  return cluster_size >= QED_MIN_CLUSTER_SIZE &&
    cluster_size <= QED_MAX_CLUSTER_SIZE && is_power_of_2 (cluster_size);
}

bool
qed_table_size_valid (uint32_t table_size)
{
  return table_size >= QED_MIN_TABLE_SIZE &&
    table_size <= QED_MAX_TABLE_SIZE && is_power_of_2 (table_size);
}

uint64_t
qed_max_image_size (uint32_t cluster_size, uint32_t table_size)
{
  /* Both sizes are validated powers of two, so each factor is one and
   * the product can only overflow by exceeding 2^64.
   */
  uint64_t nelems = (uint64_t) table_size * cluster_size / 8;
  uint64_t span = nelems * cluster_size;      /* at most 2^53 */

  if (span > UINT64_MAX / nelems)
    return UINT64_MAX;
  return span * nelems;
}

int
qed_header_validate (const struct qed_header *h, uint64_t file_size,
                     char *msg, size_t msglen)
{
  uint64_t header_bytes, table_bytes, max_size;

#define FAIL(err, ...) do { snprintf (msg, msglen, __VA_ARGS__); return (err); } while (0)

  if (h->magic != QED_MAGIC)
    FAIL (-EINVAL, "not a QED image: magic is 0x%08" PRIx32
          " (expected 0x%08x)", h->magic, QED_MAGIC);
  if (h->features & ~(uint64_t) QED_FEATURE_MASK)
    FAIL (-ENOTSUP, "unsupported QED feature bits in features: 0x%" PRIx64,
          h->features & ~(uint64_t) QED_FEATURE_MASK);
  if (!qed_cluster_size_valid (h->cluster_size))
    FAIL (-EINVAL, "invalid cluster_size %" PRIu32
          " (must be a power of two from %u to %u)",
          h->cluster_size, QED_MIN_CLUSTER_SIZE, QED_MAX_CLUSTER_SIZE);
  if (!qed_table_size_valid (h->table_size))
    FAIL (-EINVAL, "invalid table_size %" PRIu32
          " (must be a power of two from %u to %u)",
          h->table_size, QED_MIN_TABLE_SIZE, QED_MAX_TABLE_SIZE);
  if (h->header_size == 0 || h->header_size > UINT32_MAX / h->cluster_size)
    FAIL (-EINVAL, "invalid header_size %" PRIu32
          " (must be at least 1 and header_size * cluster_size must fit"
          " in 32 bits)", h->header_size);
  header_bytes = (uint64_t) h->header_size * h->cluster_size;

  if (h->image_size % 512 != 0)
    FAIL (-EINVAL, "invalid image_size %" PRIu64
          " (not a multiple of 512)", h->image_size);
  max_size = qed_image_size_limit (h->cluster_size, h->table_size);
  if (h->image_size > max_size)
    FAIL (-EINVAL, "invalid image_size %" PRIu64
          " (larger than %" PRIu64 ", the maximum for this cluster_size"
          " and table_size)", h->image_size, max_size);

  table_bytes = (uint64_t) h->table_size * h->cluster_size;
  if (h->l1_table_offset % h->cluster_size != 0)
    FAIL (-EINVAL, "invalid l1_table_offset 0x%" PRIx64
          " (not a multiple of cluster_size %" PRIu32 ")",
          h->l1_table_offset, h->cluster_size);
  if (h->l1_table_offset < header_bytes)
    FAIL (-EINVAL, "invalid l1_table_offset 0x%" PRIx64
          " (inside the header, which is %" PRIu64 " bytes)",
          h->l1_table_offset, header_bytes);
  if (h->l1_table_offset > file_size ||
      file_size - h->l1_table_offset < table_bytes)
    FAIL (-EINVAL, "invalid l1_table_offset 0x%" PRIx64
          " (the %" PRIu64 "-byte L1 table does not fit in the %" PRIu64
          "-byte file)", h->l1_table_offset, table_bytes, file_size);

  if (h->features & QED_F_BACKING_FILE) {
    uint64_t end = (uint64_t) h->backing_filename_offset +
      h->backing_filename_size;

    if (h->backing_filename_size == 0)
      FAIL (-EINVAL, "invalid backing_filename_size 0 (the backing file"
            " feature is set but the name is empty)");
    if (h->backing_filename_size > QED_MAX_BACKING_NAME)
      FAIL (-EINVAL, "invalid backing_filename_size %" PRIu32
            " (longer than %u)", h->backing_filename_size,
            QED_MAX_BACKING_NAME);
    if (h->backing_filename_offset < QED_HEADER_STRUCT_SIZE ||
        end > header_bytes)
      FAIL (-EINVAL, "invalid backing_filename_offset %" PRIu32
            " (the %" PRIu32 "-byte name must lie after the header fields"
            " and inside the %" PRIu64 "-byte header area)",
            h->backing_filename_offset, h->backing_filename_size,
            header_bytes);
  }

#undef FAIL
  return 0;
}
