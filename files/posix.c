/* nbdkit-qed: the POSIX file layer: host files by path.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qed.h"
#include "lock.h"

struct posix_file {
  struct qed_file base;         /* first, so a qed_file * converts */
  int fd;
  char *path;
  enum qed_lock_mode lock_mode;
};

static int
posix_pread (struct qed_file *f, void *buf, size_t count, uint64_t offset)
{
  struct posix_file *pf = (struct posix_file *) f;
  char *p = buf;

  while (count > 0) {
    ssize_t r = pread (pf->fd, p, count, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (r == 0)                 /* the file ends before the data does */
      return -EIO;
    p += r;
    count -= r;
    offset += r;
  }
  return 0;
}

static int
posix_pwrite (struct qed_file *f, const void *buf, size_t count,
              uint64_t offset)
{
  struct posix_file *pf = (struct posix_file *) f;
  const char *p = buf;

  while (count > 0) {
    ssize_t r = pwrite (pf->fd, p, count, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      /* The file cannot grow (a file size limit): no space for it. */
      return errno == EFBIG ? -ENOSPC : -errno;
    }
    p += r;
    count -= r;
    offset += r;
  }
  return 0;
}

static int
posix_flush (struct qed_file *f)
{
  struct posix_file *pf = (struct posix_file *) f;

  return fdatasync (pf->fd) == -1 ? -errno : 0;
}

static int
posix_get_size (struct qed_file *f, uint64_t *size)
{
  struct posix_file *pf = (struct posix_file *) f;
  off_t end = lseek (pf->fd, 0, SEEK_END);  /* also right for devices */

  if (end == -1)
    return -errno;
  *size = end;
  return 0;
}

static int
posix_truncate (struct qed_file *f, uint64_t size)
{
  struct posix_file *pf = (struct posix_file *) f;

  return ftruncate (pf->fd, size) == -1 ? -errno : 0;
}

static int
posix_punch (struct qed_file *f, uint64_t offset, uint64_t count)
{
  struct posix_file *pf = (struct posix_file *) f;

  if (fallocate (pf->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                 offset, count) == -1) {
    if (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL)
      return -EOPNOTSUPP;
    return -errno;
  }
  return 0;
}

static int
posix_lock (struct qed_file *f, enum qed_lock_mode mode)
{
  struct posix_file *pf = (struct posix_file *) f;
  int r = qed_lock_apply (pf->fd, pf->path, pf->lock_mode, mode);

  if (r == 0)
    pf->lock_mode = mode;
  return r;
}

static void
posix_close (struct qed_file *f)
{
  struct posix_file *pf = (struct posix_file *) f;

  close (pf->fd);               /* releases the OFD locks too */
  free (pf->path);
  free (pf);
}

static int
posix_identity (struct qed_file *f, uint64_t id[2])
{
  struct posix_file *pf = (struct posix_file *) f;
  struct stat st;

  if (fstat (pf->fd, &st) == -1)
    return -errno;
  id[0] = st.st_dev;
  id[1] = st.st_ino;
  return 0;
}

static int
posix_prefetch (struct qed_file *f, uint64_t offset, uint64_t count)
{
  struct posix_file *pf = (struct posix_file *) f;

  return -posix_fadvise (pf->fd, offset, count, POSIX_FADV_WILLNEED);
}

static const struct qed_file_ops posix_ops = {
  .pread = posix_pread,
  .get_size = posix_get_size,
  .close = posix_close,
  .pwrite = posix_pwrite,
  .flush = posix_flush,
  .truncate = posix_truncate,
  .punch = posix_punch,
  .lock = posix_lock,
  .identity = posix_identity,
  .prefetch = posix_prefetch,
};

/* Absolute, or relative to the directory of base. */
static int
posix_resolve (const struct qed_opener *opener, const char *name,
               const char *base, char **resolved)
{
  const char *slash;

  if (name[0] == '/' || base == NULL || (slash = strrchr (base, '/')) == NULL)
    *resolved = strdup (name);
  else if (asprintf (resolved, "%.*s/%s", (int) (slash - base), base,
                     name) == -1)
    *resolved = NULL;
  return *resolved ? 0 : -ENOMEM;
}

/* A FIFO or a terminal would block in open and read; a directory is
 * no image.  Only regular files and block devices are files here.
 */
static const char *
special_type (mode_t mode)
{
  if (S_ISREG (mode) || S_ISBLK (mode))
    return NULL;
  if (S_ISFIFO (mode))
    return "a FIFO";
  if (S_ISDIR (mode))
    return "a directory";
  if (S_ISCHR (mode))
    return "a character device";
  if (S_ISSOCK (mode))
    return "a socket";
  return "not a regular file";
}

static int
posix_open (const struct qed_opener *opener, const char *path,
            unsigned flags, struct qed_file **filep)
{
  int writable = (flags & QED_OPEN_WRITE) != 0;
  int create = flags & QED_OPEN_CREATE ? O_CREAT : 0;
  /* Non-blocking, so that a FIFO cannot hang the open. */
  int oflags = O_CLOEXEC | O_NONBLOCK;
  struct posix_file *pf;
  const char *type;
  struct stat st;
  int fd = -1, e;

  if (writable) {
    fd = open (path, O_RDWR | oflags | create, 0644);
    /* Serve what cannot be written read-only, as nbdkit's file plugin
     * does; the engine then refuses writes with EROFS.
     */
    if (fd == -1 && (errno == EACCES || errno == EROFS || errno == EPERM) &&
        !create)
      writable = 0;
    else if (fd == -1)
      return -errno;
  }
  if (fd == -1) {
    fd = open (path, O_RDONLY | oflags);
    if (fd == -1)
      return -errno;
  }
  if (fstat (fd, &st) == -1 ||
      fcntl (fd, F_SETFL, fcntl (fd, F_GETFL) & ~O_NONBLOCK) == -1) {
    e = errno;
    close (fd);
    return -e;
  }
  if ((type = special_type (st.st_mode)) != NULL) {
    qed_log (QED_LOG_ERROR, "%s: is %s: only regular files and block"
             " devices can be images or backing files", path, type);
    close (fd);
    return -EINVAL;
  }

  pf = calloc (1, sizeof *pf);
  if (pf == NULL || (pf->path = strdup (path)) == NULL) {
    e = errno;
    free (pf);
    close (fd);
    return -e;
  }
  pf->base.ops = &posix_ops;
  pf->base.writable = writable;
  pf->fd = fd;
  pf->lock_mode = QED_LOCK_NONE;
  *filep = &pf->base;
  return 0;
}

const struct qed_opener qed_posix_opener = {
  .resolve = posix_resolve,
  .open = posix_open,
};
