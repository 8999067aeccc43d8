/* nbdkit-qed: the network file layers' module, qed-net.so, and the
 * code that loads it (net-load.c).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The NBD and HTTP(S) file layers (nbd.c, http.c, with net-retry.c and
 * net-module.c) are built as a module of their own, the only object
 * that links libnbd and libcurl (and through them GnuTLS, OpenSSL,
 * libicu ...), as QEMU builds block-curl.so: a process that serves
 * local files only never maps them.  net-load.c loads the module with
 * dlopen when the first network name is opened (qed_nbd_file_open,
 * qed_http_file_open in qed-net.h), resolves the symbols below with
 * dlsym, and keeps it loaded until the process exits.
 *
 * The module exports these symbols and nothing else.  What passes
 * between the two sides (struct qed_net_options, struct qed_file and
 * its ops, enum qed_log_level) is no stable interface: the loader
 * refuses a module whose qed_net_module_version is not its own
 * PACKAGE_VERSION.
 */

#ifndef QED_NET_MODULE_H
#define QED_NET_MODULE_H

#include "qed.h"
#include "qed-file.h"
#include "qed-net.h"

/* The module's name, installed in $(pkglibdir). */
#define QED_NET_MODULE_NAME "qed-net.so"

/* The nbdkit-qed version the module was built from (PACKAGE_VERSION). */
extern const char qed_net_module_version[];

/* Called once, before anything else: the module's messages (its
 * qed_log) go to log, which is the loader's qed_log, so that they
 * reach the front end's log function.
 */
void qed_net_module_init (qed_log_fn log);

/* qed_nbd_file_open and qed_http_file_open (qed-net.h). */
int qed_net_module_nbd_open (const char *uri,
                             const struct qed_net_options *options,
                             struct qed_file **filep);
int qed_net_module_http_open (const char *url,
                              const struct qed_net_options *options,
                              struct qed_file **filep);

#endif /* QED_NET_MODULE_H */
