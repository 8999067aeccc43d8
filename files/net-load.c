/* nbdkit-qed: the network file layers, loaded on the first network
 * name (net-module.h).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * qed_nbd_file_open and qed_http_file_open load qed-net.so the first
 * time one of them is called (net.c's net_open calls them for the
 * first network name, http-read for its URL) and then call into it.
 * A module that cannot be loaded fails that open with ELIBACC (a
 * module of another version: ELIBBAD) and a message naming the name,
 * the module's path and why; the next network name tries again.  A
 * loaded module stays loaded until the process exits: its files may
 * outlive any opener, and libcurl's global state is never torn down.
 *
 * Where the module is, the first of:
 *
 * 1. $QED_NET_MODULE when it is set and not empty: that file only
 *    (the test suite points it at the build tree's module, and at a
 *    missing one).  Not in a setuid or setgid process
 *    (secure_getenv).
 *
 * 2. The build tree's module, when the object this code is linked
 *    into (the plugin, the filter, qed-img, a benchmark) runs from a
 *    build tree: the object's directory, without libtool's .libs/, is
 *    a directory of the build tree, and the one above it holds
 *    config.status (the top of a build tree, which no installation
 *    has); the module is files/.libs/qed-net.so there.  The object's
 *    path comes from /proc/self/maps, which has it absolute: nbdkit
 *    dlopens the plugin and the filter by the path the user gave,
 *    relative or not, and changes to / when it daemonizes.  So the
 *    README's "nbdkit ./plugin/.libs/nbdkit-qed-plugin.so ..." and
 *    build/qed-img/qed-img follow network names without installing,
 *    and never load another build's or an installed module.
 *
 * 3. QED_NET_MODULE_PATH, $(pkglibdir)/qed-net.so, where make install
 *    and the Debian package put it.
 */

#include <config.h>

#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qed.h"
#include "qed-net.h"
#include "net-module.h"

#ifndef QED_NET_MODULE_PATH
#error "QED_NET_MODULE_PATH must be defined (files/Makefile.am)"
#endif

static pthread_mutex_t module_lock = PTHREAD_MUTEX_INITIALIZER;
typedef __typeof__ (qed_net_module_init) init_fn;
typedef __typeof__ (qed_net_module_nbd_open) open_fn;
/* Under module_lock: both set once the module is loaded (never unset),
 * else both NULL.
 */
static open_fn *module_nbd_open;
static open_fn *module_http_open;

/* The module's messages, through the front end's log function. */
static void
module_log (enum qed_log_level level, const char *msg)
{
  qed_log (level, "%s", msg);
}

/* The absolute path of the file mapped at addr, from /proc/self/maps
 * (malloc'd), or NULL.
 */
static char *
mapped_file (uintptr_t addr)
{
  FILE *fp = fopen ("/proc/self/maps", "re");
  char *line = NULL, *path = NULL, *p;
  size_t size = 0;
  uintptr_t start, end;
  ssize_t len;

  if (fp == NULL)
    return NULL;
  while ((len = getline (&line, &size, fp)) > 0) {
    if (sscanf (line, "%" SCNxPTR "-%" SCNxPTR, &start, &end) != 2 ||
        addr < start || addr >= end)
      continue;
    /* start-end perms offset dev inode /path */
    if ((p = strchr (line, '/')) != NULL) {
      p[strcspn (p, "\n")] = '\0';
      path = strdup (p);
    }
    break;
  }
  free (line);
  fclose (fp);
  return path;
}

/* The build tree's module, when this code runs from a build tree (see
 * the top of this file), malloc'd; else NULL.
 */
static char *
build_tree_module (void)
{
  char *object = mapped_file ((uintptr_t) &build_tree_module);
  char *slash, *top = NULL, *status = NULL, *module = NULL;

  if (object == NULL || (slash = strrchr (object, '/')) == NULL)
    goto out;
  *slash = '\0';                        /* its directory */
  slash = strrchr (object, '/');
  if (slash && strcmp (slash, "/.libs") == 0) {
    *slash = '\0';
    slash = strrchr (object, '/');
  }
  if (slash == NULL)
    goto out;
  top = strndup (object, slash - object);
  if (top == NULL ||
      asprintf (&status, "%s/config.status", top) == -1) {
    status = NULL;
    goto out;
  }
  if (access (status, F_OK) == 0 &&
      asprintf (&module, "%s/files/.libs/%s", top,
                QED_NET_MODULE_NAME) == -1)
    module = NULL;
 out:
  free (object);
  free (top);
  free (status);
  return module;
}

/* Load the module, for name (the name being opened, for messages).
 * Called with module_lock held.
 */
static int
load_module (const char *name)
{
  const char *env = secure_getenv ("QED_NET_MODULE");
  char *found = NULL;
  const char *path, *version;
  void *handle;
  init_fn *init;
  int r = -ELIBBAD;

  if (env && *env)
    path = env;
  else if ((found = build_tree_module ()) != NULL)
    path = found;
  else
    path = QED_NET_MODULE_PATH;

  /* RTLD_NOW: a missing symbol of libnbd or libcurl fails here, not
   * in the middle of a read.
   */
  handle = dlopen (path, RTLD_NOW | RTLD_LOCAL);
  if (handle == NULL) {
    qed_log (QED_LOG_ERROR, "%s: cannot load the network file layer %s: %s",
             name, path, dlerror ());
    free (found);
    return -ELIBACC;
  }
  if ((version = dlsym (handle, "qed_net_module_version")) == NULL ||
      (init = (init_fn *) dlsym (handle, "qed_net_module_init")) == NULL ||
      (module_nbd_open = (open_fn *)
         dlsym (handle, "qed_net_module_nbd_open")) == NULL ||
      (module_http_open = (open_fn *)
         dlsym (handle, "qed_net_module_http_open")) == NULL)
    qed_log (QED_LOG_ERROR, "%s: cannot load the network file layer %s: %s",
             name, path, dlerror ());
  else if (strcmp (version, PACKAGE_VERSION) != 0)
    qed_log (QED_LOG_ERROR, "%s: cannot load the network file layer %s:"
             " it is of %s %s, not %s", name, path, PACKAGE_NAME, version,
             PACKAGE_VERSION);
  else {
    init (module_log);
    qed_log (QED_LOG_DEBUG, "loaded the network file layer %s", path);
    r = 0;
  }
  if (r < 0) {
    module_nbd_open = NULL;
    module_http_open = NULL;
    dlclose (handle);
  }
  free (found);
  return r;
}

/* Open name with the module's open for HTTP(S) (http) or NBD, loading
 * the module first if need be.
 */
static int
module_open (const char *name, bool http,
             const struct qed_net_options *options, struct qed_file **filep)
{
  open_fn *open_name = NULL;
  int r = 0;

  pthread_mutex_lock (&module_lock);
  if (module_nbd_open == NULL)
    r = load_module (name);
  if (r == 0)
    open_name = http ? module_http_open : module_nbd_open;
  pthread_mutex_unlock (&module_lock);
  return r < 0 ? r : open_name (name, options, filep);
}

int
qed_nbd_file_open (const char *uri, const struct qed_net_options *options,
                   struct qed_file **filep)
{
  return module_open (uri, false, options, filep);
}

int
qed_http_file_open (const char *url, const struct qed_net_options *options,
                    struct qed_file **filep)
{
  return module_open (url, true, options, filep);
}
