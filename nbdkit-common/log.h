/* nbdkit-qed: the engine's messages through nbdkit, for the plugin
 * and the filter (nbdkit-common/log.c).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * nbdkit has errors and debug messages only: errors go to
 * nbdkit_error, debug messages to nbdkit_debug, and a notice (a
 * repair, a fallback), which is no error, to stderr in nbdkit's own
 * format ("nbdkit: NAME: notice: MESSAGE"), where nbdkit -f sends its
 * errors too.
 */

#ifndef QED_NBDKIT_LOG_H
#define QED_NBDKIT_LOG_H

#include <stdbool.h>

/* Route the engine's messages through nbdkit, naming the front end
 * as name in notices ("qed", "qed filter"; a string that lives as long
 * as the process).  Called from .load, before any other thread runs.
 */
void qed_nbdkit_log_init (const char *name);

/* Whether the engine has logged an error since then, from any thread:
 * the plugin explains a failure at start that the engine did not.
 */
bool qed_nbdkit_error_logged (void);

#endif /* QED_NBDKIT_LOG_H */
