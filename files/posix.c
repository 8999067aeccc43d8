/* nbdkit-qed: the POSIX file layer: host files by path.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Direct I/O (QED_OPEN_DIRECT: O_DIRECT) wants the buffer, the offset
 * and the count aligned to the device's logical block size, which
 * DIRECT_ALIGN covers on every device.  The engine and NBD clients do
 * not always align (an 8-byte table entry, the 68-byte header, a
 * 1-byte client write), so the layer makes it transparent: aligned
 * requests go straight to the file, the others through an aligned
 * bounce buffer covering the blocks they touch.  A write there reads
 * its partial first and last blocks, patches them and writes them
 * back, holding rmw_lock so that two writes patching different bytes
 * of one block do not undo each other.  A write of whole blocks needs
 * no lock: one that covers a block being patched overlaps the patch,
 * and writes overlapping at once are the writers' race, as on any
 * disk.  A block patched past
 * the end of the file extends the file to the end of that block,
 * which for an image stays inside the cluster being written (clusters
 * are multiples of DIRECT_ALIGN).
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qed.h"
#include "lock.h"

#define DIRECT_ALIGN 4096

struct posix_file {
  struct qed_file base;         /* first, so a qed_file * converts */
  int fd;
  char *path;
  enum qed_lock_mode lock_mode;
  bool direct;                  /* opened with O_DIRECT */
  pthread_mutex_t rmw_lock;     /* direct: unaligned writes, one at a time */
};

