/* nbdkit-qed: the images of a directory as exports (dir=).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Called from the plugin's callbacks; every function reports its
 * errors with nbdkit_error.
 */

#ifndef QED_EXPORTS_H
#define QED_EXPORTS_H

#include <stdbool.h>
#include <stddef.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "qed.h"
#include "qed-format.h"

struct export;

/* Serve the images of the directory dir (an absolute path), each
 * opened with opts (whose opener finds the images and their backing
 * files) when its first connection comes, and marked clean
 * after idle_ms without allocating writes.
 */
int exports_init (const char *dir, const struct qed_open_options *opts,
                  unsigned idle_ms);
/* Close the images still open, and free everything. */
void exports_free (void);

/* The export of that name (a client's), with its image open, for one
 * more connection; NULL on error.  Give it back with export_put.
 */
struct export *export_get (const char *name);
void export_put (struct export *e);
struct qed_image *export_image (const struct export *e);

/* Every QED image of the directory whose header can be read, with its
 * description.
 */
int exports_list (struct nbdkit_exports *exports);

/* Describe an image into buf (DESCRIPTION_SIZE bytes hold any):
 * virtual size, cluster size and backing file (backing_name, NULL:
 * none; raw: it is raw).
 */
#define DESCRIPTION_SIZE (QED_MAX_BACKING_NAME + 256)
void describe_image (char *buf, size_t size,
                     const struct qed_image_info *info,
                     const char *backing_name, bool raw);

#endif /* QED_EXPORTS_H */
