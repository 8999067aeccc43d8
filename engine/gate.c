/* nbdkit-qed: the gate between requests and whole-image calls.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Requests pass the gate with two atomic operations while it is open:
 * they count themselves in, then look whether it is closed.  A closer
 * marks it closed, then waits until the count drops to zero.  Both
 * sides write first and read second (sequentially consistent), so at
 * least one of them sees the other: a request that comes in as the
 * gate closes either backs out and waits for it to open, or is
 * counted, and the closer waits for it.  Closers take turns under the
 * mutex.
 */

#include <config.h>

#include "internal.h"

void
gate_init (struct gate *g)
{
  g->inside = 0;
  g->closed = false;
  pthread_mutex_init (&g->lock, NULL);
  pthread_cond_init (&g->drained, NULL);
  pthread_cond_init (&g->opened, NULL);
}

void
gate_destroy (struct gate *g)
{
  pthread_cond_destroy (&g->opened);
  pthread_cond_destroy (&g->drained);
  pthread_mutex_destroy (&g->lock);
}

void
gate_leave (struct gate *g)
{
  if (__atomic_sub_fetch (&g->inside, 1, __ATOMIC_SEQ_CST) == 0 &&
      __atomic_load_n (&g->closed, __ATOMIC_SEQ_CST)) {
    pthread_mutex_lock (&g->lock);
    pthread_cond_broadcast (&g->drained);
    pthread_mutex_unlock (&g->lock);
  }
}

void
gate_enter (struct gate *g)
{
  for (;;) {
    __atomic_add_fetch (&g->inside, 1, __ATOMIC_SEQ_CST);
    if (!__atomic_load_n (&g->closed, __ATOMIC_SEQ_CST))
      return;
    gate_leave (g);
    pthread_mutex_lock (&g->lock);
    while (g->closed)
      pthread_cond_wait (&g->opened, &g->lock);
    pthread_mutex_unlock (&g->lock);
  }
}

/* Not from inside the gate: the caller would wait for itself. */
void
gate_close (struct gate *g)
{
  pthread_mutex_lock (&g->lock);
  while (g->closed)             /* another closer's turn */
    pthread_cond_wait (&g->opened, &g->lock);
  __atomic_store_n (&g->closed, true, __ATOMIC_SEQ_CST);
  while (__atomic_load_n (&g->inside, __ATOMIC_SEQ_CST) != 0)
    pthread_cond_wait (&g->drained, &g->lock);
  pthread_mutex_unlock (&g->lock);
}

void
gate_open (struct gate *g)
{
  pthread_mutex_lock (&g->lock);
  __atomic_store_n (&g->closed, false, __ATOMIC_SEQ_CST);
  pthread_cond_broadcast (&g->opened);
  pthread_mutex_unlock (&g->lock);
}
