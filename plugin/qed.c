/* nbdkit-qed: an nbdkit plugin serving QEMU QED disk images.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The callbacks only map NBD requests onto the engine (engine/).  With
 * file=, one image, opened in .get_ready, is shared by every
 * connection; with dir=, each connection gets the image its export
 * name names, shared with the other connections to it (exports.c).
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "qed.h"
#include "qed-net.h"
#include "exports.h"
#include "log.h"

/* Milliseconds without allocating writes before the image is marked
 * clean (QEMU waits 5 seconds too).
 */
#define IDLE_MS 5000

/* NBD's usual largest request; the preferred size is the cluster size. */
#define MAX_REQUEST (32 * 1024 * 1024)

static char *filename;
static char *dir;                       /* dir=: serve its images */
static char *default_export;            /* dir=: served for the name "" */
static char *backing;
static const char *backing_format;
static bool no_backing;
static int64_t l2_cache_size;
static bool no_locking;
static bool always_check;
/* detect-zeroes=: writes of zeros become zero requests (on), which
 * may also give host space back (unmap).
 */
static enum { DETECT_OFF, DETECT_ON, DETECT_UNMAP } detect_zeroes;
/* cache=, as qemu-nbd's: writes durable only when the client flushes
 * (writeback), always before they are acknowledged (writethrough),
 * through direct I/O (none), or never (unsafe: flushes are ignored).
 */
static enum {
  CACHE_WRITEBACK, CACHE_WRITETHROUGH, CACHE_NONE, CACHE_UNSAFE
} cache_mode;

/* snapshot=true: serve the image read-only under a temporary overlay
 * that takes the writes (open_snapshot).
 */
static bool snapshot;

/* How backing files are reached (backing-protocols=, backing-*=), and
 * the opener that follows it for every image and backing file.
 */
static struct qed_net_options net_options = {
  .protocols = QED_PROTO_ALL,
  .cache_size = QED_NET_DEFAULT_CACHE_SIZE,
};

/* Numbers in backing-*= parsed, and reported, by nbdkit. */
static const struct qed_number_parsers nbdkit_parsers = {
  .parse_unsigned = nbdkit_parse_unsigned,
  .parse_size = nbdkit_parse_size,
};

static struct qed_opener *opener;

static struct qed_image *image;         /* file= */

/* Route the engine's messages through nbdkit (nbdkit-common/log.c). */
static void
qed_load (void)
{
  qed_nbdkit_log_init ("qed");
}

/* Free the configuration. */
static void
qed_unload (void)
{
  free (filename);
  free (dir);
  free (default_export);
  free (backing);
  if (opener)
    qed_net_opener_free (opener);
}

/* Whether a backing= value names a protocol (nbd://..., json:...)
 * rather than a path: as for QEMU, a ':' before any '/'.  The opener
 * says whether it knows the protocol.
 */
static bool
names_protocol (const char *value)
{
  return value[strcspn (value, ":/")] == ':';
}

/* key=value as an absolute path in *path, replacing any earlier one
 * (nbdkit changes to / when it daemonizes); the message names the
 * parameter, where nbdkit_realpath's would name only the file.
 */
static int
absolute_path (const char *key, const char *value, char **path)
{
  free (*path);
  *path = realpath (value, NULL);
  if (*path == NULL) {
    nbdkit_error ("%s=%s: %m", key, value);
    return -1;
  }
  return 0;
}

/* A boolean key=value into *r (1 or 0), with a message naming the
 * parameter (nbdkit_parse_bool's names only the value).
 */
static int
parse_bool (const char *key, const char *value, int *r)
{
  *r = nbdkit_parse_bool (value);
  if (*r == -1) {
    nbdkit_error ("%s=%s: not a boolean (true or false)", key, value);
    return -1;
  }
  return 0;
}

/* l2-cache-size=: at least 64K, and at most the machine's memory,
 * since the cache is kept in memory: a larger size could never be
 * used, and sizes such as 1P made its table of buckets impossible to
 * allocate.
 */
