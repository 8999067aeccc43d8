/* nbdkit-qed: an nbdkit filter decoding the QED image that the plugin
 * below serves as raw bytes (nbdkit --filter=qed curl url=...).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Notes on the design:
 *
 * - One parse for the whole server.  The image is opened once, in
 *   .after_fork, over a next context that nbdkit (>= 1.26; 1.32's
 *   .after_fork receives the backend) lets a filter open outside any
 *   connection and share between them.  Connections open no context
 *   of their own on the plugin: .open does not call next, so a client
 *   costs the plugin nothing (no curl handle, no ssh session, no NBD
 *   connection), and every callback below answers from the image
 *   without touching its next argument, which is NULL.  It cannot be
 *   .get_ready: plugins start threads (the nbd plugin's reader) when
 *   a context opens, and threads do not survive nbdkit's fork.
 *
 * - Locks.  The engine serves concurrent requests on one image (its
 *   own locks, include/qed.h).  The shared context is reached only
 *   through the engine's file (next-file.c), which takes its mutex
 *   around every call into the plugin when the thread model is
 *   SERIALIZE_REQUESTS: nbdkit then serializes each connection's
 *   requests, but ours all land on one plugin handle.  The
 *   configuration and the image pointer are written before the first
 *   connection and only read after.
 *
 * - Read-only.  QED allocates clusters by growing its file, and a
 *   filter cannot grow the export below it, so can_write is false and
 *   nbdkit refuses writes, zeroes and trims with EROFS itself; the man
 *   page says how to get writes.  Backing files: backing.c.  Network
 *   backing files have their own locks and connection pools
 *   (files/nbd.c), shared by all connections like the image.
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "qed.h"
#include "qed-net.h"
#include "backing.h"
#include "log.h"
#include "next-file.h"

/* NBD's usual largest request; the preferred size is the cluster size. */
#define MAX_REQUEST (32 * 1024 * 1024)

/* The name of the image in messages. */
#define IMAGE_NAME "the plugin's export"

static char *backing;                   /* backing=: an absolute path,
                                         * or a URI */
static const char *backing_format;
static bool no_backing;
static int64_t l2_cache_size;
static bool always_check;

/* The thread model is SERIALIZE_REQUESTS (next-file.c). */
static bool serialize;

/* How network backing files are reached (backing-protocols=,
 * backing-*=, as the plugin's): any protocol but paths by default.
 */
static struct qed_net_options net_options = {
  .protocols = QED_PROTO_ALL & ~QED_PROTO_FILE,
  .cache_size = QED_NET_DEFAULT_CACHE_SIZE,
};

/* Numbers in backing-*= parsed, and reported, by nbdkit. */
static const struct qed_number_parsers nbdkit_parsers = {
  .parse_unsigned = nbdkit_parse_unsigned,
  .parse_size = nbdkit_parse_size,
};

static struct qed_opener *opener;       /* backing.c's */
static struct qed_image *image;

/* Route the engine's messages through nbdkit (nbdkit-common/log.c). */
static void
qed_load (void)
{
  qed_nbdkit_log_init ("qed filter");
}

/* Free the configuration. */
static void
qed_unload (void)
{
  free (backing);
  if (opener)
    backing_opener_free (opener);
}

/* Our parameters; the others are the plugin's. */
static int
qed_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
            const char *key, const char *value)
{
  int r;

  if (strcmp (key, "backing") == 0) {
    free (backing);
    /* A path, absolute now (nbdkit changes to / when it daemonizes);
     * a URI as it is.
     */
    backing = names_protocol (value) ? strdup (value)
      : nbdkit_realpath (value);
    if (backing == NULL) {
      if (names_protocol (value))
        nbdkit_error ("strdup: %m");
      return -1;
    }
  }
  else if ((r = qed_net_parse_option (&net_options, &nbdkit_parsers, key,
                                      value)) != 0) {
    if (r < 0)
      return -1;
    if (strcmp (key, "backing-protocols") == 0 &&
        (net_options.protocols & QED_PROTO_FILE)) {
      nbdkit_error ("backing-protocols=%s: the qed filter follows no path"
                    " from an image's header, so \"file\" cannot be"
                    " allowed; give a local backing file with backing=",
                    value);
      return -1;
    }
  }
  else if (strcmp (key, "backing-format") == 0) {
    if (strcmp (value, "raw") != 0 && strcmp (value, "qed") != 0) {
      nbdkit_error ("backing-format must be raw or qed, not %s", value);
      return -1;
    }
    backing_format = value;
  }
  else if (strcmp (key, "allow-backing") == 0) {
    if ((r = nbdkit_parse_bool (value)) == -1)
      return -1;
    no_backing = !r;
  }
  else if (strcmp (key, "l2-cache-size") == 0) {
    l2_cache_size = nbdkit_parse_size (value);
    if (l2_cache_size == -1)
      return -1;
    if (l2_cache_size < 64 * 1024) {
      nbdkit_error ("l2-cache-size must be at least 64K");
      return -1;
    }
  }
  else if (strcmp (key, "check") == 0) {
    if (strcmp (value, "always") == 0)
      always_check = true;
    else if (strcmp (value, "auto") == 0)
      always_check = false;
    else {
      nbdkit_error ("check must be auto or always, not %s", value);
      return -1;
    }
  }
  else
    return next (nxdata, key, value);
  return 0;
}

