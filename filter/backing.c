/* nbdkit-qed: the backing files the filter opens.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The filter decodes an image that came from elsewhere (a web server,
 * another host), whose header was written by whoever made it: a
 * header naming /etc/shadow, or a path that exists only on the
 * image's home host, must not make this server open it.  So unlike
 * the plugin, which serves the operator's own files and follows their
 * headers, the filter opens no name from a header: the operator names
 * the backing file with backing=.
 */

#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "backing.h"

/* The name the operator gave, or refuse. */
static int
backing_resolve (const struct qed_opener *opener, const char *name,
                 const char *base, char **resolved)
{
  const char *allowed = opener->opaque;

  if (allowed == NULL || strcmp (name, allowed) != 0) {
    nbdkit_error ("%s names the backing file \"%s\", which the qed filter"
                  " does not open: it follows no name from an image's"
                  " header; give the backing file with backing=FILENAME"
                  " (and backing-format=raw|qed)",
                  base ? base : "the image", name);
    return -EPERM;
  }
  *resolved = strdup (name);
  return *resolved ? 0 : -ENOMEM;
}

/* A host file, read-only. */
static int
backing_open (const struct qed_opener *opener, const char *name,
              unsigned flags, struct qed_file **filep)
{
  return qed_posix_opener.open (&qed_posix_opener, name,
                                flags & ~(QED_OPEN_WRITE | QED_OPEN_CREATE),
                                filep);
}

void
backing_opener_init (struct qed_opener *opener, const char *name)
{
  opener->resolve = backing_resolve;
  opener->open = backing_open;
  opener->opaque = (void *) name;
}
