/* nbdkit-qed: QEMU-compatible image locking.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#ifndef QED_LOCK_H
#define QED_LOCK_H

#include "qed-file.h"

/* Move fd's locks from mode from to mode to.  Returns 0, or -EBUSY
 * after logging which process's locks conflict (fd is then left in
 * mode from): as a notice when shared locks were to become exclusive
 * (the caller may go on reading), else as an error.  Filesystems
 * without OFD locks are used unlocked.
 */
int qed_lock_apply (int fd, const char *path, enum qed_lock_mode from,
                    enum qed_lock_mode to);

#endif /* QED_LOCK_H */
