/* nbdkit-qed: reads.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "internal.h"

int
qed_image_read (struct qed_image *img, void *buf, uint64_t count,
                uint64_t offset)
{
  PASS_GATE_FOR_CURRENT_SCOPE (img);
  int r = check_range (img, count, offset, "read");

  return r < 0 ? r : image_read (img, buf, count, offset);
}

int
image_read (struct qed_image *img, void *buf, uint64_t count, uint64_t offset)
{
  char *p = buf;

  while (count > 0) {
    struct run run;
    int r;

    r = lookup_run_taking_lock (img, offset, count, &run);
    if (r < 0)
      return r;

    switch (run.kind) {
    case RUN_DATA:
      r = img->file->ops->pread (img->file, p, run.length, run.host);
      if (r < 0)
        qed_error ("%s: reading %" PRIu64 " bytes at 0x%" PRIx64 ": %s",
                   image_name (img), run.length, run.host, strerror (-r));
      break;
    case RUN_UNALLOC:
      if (img->backing) {
        r = backing_read (img->backing, p, run.length, offset);
        break;
      }
      /* fallthrough */
    case RUN_ZERO:
      memset (p, 0, run.length);
      break;
    case RUN_BAD:
      r = -EIO;
      break;
    }
    if (r < 0)
      return r;
    p += run.length;
    offset += run.length;
    count -= run.length;
  }
  return 0;
}

int
qed_image_prefetch (struct qed_image *img, uint64_t count, uint64_t offset)
{
  PASS_GATE_FOR_CURRENT_SCOPE (img);
  int r = check_range (img, count, offset, "prefetch");

  while (r == 0 && count > 0) {
    struct run run;

    /* The lookup itself loads the L2 slices into the cache. */
    r = lookup_run_taking_lock (img, offset, count, &run);
    if (r < 0)
      return r;

    switch (run.kind) {
    case RUN_DATA:
      r = file_prefetch (img->file, run.host, run.length);
      if (r < 0)
        qed_error ("%s: prefetching %" PRIu64 " bytes at 0x%" PRIx64 ": %s",
                   image_name (img), run.length, run.host, strerror (-r));
      break;
    case RUN_UNALLOC:
      if (img->backing)
        r = backing_prefetch (img->backing, run.length, offset);
      break;
    case RUN_ZERO:
      break;
    case RUN_BAD:
      r = -EIO;
      break;
    }
    offset += run.length;
    count -= run.length;
  }
  return r;
}
