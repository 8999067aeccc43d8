/* qed-img: images that commands read, QED or raw.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qed-img.h"

int
source_open (struct source *src, const char *name, const char *format,
             const char *relative_to, bool force_share)
{
  const struct qed_opener *opener = &qed_posix_opener;
  bool is_qed;
  int r;

  *src = (struct source) { NULL };
  if (format && strcmp (format, "qed") != 0 && strcmp (format, "raw") != 0)
    return fail (name, "format %s is not supported (raw or qed)", format);
  if ((r = opener->resolve (opener, name, relative_to, &src->name)) < 0)
    return fail (name, "%s", strerror (-r));
  if ((r = opener->open (opener, src->name, 0, &src->raw)) < 0) {
    fail (src->name, "%s", strerror (-r));
    goto fail;
  }
  if (format)
    is_qed = strcmp (format, "qed") == 0;
  else if (qed_probe_file (src->raw, src->name, &is_qed) < 0)
    goto fail;

  if (is_qed) {
    struct qed_open_options opts = {
      .access = QED_READ_ONLY,
      .no_locking = force_share,
    };

    r = qed_image_open_file (src->raw, src->name, &opts, &src->qed);
    src->raw = NULL;            /* the image owns it, also on failure */
    if (r < 0)
      goto fail;
    src->size = qed_image_size (src->qed);
    return 0;
  }
  if (!force_share && src->raw->ops->lock &&
      src->raw->ops->lock (src->raw, QED_LOCK_SHARED) < 0)
    goto fail;
  if ((r = src->raw->ops->get_size (src->raw, &src->size)) < 0) {
    fail (src->name, "%s", strerror (-r));
    goto fail;
  }
  return 0;

 fail:
  source_close (src);
  return 1;
}

int
source_read (struct source *src, void *buf, uint64_t count, uint64_t offset)
{
  int r;

  if (src->qed)
    return qed_image_read (src->qed, buf, count, offset);
  r = src->raw->ops->pread (src->raw, buf, count, offset);
  if (r < 0)
    fail (src->name, "reading %" PRIu64 " bytes at offset %" PRIu64 ": %s",
          count, offset, strerror (-r));
  return r;
}

void
source_close (struct source *src)
{
  if (src->qed)
    qed_image_close (src->qed);
  if (src->raw)
    src->raw->ops->close (src->raw);
  free (src->name);
  *src = (struct source) { NULL };
}
