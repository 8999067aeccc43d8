/* nbdkit-qed: the backing files the filter opens.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#ifndef QED_FILTER_BACKING_H
#define QED_FILTER_BACKING_H

#include "qed-file.h"

/* The opener of the filter's backing files: only the name given
 * (backing=, an absolute path, or NULL for none), opened as a host
 * file.  Any other name, which could only come from an image's header,
 * is refused with a message naming it.  name is kept, not copied.
 */
void backing_opener_init (struct qed_opener *opener, const char *name);

#endif /* QED_FILTER_BACKING_H */
