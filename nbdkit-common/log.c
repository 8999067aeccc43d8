/* nbdkit-qed: the engine's messages through nbdkit (log.h).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Built into the plugin and into the filter: each includes the header
 * of its own kind, and this file uses only what nbdkit-plugin.h and
 * nbdkit-filter.h share (nbdkit_error, nbdkit_debug).
 */

#include <config.h>

#include <stdbool.h>
#include <stdio.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "qed.h"
#include "log.h"

/* Set once in .load, read by every thread after. */
static const char *front_end_name = "qed";

/* Set when the engine logs an error. */
static bool error_logged;

static void
log_to_nbdkit (enum qed_log_level level, const char *msg)
{
  if (level == QED_LOG_ERROR)
    __atomic_store_n (&error_logged, true, __ATOMIC_RELAXED);
  switch (level) {
  case QED_LOG_DEBUG:
    nbdkit_debug ("%s", msg);
    break;
  case QED_LOG_NOTICE:
    fprintf (stderr, "nbdkit: %s: notice: %s\n", front_end_name, msg);
    break;
  case QED_LOG_ERROR:
    nbdkit_error ("%s", msg);
    break;
  }
}

void
qed_nbdkit_log_init (const char *name)
{
  front_end_name = name;
  qed_set_log_function (log_to_nbdkit);
}

bool
qed_nbdkit_error_logged (void)
{
  return __atomic_load_n (&error_logged, __ATOMIC_RELAXED);
}
