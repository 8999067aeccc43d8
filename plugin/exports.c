/* nbdkit-qed: the images of a directory as exports (dir=).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Notes on the design
 * -------------------
 * An export is a QED image in the directory (a regular file whose
 * first bytes are the QED magic; subdirectories are not searched),
 * named by its file name.  Its image is opened by the first connection
 * that names it and closed (flushed, NEED_CHECK cleared) when the last
 * one ends; the connections in between share it, so flush and
 * multi-conn work per export as in file mode.  Open exports are keyed
 * by device and inode, so two names of one file (hard links) share
 * one open image.
 *
 * Export names come from clients.  A name is checked to be a plain
 * file name (not empty, no '/', not "." or "..") before anything is
 * looked up, and is then looked up relative to the directory without
 * following symbolic links, so nothing outside the directory is
 * touched on a client's word.  An image that fails to open fails only
 * the connections that name it.
 *
 * Backing files are opened through shared_opener, which wraps the
 * plugin's opener (paths and URIs): a file opened read-only (a
 * backing file; an export's own image is opened for writing) is
 * opened once, and every image whose chain holds it gets a reference
 * to that one open file (shared_file), keyed by its identity (device
 * and inode, or a network file's URI).  Each image still keeps its
 * own tables and caches of a QED backing file.
 *
 * Listing the exports reads each image's header with no lock and
 * never writes; opening an image for a connection writes nothing
 * either: writes are turned on (lock, repair) by the first write
 * request (qed.c), so that NBD_OPT_INFO probes leave images alone.
 *
 * Locking: lock guards the list of exports, their states and their
 * connection counts; changed is signalled when a state changes.  An
 * image is opened and closed without the lock, its export marked
 * OPENING or CLOSING meanwhile, so that a slow open (a repair) holds
 * back only the connections to that image.  shared_lock guards
 * the list of shared files and their references; it is taken inside
 * lock (the engine opens and closes backing files while an export is
 * opened or closed), never the other way round.  The images and files
 * are used from any thread without either.
 */

#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "exports.h"

/* An export goes OPENING (its first connection opens the image,
 * without the lock), OPEN (connections share it), CLOSING (its last
 * connection closes the image, without the lock), then off the list.
 * A connection that finds it OPENING or CLOSING waits for the change.
 */
enum export_state { EXPORT_OPENING, EXPORT_OPEN, EXPORT_CLOSING };

struct export {
  struct qed_image *image;      /* set while OPENING, then constant */
  dev_t dev;
  ino_t ino;
  enum export_state state;      /* under lock */
  unsigned connections;         /* under lock; OPEN */
  struct export *next;          /* under lock */
};

struct shared_file;

static char *dir_path;
static int dir_fd = -1;
static struct qed_open_options open_opts;
static unsigned idle_ms;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;
static struct export *open_exports;     /* under lock */
static bool exited;                     /* under lock: exports_free ran */

/* A reference to a file opened read-only once for every image that
 * uses it.  Requests go to the one open file; closing the last
 * reference closes it.
 */
struct shared_file {
  struct qed_file base;         /* first, so a qed_file * converts */
  struct qed_file *file;        /* the one open file */
  uint64_t id[2];               /* its device and inode */
  unsigned refs;                /* under shared_lock */
  struct shared_file *next;     /* under shared_lock */
};

static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
static struct shared_file *shared_files;       /* under shared_lock */
/* The plugin's opener, which shared_opener wraps. */
static const struct qed_opener *inner_opener;

/* The shared file of that identity, or NULL; with shared_lock held. */
static struct shared_file *
find_shared (const uint64_t id[2])
{
  struct shared_file *sf;

  for (sf = shared_files; sf; sf = sf->next)
    if (sf->id[0] == id[0] && sf->id[1] == id[1])
      return sf;
  return NULL;
}

static struct qed_file *
file_of (struct qed_file *f)
{
  return ((struct shared_file *) f)->file;
}

static int
shared_pread (struct qed_file *f, void *buf, size_t count, uint64_t offset)
{
  return file_of (f)->ops->pread (file_of (f), buf, count, offset);
}