static int
parse_l2_cache_size (const char *value)
{
  long pages = sysconf (_SC_PHYS_PAGES), page_size = sysconf (_SC_PAGESIZE);

  l2_cache_size = nbdkit_parse_size (value);
  if (l2_cache_size == -1) {
    nbdkit_error ("l2-cache-size=%s: not a size (a number with an optional"
                  " K, M, G or T suffix, such as 256M)", value);
    return -1;
  }
  if (l2_cache_size < 64 * 1024) {
    nbdkit_error ("l2-cache-size=%s: less than the minimum, 64K", value);
    return -1;
  }
  if (pages > 0 && page_size > 0 &&
      (uint64_t) l2_cache_size / page_size > (uint64_t) pages) {
    nbdkit_error ("l2-cache-size=%s: more than this machine's memory"
                  " (%" PRIu64 "M)", value,
                  (uint64_t) pages * page_size / (1024 * 1024));
    return -1;
  }
  return 0;
}

/* Parse one key=value parameter. */
static int
qed_config (const char *key, const char *value)
{
  int r;

  if (strcmp (key, "file") == 0) {
    if (filename) {
      nbdkit_error ("file=%s: only one image can be served (file= was"
                    " already given)", value);
      return -1;
    }
    if (absolute_path (key, value, &filename) == -1)
      return -1;
  }
  else if (strcmp (key, "dir") == 0) {
    if (dir) {
      nbdkit_error ("dir=%s: only one directory can be served (dir= was"
                    " already given)", value);
      return -1;
    }
    if (absolute_path (key, value, &dir) == -1)
      return -1;
  }
  else if (strcmp (key, "default-export") == 0) {
    free (default_export);
    default_export = strdup (value);
    if (default_export == NULL) {
      nbdkit_error ("strdup: %m");
      return -1;
    }
  }
  else if (strcmp (key, "backing") == 0) {
    /* A URI as it is; a path absolute now (nbdkit changes to / when
     * it daemonizes).
     */
    if (names_protocol (value)) {
      free (backing);
      if ((backing = strdup (value)) == NULL) {
        nbdkit_error ("strdup: %m");
        return -1;
      }
    }
    else if (absolute_path (key, value, &backing) == -1)
      return -1;
  }
  else if ((r = qed_net_parse_option (&net_options, &nbdkit_parsers, key,
                                      value)) != 0) {
    if (r < 0)
      return -1;
  }
  else if (strcmp (key, "backing-format") == 0) {
    if (strcmp (value, "raw") != 0 && strcmp (value, "qed") != 0) {
      nbdkit_error ("backing-format must be raw or qed, not %s", value);
      return -1;
    }
    backing_format = value;
  }
  else if (strcmp (key, "allow-backing") == 0) {
    if (parse_bool (key, value, &r) == -1)
      return -1;
    no_backing = !r;
  }
  else if (strcmp (key, "l2-cache-size") == 0) {
    if (parse_l2_cache_size (value) == -1)
      return -1;
  }
  else if (strcmp (key, "locking") == 0) {
    if (parse_bool (key, value, &r) == -1)
      return -1;
    no_locking = !r;
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
  else if (strcmp (key, "detect-zeroes") == 0) {
    if (strcmp (value, "off") == 0)
      detect_zeroes = DETECT_OFF;
    else if (strcmp (value, "on") == 0)
      detect_zeroes = DETECT_ON;
    else if (strcmp (value, "unmap") == 0)
      detect_zeroes = DETECT_UNMAP;
    else {
      nbdkit_error ("detect-zeroes must be off, on or unmap, not %s", value);
      return -1;
    }
  }
  else if (strcmp (key, "cache") == 0) {
    if (strcmp (value, "writeback") == 0)
      cache_mode = CACHE_WRITEBACK;
    else if (strcmp (value, "writethrough") == 0)
      cache_mode = CACHE_WRITETHROUGH;
    else if (strcmp (value, "none") == 0)
      cache_mode = CACHE_NONE;
    else if (strcmp (value, "unsafe") == 0)
      cache_mode = CACHE_UNSAFE;
    else {
      nbdkit_error ("cache must be writeback, writethrough, none or unsafe,"
                    " not %s", value);
      return -1;
    }
  }
  else if (strcmp (key, "snapshot") == 0) {
    if (parse_bool (key, value, &r) == -1)
      return -1;
    snapshot = r;
  }
  else {
    nbdkit_error ("unknown parameter '%s'", key);
    return -1;
  }
  return 0;
}

/* Check the parameters fit together. */
static int
qed_config_complete (void)
{
  if (filename == NULL && dir == NULL) {
    nbdkit_error ("you must supply the file=<FILENAME> parameter"
                  " (or dir=<DIRECTORY>)");
    return -1;
  }
  if (filename && dir) {
    nbdkit_error ("file= and dir= cannot be used together");
    return -1;
  }
  if (dir && (backing || backing_format || snapshot)) {
    nbdkit_error ("dir= cannot be used with backing=, backing-format= or"
                  " snapshot=true");
    return -1;
  }
  if (default_export && dir == NULL) {
    nbdkit_error ("default-export= needs dir=");
    return -1;
  }
  if (no_backing && (backing || backing_format)) {
    nbdkit_error ("allow-backing=false cannot be used with backing="
                  " or backing-format=");
    return -1;
  }
  /* The image is the overlay's backing file, opened as it is. */
  if (snapshot && (backing || backing_format)) {
    nbdkit_error ("snapshot=true cannot be used with backing= or"
                  " backing-format=");
    return -1;
  }
  return 0;
}

#define qed_config_help \
  "[file=]<FILENAME>        The QED image to serve, or\n" \
  "dir=<DIRECTORY>          serve each QED image in it as an export.\n" \
  "default-export=<NAME>    With dir=: the image for the default export.\n" \
  "backing=<FILENAME>       Backing file to use instead of the image's.\n" \
  "backing-format=raw|qed   Format of the backing file.\n" \
  "allow-backing=false      Refuse images that have a backing file.\n" \
  "backing-protocols=<LIST> How backing files may be reached: file, nbd,\n" \
  "                         nbds, nbd+unix, nbds+unix, http, https, or\n" \
  "                         none (default: all).\n" \
  "backing-timeout=<SECS>   Timeout of one request to a backing server\n" \
  "                         (default 30).\n" \
  "backing-connect-timeout=<SECS>\n" \
  "                         Timeout of a connection to one (default 10).\n" \
  "backing-connections=<N>  Connections per backing server, 1 to 8\n" \
  "                         (default 4).\n" \
  "backing-cache-size=<SIZE>\n" \
  "                         Read cache per network backing file\n" \
  "                         (default 64M; 0: none).\n" \
  "l2-cache-size=<SIZE>     Memory for cached L2 tables (default 4M;\n" \
  "                         32M with cache=none).\n" \
  "locking=false            Take no QEMU-compatible image locks.\n" \
  "check=auto|always        Check (and repair) the image at start always,\n" \
  "                         or only when it was not closed cleanly (auto).\n" \
  "detect-zeroes=off|on|unmap\n" \
  "                         Writes of zeros become zero requests (off by\n" \
  "                         default; unmap: giving host space back).\n" \
  "cache=writeback|writethrough|none|unsafe\n" \
  "                         When writes are made durable (as qemu-nbd's).\n" \
  "snapshot=true            Leave the image unchanged: writes go to a\n" \
  "                         temporary overlay in $TMPDIR, lost at exit."

/* Extra --dump-plugin lines. */
static void
qed_dump_plugin (void)
{
  printf ("qed_backing_files=raw,qed\n");
  printf ("qed_backing_protocols=file,nbd,nbds,nbd+unix,nbds+unix,http,"
          "https\n");
  printf ("qed_backing_legacy_names=nbd:,json:\n");
  printf ("qed_locking=qemu\n");
  printf ("qed_detect_zeroes=off,on,unmap\n");
  printf ("qed_cache=writeback,writethrough,none,unsafe\n");
  printf ("qed_snapshot=yes\n");
  printf ("qed_dir=yes\n");
}

/* snapshot=true: the image, opened read-only, becomes the backing file
 * of a new QED overlay of the same geometry, which takes the writes.
 * The overlay is a file without a name in $TMPDIR, so nothing is left
 * behind however nbdkit ends.  The image is first opened on its own,
 * with the user's options (allow-backing, check), and stays open
 * until the overlay has it.  Returns 0 or a negative errno.
 */
static int
open_snapshot (const struct qed_open_options *image_opts)
{
  const char *tmpdir = getenv ("TMPDIR") ? getenv ("TMPDIR") : "/tmp";
  struct qed_open_options read_only = *image_opts;
  struct qed_open_options overlay_opts = {
    .access = QED_READ_WRITE,
    .opener = image_opts->opener,
    .l2_cache_size = image_opts->l2_cache_size,
    .no_locking = image_opts->no_locking,
    .direct = image_opts->direct,
  };
  struct qed_create_options create = {
    .backing_file = filename,
    .backing_format = "qed",
  };
  struct qed_image *base;
  struct qed_file *tmp;
  int r;

  read_only.access = QED_READ_ONLY;
  if ((r = qed_image_open (filename, &read_only, &base)) < 0)
    return r;
  create.size = qed_image_size (base);
  create.cluster_size = qed_image_cluster_size (base);

  r = qed_posix_tmpfile (tmpdir, &tmp);
  if (r < 0)
    qed_log (QED_LOG_ERROR, "snapshot: cannot make a temporary file in %s:"
             " %s", tmpdir, strerror (-r));
  else if ((r = qed_create_file (tmp, &create)) < 0)
    tmp->ops->close (tmp);
  else
    r = qed_image_open_file (tmp, "snapshot overlay", &overlay_opts, &image);
  qed_image_close (base);
  return r;
}

/* r, the engine's result at start (0 or a negative errno), as
 * nbdkit's, with a message if the engine failed without logging an
 * error (no connection has started yet, so any error logged is the
 * start's).
 */
static int
say_why_not_ready (int r)
{
  if (r >= 0)
    return 0;
  if (!qed_nbdkit_error_logged ())
    nbdkit_error ("%s: cannot open the image: %s", filename, strerror (-r));
  if (r == -EMEDIUMTYPE)
    nbdkit_error ("this plugin serves QED images only: serve it with qemu-nbd"
                  " (or, if it is qcow2, with nbdkit's qcow2dec filter,"
                  " nbdkit 1.36 or later)");
  return -1;
}

/* Open and validate the image, so a bad one fails at start.  Writes
 * are turned on only when a connection wants them: with nbdkit -r
 * nothing is ever written.
 */
static int
qed_get_ready (void)
{
  struct qed_open_options opts = {
    .access = QED_WRITE_ON_DEMAND,
    .no_backing = no_backing,
    .backing = backing,
    .backing_format = backing_format,
    .l2_cache_size = l2_cache_size,
    .no_locking = no_locking,
    .always_check = always_check,
    .direct = cache_mode == CACHE_NONE,
  };
  int r;

  if ((r = qed_net_opener_new (&net_options, &opener)) < 0) {
    nbdkit_error ("qed_net_opener_new: %s", strerror (-r));
    return -1;
  }
  opts.opener = opener;
  if (dir)
    return exports_init (dir, &opts, IDLE_MS);
  if (snapshot)
    return say_why_not_ready (open_snapshot (&opts));
  return say_why_not_ready (qed_image_open (filename, &opts, &image));
}

/* Start the thread that marks the image clean when idle. */
static int
qed_after_fork (void)
{
  if (dir)                      /* each image starts its own on open */
    return 0;
  return qed_image_start_background (image, IDLE_MS) < 0 ? -1 : 0;
}

/* Flush and close the image after the last connection. */
static void
qed_cleanup (void)
{
  if (image) {
    qed_image_close (image);
    image = NULL;
  }
  exports_free ();
}

/* nbdkit -r (or a filter such as cow) never turns writes on, so an
 * image not closed cleanly is not repaired: say so, once.
 */
static void
say_not_repaired (void)
{
  static bool said;
  struct qed_image_info info;

  qed_image_get_info (image, &info);
  if (info.need_check && !__atomic_exchange_n (&said, true, __ATOMIC_RELAXED))
    qed_log (QED_LOG_NOTICE, "%s: the image was not closed cleanly"
             " (NEED_CHECK is set) and is served read-only, without checking"
             " or repairing it", filename);
}

/* A writable connection turns writes on (write lock, repair) if they
 * are not on yet.  When that fails -- another process holds the image,
 * the file is read-only -- the connection is served read-only, and the
 * log says why.
 */
static void *
qed_open (int readonly)
{
  const char *name;
  int r;

  if (dir) {
    name = nbdkit_export_name ();
    if (name == NULL)
      return NULL;
    if (name[0] == '\0') {
      nbdkit_error ("no default export: name one of the images in %s"
                    " (nbdinfo --list shows them), or start the server"
                    " with default-export=NAME", dir);
      return NULL;
    }
    /* Writes are turned on by the first write request (writable_image),
     * so that probes (NBD_OPT_INFO) leave the image alone.
     */
    return export_get (name);
  }
  if (readonly)
    say_not_repaired ();
  else if ((r = qed_image_enable_writes (image)) < 0)
    qed_log (QED_LOG_NOTICE, "%s: serving this connection read-only: %s",
             filename, r == -EBUSY ? "another process has the image open"
             : strerror (-r));
  return NBDKIT_HANDLE_NOT_NEEDED;
}

/* dir=: the connection's export has served its last request. */
static void
qed_close (void *handle)
{
  if (dir)
    export_put (handle);
}

/* The connection's image. */
static struct qed_image *
image_of (void *handle)
{
  return dir ? export_image (handle) : image;
}

/* dir=: the exports, with descriptions. */
static int
qed_list_exports (int readonly, int is_tls, struct nbdkit_exports *exports)
{
  if (dir)
    return exports_list (exports);
  return nbdkit_use_default_export (exports);
}

/* dir=: the default export is the one default-export= names, else
 * none (qed_open refuses "").
 */
static const char *
qed_default_export (int readonly, int is_tls)
{
  return dir && default_export ? default_export : "";
}

/* Size of the virtual disk. */
static int64_t
qed_get_size (void *handle)
{
  return qed_image_size (image_of (handle));
}

/* Any alignment works; whole clusters avoid copy-on-write. */
static int
qed_block_size (void *handle, uint32_t *minimum, uint32_t *preferred,
                uint32_t *maximum)
{
  uint32_t cluster = qed_image_cluster_size (image_of (handle));

  *minimum = 1;
  *preferred = cluster < MAX_REQUEST ? cluster : MAX_REQUEST;
  *maximum = MAX_REQUEST;
  return 0;
}

/* Writable once qed_open turned writes on; with dir=, writes are
 * turned on by the first write (writable_image).
 */
static int
qed_can_write (void *handle)
{
  return dir ? 1 : qed_image_is_writable (image);
}

/* All connections share one image, and flush is global. */
static int
qed_can_multi_conn (void *handle)
{
  return 1;
}

/* Flush, trim and zero are supported. */
static int
qed_can_flush (void *handle)
{
  return 1;
}

/* FUA is a flush after the request. */
static int
qed_can_fua (void *handle)
{
  return NBDKIT_FUA_NATIVE;
}

/* Trim punches holes in wholly covered data clusters. */
static int
qed_can_trim (void *handle)
{
  return 1;
}

/* Zero is native. */
static int
qed_can_zero (void *handle)
{
  return 1;
}

/* A fast zero fails at once where zeroing would write data. */
static int
qed_can_fast_zero (void *handle)
{
  return 1;
}

/* Block status comes from the L2 tables and the backing chain. */
static int
qed_can_extents (void *handle)
{
  return 1;
}

/* Cache prefetches the tables and the data (qed_cache). */
static int
qed_can_cache (void *handle)
{
  return NBDKIT_CACHE_NATIVE;
}

/* What the client sees as the export's description (nbdinfo prints
 * it): the image's geometry and backing file.
 */
static const char *
qed_export_description (void *handle)
{
  struct qed_image_info info;
  char desc[DESCRIPTION_SIZE];

  qed_image_get_info (image_of (handle), &info);
  if (snapshot)                 /* the overlay's backing file is the image */
    return nbdkit_printf_intern ("QED image, virtual size %" PRIu64
                                 " bytes, cluster size %" PRIu32
                                 ", snapshot: writes are discarded at exit",
                                 info.size, info.cluster_size);
  if (backing)
    describe_image (desc, sizeof desc, &info, backing,
                    backing_format && strcmp (backing_format, "raw") == 0);
  else
    describe_image (desc, sizeof desc, &info, info.backing_name,
                    backing_format ? strcmp (backing_format, "raw") == 0
                    : info.backing_raw);
  return nbdkit_strdup_intern (desc);
}

/* The engine's result as nbdkit's: 0, or -1 with errno set. */
static int
to_nbdkit (int r)
{
  if (r >= 0)
    return 0;
  errno = -r;
  return -1;
}

/* Read data. */
static int
qed_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
           uint32_t flags)
{
  return to_nbdkit (qed_image_read (image_of (handle), buf, count, offset));
}