/* Check the parameters fit together. */
static int
qed_config_complete (nbdkit_next_config_complete *next,
                     nbdkit_backend *nxdata)
{
  int r;

  if (no_backing && (backing || backing_format)) {
    nbdkit_error ("allow-backing=false cannot be used with backing="
                  " or backing-format=");
    return -1;
  }
  if ((r = backing_opener_new (backing, &net_options, &opener)) < 0) {
    nbdkit_error ("backing_opener_new: %s", strerror (-r));
    return -1;
  }
  return next (nxdata);
}

#define qed_config_help \
  "backing=<FILENAME|URI>   The image's backing file (the filter follows\n" \
  "                         no path from the image's header).\n" \
  "backing-format=raw|qed   Format of the backing file.\n" \
  "allow-backing=false      Refuse images that have a backing file.\n" \
  "backing-protocols=<LIST> How backing files that images name may be\n" \
  "                         reached: nbd, nbds, nbd+unix, nbds+unix,\n" \
  "                         http, https, or none (default: all).\n" \
  "backing-timeout=<SECS>   Timeout of one request to a backing server\n" \
  "                         (default 30).\n" \
  "backing-connect-timeout=<SECS>\n" \
  "                         Timeout of a connection to one (default 10).\n" \
  "backing-connections=<N>  Connections per backing server, 1 to 8\n" \
  "                         (default 4).\n" \
  "backing-cache-size=<SIZE>\n" \
  "                         Read cache per network backing file\n" \
  "                         (default 64M; 0: none).\n" \
  "l2-cache-size=<SIZE>     Memory for cached L2 tables (default 32M).\n" \
  "check=auto|always        always: check every table at start and report\n" \
  "                         what is found; auto: as tables are read."

/* The thread model nbdkit settled on, the plugin's or stricter. */
static int
qed_get_ready (int thread_model)
{
  serialize = thread_model == NBDKIT_THREAD_MODEL_SERIALIZE_REQUESTS;
  if (serialize)
    nbdkit_debug ("qed: the plugin takes one request at a time per"
                  " connection: serializing the calls of all connections"
                  " into the shared one");
  return 0;
}

/* Open the image over a context shared by all connections. */
static int
qed_after_fork (nbdkit_backend *backend)
{
  struct qed_open_options opts = {
    .access = QED_READ_ONLY,
    .opener = opener,
    .no_backing = no_backing,
    .backing = backing,
    .backing_format = backing_format,
    .l2_cache_size = l2_cache_size,
    .always_check = always_check,
  };
  struct qed_file *file;

  if (next_file_open (backend, serialize, &file) < 0)
    return -1;
  /* The image owns the file from here, also on failure. */
  return qed_image_open_file (file, IMAGE_NAME, &opts, &image) < 0 ? -1 : 0;
}

/* Close the image, and with it the shared context. */
static void
qed_cleanup (nbdkit_backend *backend)
{
  if (image) {
    qed_image_close (image);
    image = NULL;
  }
}

/* One export: the image in the plugin's default export. */
static int
qed_list_exports (nbdkit_next_list_exports *next, nbdkit_backend *nxdata,
                  int readonly, int is_tls, struct nbdkit_exports *exports)
{
  return nbdkit_use_default_export (exports);
}

static const char *
qed_default_export (nbdkit_next_default_export *next, nbdkit_backend *nxdata,
                    int readonly, int is_tls)
{
  return "";
}

/* A connection needs nothing of its own, not even a context on the
 * plugin (next is not called).
 */
static void *
qed_open (nbdkit_next_open *next, nbdkit_context *context,
          int readonly, const char *exportname, int is_tls)
{
  if (exportname[0] != '\0') {
    nbdkit_error ("export \"%s\": the qed filter serves one image, under"
                  " the default export name \"\"", exportname);
    return NULL;
  }
  return NBDKIT_HANDLE_NOT_NEEDED;
}

