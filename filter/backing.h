/* nbdkit-qed: the backing files the filter opens.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#ifndef QED_FILTER_BACKING_H
#define QED_FILTER_BACKING_H

#include <stdbool.h>

#include "qed-file.h"
#include "qed-net.h"

/* Whether a name is a protocol's (nbd://..., nbd:HOST:PORT, json:...)
 * rather than a path: as for QEMU, a ':' before any '/'.
 */
bool names_protocol (const char *name);

/* The opener of the filter's backing files.  It opens the backing file
 * the operator gave (backing: backing=, an absolute path or a URI;
 * NULL: none), and the URIs that images name when options allow their
 * protocol (options->protocols must not have QED_PROTO_FILE), all
 * read-only.  A path that an image's header names is refused with a
 * message naming it, and so is a URI of a protocol not allowed, before
 * any connection.  backing is kept, not copied.  Returns 0 or a
 * negative errno.
 */
int backing_opener_new (const char *backing,
                        const struct qed_net_options *options,
                        struct qed_opener **openerp);
void backing_opener_free (struct qed_opener *opener);

#endif /* QED_FILTER_BACKING_H */