/* The request's flags for the engine.  FUA follows the cache mode:
 * writethrough makes every write durable, unsafe none; nor does a
 * snapshot, whose writes are lost at exit anyway.
 */
static unsigned
engine_flags (uint32_t flags)
{
  bool fua = !snapshot && (cache_mode == CACHE_WRITETHROUGH ||
                           (cache_mode != CACHE_UNSAFE &&
                            (flags & NBDKIT_FLAG_FUA)));

  return (fua ? QED_FUA : 0) |
    (flags & NBDKIT_FLAG_FAST_ZERO ? QED_FAST_ZERO : 0) |
    (flags & NBDKIT_FLAG_MAY_TRIM ? QED_MAY_TRIM : 0);
}

/* The connection's image for a write request, or NULL with errno set.
 * With dir=, the first write turns writes on (lock, repair).
 */
static struct qed_image *
writable_image (void *handle)
{
  struct qed_image *img = image_of (handle);
  int r;

  if (dir && (r = qed_image_enable_writes (img)) < 0) {
    errno = -r;
    return NULL;
  }
  return img;
}

/* Whether the buffer holds only zeros; stops at the first byte that
 * is not, so that data costs next to nothing.
 */
static bool
is_zero (const char *p, size_t n)
{
  return n == 0 || (p[0] == 0 && memcmp (p, p + 1, n - 1) == 0);
}

