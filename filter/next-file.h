/* nbdkit-qed: the QED file the filter decodes, read from the plugin
 * below through nbdkit's next context.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#ifndef QED_NEXT_FILE_H
#define QED_NEXT_FILE_H

#include <stdbool.h>

#include <nbdkit-filter.h>

#include "qed-file.h"

/* Open the plugin's default export read-only in a context shared by
 * every connection (nbdkit_next_context_open with shared set), and
 * make it a read-only qed_file: pread, get_size, and prefetch when
 * the plugin caches natively.  Must be called outside any connection
 * (.after_fork).  serialize: hold a mutex around every call into the
 * context, for plugins that take one request at a time
 * (NBDKIT_THREAD_MODEL_SERIALIZE_REQUESTS).  Returns 0, or a negative
 * errno after nbdkit_error said why.  Closing the file closes the
 * context.
 */
int next_file_open (nbdkit_backend *backend, bool serialize,
                    struct qed_file **filep);

#endif /* QED_NEXT_FILE_H */
