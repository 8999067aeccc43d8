/* nbdkit-qed: messages from the engine.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

static void
log_to_stderr (enum qed_log_level level, const char *msg)
{
  if (level != QED_LOG_DEBUG)
    fprintf (stderr, "qed: %s\n", msg);
}

/* Set once before any image is opened, read by every thread after. */
static qed_log_fn log_function = log_to_stderr;

void
qed_set_log_function (qed_log_fn fn)
{
  log_function = fn ? fn : log_to_stderr;
}

void
qed_log (enum qed_log_level level, const char *fmt, ...)
{
  char *msg;
  va_list ap;
  int r;

  va_start (ap, fmt);
  r = vasprintf (&msg, fmt, ap);
  va_end (ap);
  log_function (level, r == -1 ? fmt : msg);    /* fmt: out of memory */
  if (r != -1)
    free (msg);
}

const char *
qed_plural (uint64_t n, const char *one, const char *many)
{
  return n == 1 ? one : many;
}

const char *
image_name (const struct qed_image *img)
{
  return img->path ? img->path : "image";
}
