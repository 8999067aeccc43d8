/* nbdkit-qed: scoped cleanups, after nbdkit's common/include/cleanup.h.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * (The gate has its own: PASS_GATE_FOR_CURRENT_SCOPE in internal.h.)
 */

#ifndef QED_CLEANUP_H
#define QED_CLEANUP_H

#include <stdlib.h>

static inline void
cleanup_free (void *ptr)
{
  free (*(void **) ptr);
}
#define CLEANUP_FREE __attribute__ ((cleanup (cleanup_free)))

#endif /* QED_CLEANUP_H */