static int
shared_get_size (struct qed_file *f, uint64_t *size)
{
  return file_of (f)->ops->get_size (file_of (f), size);
}

/* Backing files are only ever locked shared: the first such lock
 * holds for every reference.
 */
static int
shared_lock_file (struct qed_file *f, enum qed_lock_mode mode)
{
  struct qed_file *file = file_of (f);

  if (mode != QED_LOCK_SHARED || file->ops->lock == NULL)
    return 0;
  return file->ops->lock (file, mode);
}

static int
shared_identity (struct qed_file *f, uint64_t id[2])
{
  id[0] = ((struct shared_file *) f)->id[0];
  id[1] = ((struct shared_file *) f)->id[1];
  return 0;
}

static int
shared_prefetch (struct qed_file *f, uint64_t offset, uint64_t count)
{
  struct qed_file *file = file_of (f);

  return file->ops->prefetch ? file->ops->prefetch (file, offset, count) : 0;
}

static int
shared_extent (struct qed_file *f, uint64_t offset, uint64_t count,
               uint64_t *length, bool *hole)
{
  struct qed_file *file = file_of (f);

  if (file->ops->extent == NULL)
    return -ENOTSUP;            /* taken as data, as without extent */
  return file->ops->extent (file, offset, count, length, hole);
}

static void
shared_close (struct qed_file *f)
{
  struct shared_file *sf = (struct shared_file *) f, **p;

  pthread_mutex_lock (&shared_lock);
  if (--sf->refs == 0) {
    for (p = &shared_files; *p != sf; p = &(*p)->next)
      ;
    *p = sf->next;
    sf->file->ops->close (sf->file);
    free (sf);
  }
  pthread_mutex_unlock (&shared_lock);
}

static const struct qed_file_ops shared_ops = {
  .pread = shared_pread,
  .get_size = shared_get_size,
  .close = shared_close,
  .lock = shared_lock_file,
  .identity = shared_identity,
  .prefetch = shared_prefetch,
  .extent = shared_extent,
};

/* Files opened for writing (the exports' images) are the inner
 * opener's own; read-only ones (backing files) are shared.  A file
 * that stat finds is looked up by device and inode before it is
 * opened; any other (a URI) is opened, and dropped again for the one
 * already open when their identities match.
 */
static int
shared_open (const struct qed_opener *opener, const char *name,
             unsigned flags, struct qed_file **filep)
{
  struct shared_file *sf;
  struct qed_file *file;
  uint64_t id[2];
  struct stat st;
  bool found = false;
  int r;

  if (flags & QED_OPEN_WRITE)
    return inner_opener->open (inner_opener, name, flags, filep);

  pthread_mutex_lock (&shared_lock);
  if (stat (name, &st) == 0) {
    id[0] = st.st_dev;
    id[1] = st.st_ino;
    found = (sf = find_shared (id)) != NULL;
  }
  if (!found) {
    r = inner_opener->open (inner_opener, name, flags, &file);
    if (r < 0)
      goto out;
    if (file->ops->identity == NULL) {
      *filep = file;            /* cannot be recognised: not shared */
      goto out;
    }
    if ((r = file->ops->identity (file, id)) < 0) {
      file->ops->close (file);
      goto out;
    }
    if ((sf = find_shared (id)) != NULL) {
      file->ops->close (file);
      found = true;
    }
  }
  if (found) {
    sf->refs++;
    *filep = &sf->base;
    r = 0;
    goto out;
  }
  if ((sf = calloc (1, sizeof *sf)) == NULL) {
    r = -ENOMEM;
    file->ops->close (file);
    goto out;
  }
  sf->base.ops = &shared_ops;
  sf->file = file;
  sf->id[0] = id[0];
  sf->id[1] = id[1];
  sf->refs = 1;
  sf->next = shared_files;
  shared_files = sf;
  *filep = &sf->base;
  r = 0;
 out:
  pthread_mutex_unlock (&shared_lock);
  return r;
}

