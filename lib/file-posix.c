/* nbdkit-qed: the file layer over a host file descriptor.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "file.h"
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

static const struct qed_file_ops posix_ops = {
  .pread = posix_pread,
  .pwrite = posix_pwrite,
  .flush = posix_flush,
  .get_size = posix_get_size,
  .truncate = posix_truncate,
  .punch = posix_punch,
  .lock = posix_lock,
  .close = posix_close,
};

struct qed_file *
qed_file_open_posix (const char *path, int writable)
{
  struct posix_file *pf;
  int fd = -1;

  if (writable) {
    fd = open (path, O_RDWR | O_CLOEXEC);
    /* Serve what cannot be written read-only, as nbdkit's file plugin
     * does; the engine then refuses writes with EROFS.
     */
    if (fd == -1 && (errno == EACCES || errno == EROFS || errno == EPERM))
      writable = 0;
    else if (fd == -1)
      return NULL;
  }
  if (fd == -1) {
    fd = open (path, O_RDONLY | O_CLOEXEC);
    if (fd == -1)
      return NULL;
  }

  pf = calloc (1, sizeof *pf);
  if (pf == NULL || (pf->path = strdup (path)) == NULL) {
    int e = errno;
    free (pf);
    close (fd);
    errno = e;
    return NULL;
  }
  pf->base.ops = &posix_ops;
  pf->base.writable = writable;
  pf->fd = fd;
  pf->lock_mode = QED_LOCK_NONE;
  return &pf->base;
}

int
qed_file_identity (struct qed_file *f, uint64_t *dev, uint64_t *ino)
{
  struct posix_file *pf = (struct posix_file *) f;
  struct stat st;

  if (f->ops != &posix_ops)
    return -ENOTSUP;
  if (fstat (pf->fd, &st) == -1)
    return -errno;
  *dev = st.st_dev;
  *ino = st.st_ino;
  return 0;
}
