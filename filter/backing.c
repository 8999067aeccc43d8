/* nbdkit-qed: the backing files the filter opens.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The filter decodes an image that came from elsewhere (a web server,
 * another host), whose header was written by whoever made it: a
 * header naming /etc/shadow, or a path that exists only on the
 * image's home host, must not make this server open it.  So unlike
 * the plugin, which serves the operator's own files, the filter opens
 * no path that a header names: a local backing file is the one the
 * operator gives with backing=.  URIs in headers (nbd://, http://, ...)
 * are followed through the network opener (files/net.c), within the
 * operator's backing-protocols= list, which never has "file" here.
 */

#include <config.h>

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "backing.h"

struct backing_opener {
  struct qed_opener base;       /* first, so a qed_opener * converts */
  const char *backing;          /* backing=, or NULL */
  struct qed_opener *net;
};

bool
names_protocol (const char *name)
{
  return name[strcspn (name, ":/")] == ':';
}

/* The path the operator gave as it is; other paths only relative to an
 * image reached by URI (they name a file on its server, and the
 * network opener makes them URIs); the rest as the network opener
 * resolves it.
 */
static int
backing_resolve (const struct qed_opener *opener, const char *name,
                 const char *base, char **resolved)
{
  const struct backing_opener *bo = (const struct backing_opener *) opener;

  if (bo->backing && !names_protocol (name) &&
      strcmp (name, bo->backing) == 0) {
    *resolved = strdup (name);
    return *resolved ? 0 : -ENOMEM;
  }
  if (!names_protocol (name) && !(base && strstr (base, "://"))) {
    nbdkit_error ("%s names the backing file \"%s\", which the qed filter"
                  " does not open: it follows no path from an image's"
                  " header; give the backing file with backing=FILENAME"
                  " (and backing-format=raw|qed)",
                  base ? base : "the image", name);
    return -EPERM;
  }
  return bo->net->resolve (bo->net, name, base, resolved);
}

/* Every backing file is read-only. */
static int
backing_open (const struct qed_opener *opener, const char *name,
              unsigned flags, struct qed_file **filep)
{
  const struct backing_opener *bo = (const struct backing_opener *) opener;

  return bo->net->open (bo->net, name,
                        flags & ~(QED_OPEN_WRITE | QED_OPEN_CREATE), filep);
}

int
backing_opener_new (const char *backing,
                    const struct qed_net_options *options,
                    struct qed_opener **openerp)
{
  struct backing_opener *bo;
  int r;

  bo = calloc (1, sizeof *bo);
  if (bo == NULL)
    return -ENOMEM;
  if ((r = qed_net_opener_new (options, &bo->net)) < 0) {
    free (bo);
    return r;
  }
  bo->base.resolve = backing_resolve;
  bo->base.open = backing_open;
  bo->base.opaque = bo;
  bo->backing = backing;
  *openerp = &bo->base;
  return 0;
}

void
backing_opener_free (struct qed_opener *opener)
{
  struct backing_opener *bo = (struct backing_opener *) opener;

  qed_net_opener_free (bo->net);
  free (bo);
}