/* Size of the virtual disk. */
static int64_t
qed_get_size (nbdkit_next *next, void *handle)
{
  return qed_image_size (image);
}

/* The image's geometry and backing file, for nbdinfo. */
static const char *
qed_export_description (nbdkit_next *next, void *handle)
{
  struct qed_image_info info;

  qed_image_get_info (image, &info);
  if (!qed_image_has_backing (image))
    return nbdkit_printf_intern ("QED image, virtual size %" PRIu64
                                 " bytes, cluster size %" PRIu32,
                                 info.size, info.cluster_size);
  return nbdkit_printf_intern ("QED image, virtual size %" PRIu64
                               " bytes, cluster size %" PRIu32
                               ", backing file %s (%s)",
                               info.size, info.cluster_size,
                               backing ? backing : info.backing_name,
                               backing_format ? backing_format
                               : info.backing_raw ? "raw" : "probed");
}

/* Any alignment works; whole clusters are read in one piece. */
static int
qed_block_size (nbdkit_next *next, void *handle,
                uint32_t *minimum, uint32_t *preferred, uint32_t *maximum)
{
  uint32_t cluster = qed_image_cluster_size (image);

  *minimum = 1;
  *preferred = cluster < MAX_REQUEST ? cluster : MAX_REQUEST;
  *maximum = MAX_REQUEST;
  return 0;
}

/* Read-only (see the design notes). */
static int
qed_can_write (nbdkit_next *next, void *handle)
{
  return 0;
}

/* Nothing to flush. */
static int
qed_can_flush (nbdkit_next *next, void *handle)
{
  return 0;
}

/* Where the plugin's data lives is not known here. */
static int
qed_is_rotational (nbdkit_next *next, void *handle)
{
  return 0;
}

/* Block status comes from the image's tables. */
static int
qed_can_extents (nbdkit_next *next, void *handle)
{
  return 1;
}

/* Every connection reads the one image. */
static int
qed_can_multi_conn (nbdkit_next *next, void *handle)
{
  return 1;
}

/* Cache reads the tables mapping the range (and, where the plugin
 * caches, has it cache the data).
 */
static int
qed_can_cache (nbdkit_next *next, void *handle)
{
  return NBDKIT_CACHE_NATIVE;
}

/* The engine's result as nbdkit's: 0, or -1 with *err set. */
static int
to_nbdkit (int r, int *err)
{
  if (r >= 0)
    return 0;
  *err = -r;
  return -1;
}

/* Read data. */
static int
qed_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
           uint64_t offset, uint32_t flags, int *err)
{
  return to_nbdkit (qed_image_read (image, buf, count, offset), err);
}

struct extents_request {
  struct nbdkit_extents *extents;
  bool req_one;
};

static int
add_extent (void *opaque, uint64_t offset, uint64_t length, unsigned type)
{
  struct extents_request *req = opaque;

  if (nbdkit_add_extent (req->extents, offset, length, type) == -1)
    return -errno;
  return req->req_one;          /* one extent is enough */
}

/* Block status. */
static int
qed_extents (nbdkit_next *next, void *handle, uint32_t count,
             uint64_t offset, uint32_t flags,
             struct nbdkit_extents *extents, int *err)
{
  struct extents_request req = {
    .extents = extents,
    .req_one = flags & NBDKIT_FLAG_REQ_ONE,
  };

  return to_nbdkit (qed_image_block_status (image, count, offset,
                                            add_extent, &req), err);
}

/* Prefetch the tables mapping the range, and its data. */
static int
qed_cache (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
           uint32_t flags, int *err)
{
  return to_nbdkit (qed_image_prefetch (image, count, offset), err);
}

static struct nbdkit_filter filter = {
  .name               = "qed",
  .longname           = "nbdkit QED filter",
  .load               = qed_load,
  .unload             = qed_unload,
  .config             = qed_config,
  .config_complete    = qed_config_complete,
  .config_help        = qed_config_help,
  .get_ready          = qed_get_ready,
  .after_fork         = qed_after_fork,
  .cleanup            = qed_cleanup,
  .list_exports       = qed_list_exports,
  .default_export     = qed_default_export,
  .open               = qed_open,
  .get_size           = qed_get_size,
  .export_description = qed_export_description,
  .block_size         = qed_block_size,
  .can_write          = qed_can_write,
  .can_flush          = qed_can_flush,
  .is_rotational      = qed_is_rotational,
  .can_extents        = qed_can_extents,
  .can_multi_conn     = qed_can_multi_conn,
  .can_cache          = qed_can_cache,
  .pread              = qed_pread,
  .extents            = qed_extents,
  .cache              = qed_cache,
};

NBDKIT_REGISTER_FILTER (filter)