static int
shared_resolve (const struct qed_opener *opener, const char *name,
                const char *base, char **resolved)
{
  return inner_opener->resolve (inner_opener, name, base, resolved);
}

static const struct qed_opener shared_opener = {
  .resolve = shared_resolve,
  .open = shared_open,
};

int
exports_init (const char *dir, const struct qed_open_options *opts,
              unsigned idle)
{
  dir_fd = open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd == -1) {
    nbdkit_error ("dir=%s: %m", dir);
    return -1;
  }
  dir_path = strdup (dir);
  if (dir_path == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  open_opts = *opts;
  inner_opener = opts->opener;
  open_opts.opener = &shared_opener;
  idle_ms = idle;
  return 0;
}

void
exports_free (void)
{
  struct export *e, **p;

  /* Images whose connections nbdkit did not close before exiting are
   * closed cleanly all the same; a connection that ends later finds
   * them gone (export_put).
   */
  pthread_mutex_lock (&lock);
  for (p = &open_exports; *p; ) {
    e = *p;
    if (e->state == EXPORT_OPEN) {
      *p = e->next;
      qed_image_close (e->image);
      free (e);
    }
    else                        /* a thread is opening or closing it */
      p = &e->next;
  }
  exited = true;
  pthread_mutex_unlock (&lock);
  if (dir_fd >= 0)
    close (dir_fd);
  free (dir_path);
}

/* Whether the name is one of a file directly in the directory. */
static bool
is_plain_name (const char *name)
{
  return name[0] != '\0' && strchr (name, '/') == NULL &&
    strcmp (name, ".") != 0 && strcmp (name, "..") != 0;
}

/* Check name, and find the regular file it names in the directory
 * (not following links) that starts with the QED magic; fills in *st.
 * Quiet (returns 1) when it is no QED image, for listing; -1 on
 * errors, which are reported.
 */
static int
find_image (const char *name, struct stat *st)
{
  char magic[4];
  ssize_t n;
  int fd;

  if (!is_plain_name (name)) {
    nbdkit_error ("export '%s': an export is named by a file name in the"
                  " directory (no '/', not '.' or '..')", name);
    return -1;
  }
  fd = openat (dir_fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd == -1) {
    if (errno == ELOOP)
      return 1;                 /* a symbolic link */
    nbdkit_error ("export '%s': %s/%s: %m", name, dir_path, name);
    return -1;
  }
  if (fstat (fd, st) == -1) {
    nbdkit_error ("export '%s': fstat: %m", name);
    close (fd);
    return -1;
  }
  n = S_ISREG (st->st_mode) ? pread (fd, magic, sizeof magic, 0) : 0;
  close (fd);
  return n == sizeof magic && memcmp (magic, "QED", 4) == 0 ? 0 : 1;
}

/* Take e off the list, free it and wake the waiters; with lock held. */
static void
export_remove (struct export *e)
{
  struct export **p;

  for (p = &open_exports; *p != e; p = &(*p)->next)
    ;
  *p = e->next;
  free (e);
  pthread_cond_broadcast (&changed);
}

struct export *
export_get (const char *name)
{
  struct export *e;
  struct stat st;
  char *path;
  int r;

  if ((r = find_image (name, &st)) != 0) {
    if (r == 1)
      nbdkit_error ("export '%s': no QED image of that name in %s", name,
                    dir_path);
    return NULL;
  }

  pthread_mutex_lock (&lock);
  for (;;) {
    for (e = open_exports; e; e = e->next)
      if (e->dev == st.st_dev && e->ino == st.st_ino)
        break;
    if (e == NULL || e->state == EXPORT_OPEN)
      break;
    pthread_cond_wait (&changed, &lock);
  }
  if (e) {
    e->connections++;
    pthread_mutex_unlock (&lock);
    return e;
  }
  e = calloc (1, sizeof *e);
  if (e == NULL) {
    nbdkit_error ("export '%s': %m", name);
    pthread_mutex_unlock (&lock);
    return NULL;
  }
  e->dev = st.st_dev;
  e->ino = st.st_ino;
  e->state = EXPORT_OPENING;
  e->next = open_exports;
  open_exports = e;
  pthread_mutex_unlock (&lock);

  if (asprintf (&path, "%s/%s", dir_path, name) == -1)
    r = -errno;
  else {
    r = qed_image_open (path, &open_opts, &e->image);
    if (r == 0 && (r = qed_image_start_background (e->image, idle_ms)) < 0)
      qed_image_close (e->image);
    free (path);
  }

  pthread_mutex_lock (&lock);
  if (r < 0) {
    nbdkit_error ("export '%s': cannot open the image: %s", name,
                  strerror (-r));
    export_remove (e);
    e = NULL;
  }
  else {
    nbdkit_debug ("export '%s': opened the image", name);
    e->state = EXPORT_OPEN;
    e->connections = 1;
    pthread_cond_broadcast (&changed);
  }
  pthread_mutex_unlock (&lock);
  return e;
}

