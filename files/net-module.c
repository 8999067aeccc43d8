/* nbdkit-qed: the network file layers' module's own glue (net-module.h):
 * its version, and its qed_log, which hands every message to the
 * process that loaded it.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The module cannot call the engine's qed_log: the plugin, the filter
 * and qed-img link the engine statically and export none of it.  This
 * qed_log, local to the module (only qed_net_module_* is exported),
 * formats the message and passes it to the loader's.
 */

#include <config.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "net-module.h"

const char qed_net_module_version[] = PACKAGE_VERSION;

/* Set by qed_net_module_init before the module opens anything (the
 * loader holds its lock around both), read by every thread after.
 */
static qed_log_fn loader_log;

void
qed_net_module_init (qed_log_fn log)
{
  loader_log = log;
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
  loader_log (level, r == -1 ? fmt : msg);      /* fmt: out of memory */
  if (r != -1)
    free (msg);
}
