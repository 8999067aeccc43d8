/* nbdkit-qed: the network file layers' module's own glue (net-module.h):
 * its version, and where its messages go.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The module cannot call the engine's qed_log: the plugin, the filter
 * and qed-img link the engine statically and export none of it.  So
 * the module is built with its own copy of engine/log.c (local to it:
 * only qed_net_module_* is exported), whose log function is set to
 * the loader's.
 */

#include <config.h>

#include "net-module.h"

const char qed_net_module_version[] = PACKAGE_VERSION;

/* Called by the loader, holding its lock, before the module opens
 * anything.
 */
void
qed_net_module_init (qed_log_fn log)
{
  qed_set_log_function (log);
}