/* Write data; with detect-zeroes, zeros as a zero request. */
static int
qed_pwrite (void *handle, const void *buf, uint32_t count, uint64_t offset,
            uint32_t flags)
{
  struct qed_image *img = writable_image (handle);

  if (img == NULL)
    return -1;
  if (detect_zeroes != DETECT_OFF && is_zero (buf, count)) {
    unsigned zero_flags = engine_flags (flags & NBDKIT_FLAG_FUA);

    if (detect_zeroes == DETECT_UNMAP)
      zero_flags |= QED_MAY_TRIM;
    return to_nbdkit (qed_image_zero (img, count, offset, zero_flags));
  }
  return to_nbdkit (qed_image_write (img, buf, count, offset,
                                     engine_flags (flags)));
}

/* Write zeros. */
static int
qed_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct qed_image *img = writable_image (handle);

  if (img == NULL)
    return -1;
  return to_nbdkit (qed_image_zero (img, count, offset,
                                    engine_flags (flags)));
}

/* Give back the space of wholly covered clusters. */
static int
qed_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct qed_image *img = writable_image (handle);

  if (img == NULL)
    return -1;
  return to_nbdkit (qed_image_trim (img, count, offset,
                                    engine_flags (flags)));
}

/* Read the tables mapping the range into memory and start reading
 * its data into the page cache.
 */