void
export_put (struct export *e)
{
  pthread_mutex_lock (&lock);
  /* After exports_free, e is gone. */
  if (exited || --e->connections > 0) {
    pthread_mutex_unlock (&lock);
    return;
  }
  e->state = EXPORT_CLOSING;
  pthread_mutex_unlock (&lock);

  if (qed_image_close (e->image) < 0)
    nbdkit_error ("closing an image after its last connection failed");

  pthread_mutex_lock (&lock);
  export_remove (e);
  pthread_mutex_unlock (&lock);
}

struct qed_image *
export_image (const struct export *e)
{
  return e->image;
}

void
describe_image (char *buf, size_t size, const struct qed_image_info *info,
                const char *backing_name, bool raw)
{
  if (backing_name == NULL)
    snprintf (buf, size, "QED image, virtual size %" PRIu64 " bytes, cluster"
              " size %" PRIu32 ", no backing file", info->size,
              info->cluster_size);
  else
    snprintf (buf, size, "QED image, virtual size %" PRIu64 " bytes, cluster"
              " size %" PRIu32 ", backing file %s%s", info->size,
              info->cluster_size, backing_name, raw ? " (raw)" : "");
}

/* The description of the image at path, from its header alone, read
 * without a lock; -1 if the header cannot be read.
 */
static int
describe_file (char *buf, size_t size, const char *path)
{
  struct qed_open_options opts = {
    .access = QED_READ_ONLY,
    .header_only = true,
    .no_locking = true,
    .l2_cache_size = 64 * 1024,
  };
  struct qed_image_info info;
  struct qed_image *img;

  if (qed_image_open (path, &opts, &img) < 0)
    return -1;
  qed_image_get_info (img, &info);
  describe_image (buf, size, &info, info.backing_name, info.backing_raw);
  qed_image_close (img);
  return 0;
}

int
exports_list (struct nbdkit_exports *exports)
{
  struct dirent *d;
  struct stat st;
  char desc[DESCRIPTION_SIZE], *path;
  DIR *dp;
  int dup_fd, r = 0;

  /* A DIR of its own, so that listings in parallel do not share a
   * position.
   */
  dup_fd = openat (dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dup_fd == -1 || (dp = fdopendir (dup_fd)) == NULL) {
    nbdkit_error ("%s: %m", dir_path);
    if (dup_fd >= 0)
      close (dup_fd);
    return -1;
  }
  while (r == 0 && (errno = 0, d = readdir (dp)) != NULL) {
    if (!is_plain_name (d->d_name) || find_image (d->d_name, &st) != 0)
      continue;
    if (asprintf (&path, "%s/%s", dir_path, d->d_name) == -1) {
      nbdkit_error ("asprintf: %m");
      r = -1;
      break;
    }
    /* A broken image is left out (the log says why): clients that
     * list the exports and then probe each would fail on it.
     */
    if (describe_file (desc, sizeof desc, path) == 0)
      r = nbdkit_add_export (exports, d->d_name, desc);
    free (path);
  }
  if (r == 0 && errno != 0) {
    nbdkit_error ("%s: readdir: %m", dir_path);
    r = -1;
  }
  closedir (dp);
  return r;
}
