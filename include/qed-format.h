/* nbdkit-qed: the on-disk QED header.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#ifndef QED_HEADER_H
#define QED_HEADER_H

#include <stdbool.h>
#include <stdint.h>

#define QED_MAGIC 0x00444551u           /* "QED\0" little-endian */
#define QED_HEADER_STRUCT_SIZE 64       /* the fixed fields */

#define QED_MIN_CLUSTER_SIZE (4u * 1024)
#define QED_MAX_CLUSTER_SIZE (64u * 1024 * 1024)
#define QED_DEFAULT_CLUSTER_SIZE (64u * 1024)
#define QED_MIN_TABLE_SIZE 1u
#define QED_MAX_TABLE_SIZE 16u
#define QED_DEFAULT_TABLE_SIZE 4u

/* Feature bits. */
#define QED_F_BACKING_FILE 0x1u
#define QED_F_NEED_CHECK 0x2u
#define QED_F_BACKING_FORMAT_NO_PROBE 0x4u
#define QED_FEATURE_MASK \
  (QED_F_BACKING_FILE | QED_F_NEED_CHECK | QED_F_BACKING_FORMAT_NO_PROBE)
#define QED_COMPAT_FEATURE_MASK 0u
#define QED_AUTOCLEAR_FEATURE_MASK 0u

/* Longest backing file name accepted (QEMU's limit is PATH_MAX). */
#define QED_MAX_BACKING_NAME 4095u

/* Special L2 entries. */
#define QED_ENTRY_UNALLOCATED 0u
#define QED_ENTRY_ZERO 1u

/* The header fields in CPU byte order. */
struct qed_header {
  uint32_t magic;
  uint32_t cluster_size;
  uint32_t table_size;
  uint32_t header_size;
  uint64_t features;
  uint64_t compat_features;
  uint64_t autoclear_features;
  uint64_t l1_table_offset;
  uint64_t image_size;
  uint32_t backing_filename_offset;
  uint32_t backing_filename_size;
};

void qed_header_decode (const unsigned char buf[QED_HEADER_STRUCT_SIZE],
                        struct qed_header *h);
void qed_header_encode (const struct qed_header *h,
                        unsigned char buf[QED_HEADER_STRUCT_SIZE]);

/* Largest virtual size the geometry can address, saturating at
 * UINT64_MAX instead of overflowing.
 */
uint64_t qed_max_image_size (uint32_t cluster_size, uint32_t table_size);
/* The largest image_size accepted (when opening, creating, resizing):
 * qed_max_image_size, capped where QEMU and NBD stop (offsets are
 * signed 64-bit numbers) at a multiple of 512.
 */
uint64_t qed_image_size_limit (uint32_t cluster_size, uint32_t table_size);

bool qed_cluster_size_valid (uint32_t cluster_size);
bool qed_table_size_valid (uint32_t table_size);

/* Check every field against the format's rules and a file of
 * file_size bytes.  On failure returns -EINVAL (-ENOTSUP for unknown
 * feature bits) and writes a message naming the field and its value
 * into msg.
 */
int qed_header_validate (const struct qed_header *h, uint64_t file_size,
                         char *msg, size_t msglen);

#endif /* QED_HEADER_H */
