/* nbdkit-qed: creating images.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "internal.h"

/* The header of a new image, or -EINVAL after saying which option is
 * wrong.
 */
static int
new_header (const char *name, const struct qed_create_options *opts,
            struct qed_header *hp)
{
  struct qed_header h = {
    .magic = QED_MAGIC,
    .cluster_size = opts->cluster_size ? opts->cluster_size
      : QED_DEFAULT_CLUSTER_SIZE,
    .table_size = opts->table_size ? opts->table_size : QED_DEFAULT_TABLE_SIZE,
    .header_size = 1,
    .image_size = (opts->size + 511) & ~UINT64_C (511),
  };
  size_t name_len = opts->backing_file ? strlen (opts->backing_file) : 0;
  uint64_t max;

  if (!qed_cluster_size_valid (h.cluster_size)) {
    qed_error ("%s: cluster size %" PRIu32 " is invalid: it must be a power"
               " of two from %u to %u", name, h.cluster_size, QED_MIN_CLUSTER_SIZE,
               QED_MAX_CLUSTER_SIZE);
    return -EINVAL;
  }
  if (!qed_table_size_valid (h.table_size)) {
    qed_error ("%s: table size %" PRIu32 " is invalid: it must be a power"
               " of two from %u to %u", name, h.table_size, QED_MIN_TABLE_SIZE,
               QED_MAX_TABLE_SIZE);
    return -EINVAL;
  }
  max = qed_image_size_limit (h.cluster_size, h.table_size);
  if (opts->size > max) {
    qed_error ("%s: size %" PRIu64 " is too large: at most %" PRIu64
               " with these cluster and table sizes", name, opts->size, max);
    return -EINVAL;
  }
  if (opts->backing_file) {
    if (name_len == 0 || name_len > h.cluster_size - QED_HEADER_STRUCT_SIZE ||
        name_len > QED_MAX_BACKING_NAME) {
      qed_error ("%s: backing file name is empty or too long (%zu bytes)",
                 name, name_len);
      return -EINVAL;
    }
    h.features |= QED_F_BACKING_FILE;
    if (opts->backing_format && strcmp (opts->backing_format, "raw") == 0)
      h.features |= QED_F_BACKING_FORMAT_NO_PROBE;
    h.backing_filename_offset = QED_HEADER_STRUCT_SIZE;
    h.backing_filename_size = name_len;
  }
  h.l1_table_offset = h.cluster_size;
  *hp = h;
  return 0;
}

int
qed_create_file (struct qed_file *file, const struct qed_create_options *opts)
{
  unsigned char buf[QED_HEADER_STRUCT_SIZE];
  struct qed_header h;
  size_t name_len;
  int r;

  if ((r = new_header ("image", opts, &h)) < 0)
    return r;
  name_len = h.backing_filename_size;

  /* Header cluster, then an empty L1 table, as QEMU lays it out; the
   * table's zeros come from extending the file.
   */
  if (file->ops->truncate == NULL) {
    qed_error ("creating the image: the file cannot change size");
    return -ENOTSUP;
  }
  qed_header_encode (&h, buf);
  if ((r = file->ops->truncate (file, 0)) < 0 ||
      (r = file->ops->truncate (file, (uint64_t) h.cluster_size *
                                (1 + h.table_size))) < 0 ||
      (r = file->ops->pwrite (file, buf, sizeof buf, 0)) < 0 ||
      (name_len > 0 &&
       (r = file->ops->pwrite (file, opts->backing_file, name_len,
                               QED_HEADER_STRUCT_SIZE)) < 0) ||
      (r = file->ops->flush (file)) < 0) {
    qed_error ("creating the image: %s", strerror (-r));
    return r;
  }
  return 0;
}

int
qed_create (const char *name, const struct qed_create_options *opts)
{
  const struct qed_opener *opener = opts->opener ? opts->opener
    : &qed_posix_opener;
  struct qed_header h;
  struct qed_file *file;
  int r;

  /* Refuse bad options before the file is touched. */
  if ((r = new_header (name, opts, &h)) < 0)
    return r;
  r = opener->open (opener, name, QED_OPEN_WRITE | QED_OPEN_CREATE, &file);
  if (r < 0) {
    qed_error ("%s: %s", name, strerror (-r));
    return r;
  }
  /* Do not truncate an image somebody is using. */
  r = file_lock (file, QED_LOCK_EXCLUSIVE);
  if (r == 0) {
    r = qed_create_file (file, opts);
    if (r < 0)
      qed_error ("%s: could not create the image", name);
  }
  file->ops->close (file);
  return r;
}