/* Read up to count bytes, fewer only at the end of the file: *got. */
static int
read_upto (int fd, char *p, size_t count, uint64_t offset, size_t *got)
{
  *got = 0;
  while (count > 0) {
    ssize_t r = pread (fd, p, count, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (r == 0)
      break;
    p += r;
    count -= r;
    offset += r;
    *got += r;
  }
  return 0;
}

static int
write_all (int fd, const char *p, size_t count, uint64_t offset)
{
  while (count > 0) {
    ssize_t r = pwrite (fd, p, count, offset);
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

/* Whether a request can go to the file as it is. */
static bool
passes_as_is (const struct posix_file *pf, const void *buf, size_t count,
              uint64_t offset)
{
  return !pf->direct ||
    (((uintptr_t) buf | offset | count) & (DIRECT_ALIGN - 1)) == 0;
}

/* The blocks covering [offset, offset + count): an aligned buffer for
 * them in *bounce, their start in *start and length in *len.
 */
static int
bounce_alloc (size_t count, uint64_t offset, char **bounce, uint64_t *start,
              size_t *len)
{
  uint64_t end = (offset + count + DIRECT_ALIGN - 1)
    & ~(uint64_t) (DIRECT_ALIGN - 1);
  void *p;

  *start = offset & ~(uint64_t) (DIRECT_ALIGN - 1);
  *len = end - *start;
  if ((errno = posix_memalign (&p, DIRECT_ALIGN, *len)) != 0)
    return -errno;
  *bounce = p;
  return 0;
}

static int
posix_pread (struct qed_file *f, void *buf, size_t count, uint64_t offset)
{
  struct posix_file *pf = (struct posix_file *) f;
  uint64_t start;
  size_t len, got;
  char *bounce = NULL;
  int r;

  if (passes_as_is (pf, buf, count, offset)) {
    r = read_upto (pf->fd, buf, count, offset, &got);
    /* The file ends before the data does: EIO. */
    return r < 0 ? r : got < count ? -EIO : 0;
  }
  if ((r = bounce_alloc (count, offset, &bounce, &start, &len)) < 0)
    return r;
  r = read_upto (pf->fd, bounce, len, start, &got);
  if (r == 0 && got < offset - start + count)
    r = -EIO;
  if (r == 0)
    memcpy (buf, bounce + (offset - start), count);
  free (bounce);
  return r;
}

/* Read the block at block_start into p; what lies past the end of the
 * file reads as zeros.
 */
static int
read_block (struct posix_file *pf, char *p, uint64_t block_start)
{
  size_t got;
  int r = read_upto (pf->fd, p, DIRECT_ALIGN, block_start, &got);

  if (r == 0)
    memset (p + got, 0, DIRECT_ALIGN - got);
  return r;
}

static int
posix_pwrite (struct qed_file *f, const void *buf, size_t count,
              uint64_t offset)
{
  struct posix_file *pf = (struct posix_file *) f;
  uint64_t start;
  size_t len;
  char *bounce = NULL;
  bool patch;
  int r = 0;

  if (passes_as_is (pf, buf, count, offset))
    return write_all (pf->fd, buf, count, offset);
  if ((r = bounce_alloc (count, offset, &bounce, &start, &len)) < 0)
    return r;
  /* Only the buffer unaligned: whole blocks, nothing to read back. */
  patch = offset != start || (offset + count) % DIRECT_ALIGN != 0;
  if (patch) {
    pthread_mutex_lock (&pf->rmw_lock);
    if (offset != start)
      r = read_block (pf, bounce, start);
    if (r == 0 && (offset + count) % DIRECT_ALIGN != 0 &&
        (offset == start || len > DIRECT_ALIGN))
      r = read_block (pf, bounce + len - DIRECT_ALIGN,
                      start + len - DIRECT_ALIGN);
  }
  if (r == 0) {
    memcpy (bounce + (offset - start), buf, count);
    r = write_all (pf->fd, bounce, len, start);
  }
  if (patch)
    pthread_mutex_unlock (&pf->rmw_lock);
  free (bounce);
  return r;
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
  pthread_mutex_destroy (&pf->rmw_lock);
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

  /* Direct I/O reads past the page cache: nothing to warm. */
  if (pf->direct)
    return 0;
  return -posix_fadvise (pf->fd, offset, count, POSIX_FADV_WILLNEED);
}

/* Asked the way QEMU's file driver asks (data first, then where it
 * ends), so that maps of raw files agree with qemu-img map's.
 */
static int
posix_extent (struct qed_file *f, uint64_t offset, uint64_t count,
              uint64_t *length, bool *hole)
{
  struct posix_file *pf = (struct posix_file *) f;
  off_t data, end;

  data = lseek (pf->fd, offset, SEEK_DATA);
  if (data == -1) {
    if (errno != ENXIO)         /* EINVAL: no SEEK_DATA here */
      return -errno;
    /* No data from offset on: a hole to the end, and past it. */
    *hole = true;
    *length = count;
    return 0;
  }
  if ((uint64_t) data < offset)
    return -EIO;
  if ((uint64_t) data > offset) {
    *hole = true;
    *length = data - offset < count ? data - offset : count;
    return 0;
  }
  end = lseek (pf->fd, offset, SEEK_HOLE);
  if (end == -1)
    return -errno;
  /* Not after offset: the file changed between the two calls. */
  if ((uint64_t) end <= offset)
    return -EBUSY;
  *hole = false;
  *length = end - offset < count ? end - offset : count;
  return 0;
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
  .extent = posix_extent,
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

/* The file over fd, which it owns from then on (also on failure). */
static int
file_new (int fd, const char *path, bool writable, bool direct,
          struct qed_file **filep)
{
  struct posix_file *pf = calloc (1, sizeof *pf);
  int e;

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
  pf->direct = direct;
  pthread_mutex_init (&pf->rmw_lock, NULL);
  *filep = &pf->base;
  return 0;
}

/* -errno of a failed open, saying so when it was direct I/O that the
 * file system refused (ramfs, tmpfs before Linux 6.6).
 */
static int
open_failed (const char *path, unsigned flags)
{
  int e = errno;

  if (e == EINVAL && (flags & QED_OPEN_DIRECT))
    qed_log (QED_LOG_ERROR, "%s: cannot open with O_DIRECT: the file system"
             " does not support direct I/O", path);
  return -e;
}

static int
posix_open (const struct qed_opener *opener, const char *path,
            unsigned flags, struct qed_file **filep)
{
  int writable = (flags & QED_OPEN_WRITE) != 0;
  int create = flags & QED_OPEN_CREATE ? O_CREAT : 0;
  /* Non-blocking, so that a FIFO cannot hang the open. */
  int oflags = O_CLOEXEC | O_NONBLOCK |
    (flags & QED_OPEN_DIRECT ? O_DIRECT : 0);
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
      return open_failed (path, flags);
  }
  if (fd == -1) {
    fd = open (path, O_RDONLY | oflags);
    if (fd == -1)
      return open_failed (path, flags);
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

  return file_new (fd, path, writable, (flags & QED_OPEN_DIRECT) != 0, filep);
}

int
qed_posix_tmpfile (const char *dir, struct qed_file **filep)
{
  char *name;
  int fd, e;

  if (asprintf (&name, "%s/qed-tmp.XXXXXX", dir) == -1)
    return -ENOMEM;
  fd = open (dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  /* File systems without O_TMPFILE: the name lives only until the
   * unlink just after.
   */
  if (fd == -1 && (errno == EOPNOTSUPP || errno == EISDIR) &&
      (fd = mkostemp (name, O_CLOEXEC)) >= 0)
    unlink (name);
  if (fd == -1) {
    e = errno;
    free (name);
    return -e;
  }
  e = file_new (fd, name, true, false, filep);
  free (name);
  return e;
}

const struct qed_opener qed_posix_opener = {
  .resolve = posix_resolve,
  .open = posix_open,
};
