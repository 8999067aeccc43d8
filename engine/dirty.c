/* nbdkit-qed: the NEED_CHECK protocol.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Without a backing file, new clusters are linked without flushing
 * their data first (see internal.h), so the image is only consistent
 * after a flush.  NEED_CHECK says so on disk: it is made durable before
 * the first link of new clusters, and cleared (after a flush) once no
 * allocating write has come for a while, or on close.  An image opened
 * writable with the bit set is checked and repaired first.
 *
 * The functions that change the bit are called holding the commit
 * token, which keeps links and header updates apart.
 */

#include <config.h>

#include <errno.h>
#include <string.h>
#include <time.h>

#include "internal.h"

uint64_t
now_ns (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int
need_check_set (struct qed_image *img)
{
  int r;

  token_assert_held (img);
  if (img->header.features & QED_F_NEED_CHECK)
    return 0;
  img->header.features |= QED_F_NEED_CHECK;
  r = header_write (img);
  if (r == 0)
    r = img->file->ops->flush (img->file);
  if (r < 0) {
    img->header.features &= ~(uint64_t) QED_F_NEED_CHECK;
    return r;
  }
  img->need_check_ours = true;
  return 0;
}

int
need_check_clear (struct qed_image *img)
{
  int r;

  token_assert_held (img);
  if (!(img->header.features & QED_F_NEED_CHECK))
    return 0;
  r = img->file->ops->flush (img->file);
  if (r < 0)
    return r;
  img->header.features &= ~(uint64_t) QED_F_NEED_CHECK;
  r = header_write (img);
  if (r == 0)
    r = img->file->ops->flush (img->file);
  if (r < 0) {
    img->header.features |= QED_F_NEED_CHECK;
    return r;
  }
  img->need_check_ours = false;
  return 0;
}

/* Is it time to mark the image clean, or to cut the tail the file grew
 * ahead (see trim_grown_tail)?  Called with the table lock.
 */
static bool
idle_and_dirty (struct qed_image *img)
{
  return !img->committing &&
    (img->need_check_ours || has_grown_tail (img)) &&
    img->inflight == NULL && img->queue == NULL &&
    now_ns () - img->last_alloc_ns >= (uint64_t) img->idle_ms * 1000000;
}

static void *
background (void *arg)
{
  struct qed_image *img = arg;

  table_lock (img);
  while (!img->bg_stop) {
    struct timespec deadline;
    uint64_t wake = now_ns () + (uint64_t) img->idle_ms * 1000000 / 4;

    deadline.tv_sec = wake / 1000000000;
    deadline.tv_nsec = wake % 1000000000;
    table_wait_until (img, &img->bg_wake, &deadline);
    if (img->bg_stop || !idle_and_dirty (img))
      continue;

    token_take (img);
    trim_grown_tail (img);
    table_unlock (img);
    if (need_check_clear (img) == 0)
      qed_debug ("%s: idle: flushed and cleared NEED_CHECK",
                 image_name (img));
    table_lock (img);
    token_give (img);
  }
  table_unlock (img);
  return NULL;
}

int
qed_image_start_background (struct qed_image *img, unsigned idle_ms)
{
  int r;

  if (img->bg_running)
    return 0;
  img->idle_ms = idle_ms ? idle_ms : 1;
  img->bg_stop = false;
  r = pthread_create (&img->bg_thread, NULL, background, img);
  if (r != 0) {
    qed_error ("%s: starting the background thread: %s", image_name (img),
               strerror (r));
    return -r;
  }
  img->bg_running = true;
  return 0;
}

void
stop_background (struct qed_image *img)
{
  if (!img->bg_running)
    return;
  table_lock (img);
  img->bg_stop = true;
  pthread_cond_signal (&img->bg_wake);
  table_unlock (img);
  pthread_join (img->bg_thread, NULL);
  img->bg_running = false;
}