static int
qed_cache (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  return to_nbdkit (qed_image_prefetch (image_of (handle), count, offset));
}

/* Make everything written durable (cache=unsafe and snapshots, whose
 * writes are lost at exit: pretend to).
 */
static int
qed_flush (void *handle, uint32_t flags)
{
  if (cache_mode == CACHE_UNSAFE || snapshot)
    return 0;
  return to_nbdkit (qed_image_flush (image_of (handle)));
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
qed_extents (void *handle, uint32_t count, uint64_t offset, uint32_t flags,
             struct nbdkit_extents *extents)
{
  struct extents_request req = {
    .extents = extents,
    .req_one = flags & NBDKIT_FLAG_REQ_ONE,
  };

  return to_nbdkit (qed_image_block_status (image_of (handle), count, offset,
                                            add_extent, &req));
}

static struct nbdkit_plugin plugin = {
  .name               = "qed",
  .longname           = "nbdkit QED plugin",
  .version            = PACKAGE_VERSION,
  .load               = qed_load,
  .unload             = qed_unload,
  .config             = qed_config,
  .config_complete    = qed_config_complete,
  .config_help        = qed_config_help,
  .magic_config_key   = "file",
  .dump_plugin        = qed_dump_plugin,
  .get_ready          = qed_get_ready,
  .after_fork         = qed_after_fork,
  .cleanup            = qed_cleanup,
  .list_exports       = qed_list_exports,
  .default_export     = qed_default_export,
  .open               = qed_open,
  .close              = qed_close,
  .export_description = qed_export_description,
  .get_size           = qed_get_size,
  .block_size         = qed_block_size,
  .can_write          = qed_can_write,
  .can_multi_conn     = qed_can_multi_conn,
  .can_flush          = qed_can_flush,
  .can_fua            = qed_can_fua,
  .can_trim           = qed_can_trim,
  .can_zero           = qed_can_zero,
  .can_fast_zero      = qed_can_fast_zero,
  .can_extents        = qed_can_extents,
  .can_cache          = qed_can_cache,
  .pread              = qed_pread,
  .pwrite             = qed_pwrite,
  .zero               = qed_zero,
  .trim               = qed_trim,
  .flush              = qed_flush,
  .cache              = qed_cache,
  .extents            = qed_extents,
  .errno_is_preserved = 1,
};

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

NBDKIT_REGISTER_PLUGIN (plugin)
