/* nbdkit-qed: scoped cleanups, after nbdkit's common/include/cleanup.h.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#ifndef QED_CLEANUP_H
#define QED_CLEANUP_H

#include <assert.h>
#include <pthread.h>
#include <stdlib.h>

static inline void
cleanup_free (void *ptr)
{
  free (*(void **) ptr);
}
#define CLEANUP_FREE __attribute__ ((cleanup (cleanup_free)))

static inline void
cleanup_unlock (pthread_mutex_t **ptr)
{
  int r = pthread_mutex_unlock (*ptr);
  assert (r == 0);
  (void) r;
}

#define QED_CONCAT_(a, b) a##b
#define QED_CONCAT(a, b) QED_CONCAT_ (a, b)

/* Hold mutex until the end of the enclosing scope. */
#define ACQUIRE_LOCK_FOR_CURRENT_SCOPE(mutex)                           \
  __attribute__ ((cleanup (cleanup_unlock)))                            \
  pthread_mutex_t *QED_CONCAT (scoped_lock_, __COUNTER__) = (mutex);    \
  do {                                                                  \
    int r_ = pthread_mutex_lock (mutex);                                \
    assert (r_ == 0);                                                   \
    (void) r_;                                                          \
  } while (0)

#endif /* QED_CLEANUP_H */
