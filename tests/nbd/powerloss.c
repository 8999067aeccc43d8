/* nbdkit-qed tests: an undo journal for simulating power loss, preloaded
 * into nbdkit by tests/soak.sh.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 *   LD_PRELOAD=.../libpowerloss.so POWERLOSS_FILE=IMAGE \
 *   POWERLOSS_LOG=JOURNAL nbdkit ...
 *
 * kill -9 loses nothing the server wrote: the page cache survives it,
 * so it cannot tell whether the server orders its writes with flushes.
 * A power cut can.  Before each change to IMAGE made through a
 * descriptor opened for writing (pwrite, ftruncate, fallocate: all
 * that the engine's POSIX file layer uses), this appends to JOURNAL the
 * bytes about to be overwritten or cut off and the file's size before
 * and after.  A completed fdatasync or fsync of IMAGE marks everything
 * journalled before it started as durable (and empties the journal
 * when nothing came meanwhile).  After killing the server, soak.sh
 * plays the journal backwards over IMAGE to make a state that the disk
 * could hold after a power cut at that moment: each 4 KiB page as it
 * was at some moment since the last sync, the size as at some moment.
 *
 * The changes to IMAGE are serialised by a mutex, so that the journal
 * order is the order in which they reached the file.  Everything that
 * goes wrong here aborts: a journal with gaps would make the soak
 * report failures that are not the server's.
 *
 * A record is struct record (host byte order) and then nold bytes: the
 * old contents of [offset, offset + nold).  kind REC_CHANGE is a write
 * or fallocate over [offset, offset + length) (nold is the part of it
 * that was inside the file), REC_TRUNCATE a size change (shrinking:
 * the cut bytes from offset = new_size); REC_SYNC says that every
 * record with a lower seq is durable.  A record cut short by the kill
 * is ignored: its change was not made yet.
 */

#define _GNU_SOURCE

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define MAGIC 0x474f4c50        /* "PLOG" */

enum { REC_CHANGE = 1, REC_TRUNCATE = 2, REC_SYNC = 3 };

struct record {
  uint32_t magic, kind;
  uint64_t seq, offset, length, old_size, new_size, nold;
};

#define MAX_FD 4096

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static bool active;
static dev_t file_dev;
static ino_t file_ino;
static int log_fd = -1;
static uint64_t next_seq;       /* guarded by lock */
static bool tracked[MAX_FD];    /* descriptors of IMAGE open for writing */

static int (*real_open) (const char *, int, ...);
static int (*real_open64) (const char *, int, ...);
static int (*real_openat) (int, const char *, int, ...);
static int (*real_openat64) (int, const char *, int, ...);
static int (*real_close) (int);
static ssize_t (*real_pwrite) (int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64) (int, const void *, size_t, off_t);
static int (*real_ftruncate) (int, off_t);
static int (*real_ftruncate64) (int, off_t);
static int (*real_fallocate) (int, int, off_t, off_t);
static int (*real_fallocate64) (int, int, off_t, off_t);
static int (*real_fdatasync) (int);
static int (*real_fsync) (int);

static void
fail (const char *what)
{
  fprintf (stderr, "powerloss: %s: %s\n", what, strerror (errno));
  abort ();
}

static void *
next (const char *name)
{
  void *p = dlsym (RTLD_NEXT, name);

  if (p == NULL) {
    fprintf (stderr, "powerloss: no %s: %s\n", name, dlerror ());
    abort ();
  }
  return p;
}

static void
resolve (void)
{
  real_open = next ("open");
  real_open64 = next ("open64");
  real_openat = next ("openat");
  real_openat64 = next ("openat64");
  real_close = next ("close");
  real_pwrite = next ("pwrite");
  real_pwrite64 = next ("pwrite64");
  real_ftruncate = next ("ftruncate");
  real_ftruncate64 = next ("ftruncate64");
  real_fallocate = next ("fallocate");
  real_fallocate64 = next ("fallocate64");
  real_fdatasync = next ("fdatasync");
  real_fsync = next ("fsync");
}

/* Another library's constructor may call us before ours has run. */
static pthread_once_t resolved = PTHREAD_ONCE_INIT;
#define RESOLVE() pthread_once (&resolved, resolve)

__attribute__ ((constructor))
static void
init (void)
{
  const char *file = getenv ("POWERLOSS_FILE");
  const char *log = getenv ("POWERLOSS_LOG");
  struct stat st;

  RESOLVE ();
  if (file == NULL || log == NULL)
    return;
  if (stat (file, &st) == -1)
    fail (file);
  file_dev = st.st_dev;
  file_ino = st.st_ino;
  log_fd = real_open (log, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC,
                      0644);
  if (log_fd == -1)
    fail (log);
  active = true;
}

static bool
is_tracked (int fd)
{
  return active && fd >= 0 && fd < MAX_FD &&
    __atomic_load_n (&tracked[fd], __ATOMIC_ACQUIRE);
}

/* After an open: is it IMAGE, for writing? */
static int
opened (int fd, int flags)
{
  struct stat st;

  if (!active || fd == -1 || (flags & O_ACCMODE) == O_RDONLY)
    return fd;
  if (fstat (fd, &st) == -1)
    fail ("fstat");
  if (st.st_dev != file_dev || st.st_ino != file_ino)
    return fd;
  if (fd >= MAX_FD) {
    errno = EMFILE;
    fail ("descriptor of the image too high");
  }
  __atomic_store_n (&tracked[fd], true, __ATOMIC_RELEASE);
  return fd;
}

static void
write_all (const void *buf, size_t n)
{
  const char *p = buf;

  while (n > 0) {
    ssize_t r = write (log_fd, p, n);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0)
      fail ("writing the journal");
    p += r;
    n -= r;
  }
}

static uint64_t
file_size (int fd)
{
  struct stat st;

  if (fstat (fd, &st) == -1)
    fail ("fstat");
  return st.st_size;
}

/* Called with the lock held: journal the old contents of
 * [from, from + nold) with the record.
 */
static void
journal (int fd, struct record *rec, uint64_t from)
{
  char *old = NULL;
  uint64_t done = 0;

  rec->magic = MAGIC;
  rec->seq = next_seq++;
  if (rec->nold > 0 && (old = malloc (rec->nold)) == NULL)
    fail ("malloc");
  while (done < rec->nold) {
    ssize_t r = pread (fd, old + done, rec->nold - done, from + done);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0)
      fail ("reading the old contents");
    done += r;
  }
  write_all (rec, sizeof *rec);
  if (rec->nold > 0)
    write_all (old, rec->nold);
  free (old);
}

/* Called with the lock held: journal a change of [offset, offset +
 * length) that leaves the file new_size bytes long.
 */
static void
journal_change (int fd, uint64_t offset, uint64_t length, uint64_t new_size)
{
  uint64_t size = file_size (fd);
  struct record rec = {
    .kind = REC_CHANGE, .offset = offset, .length = length,
    .old_size = size, .new_size = new_size > size ? new_size : size,
  };

  if (offset < size)
    rec.nold = length < size - offset ? length : size - offset;
  journal (fd, &rec, offset);
}

static ssize_t
do_pwrite (ssize_t (*real) (int, const void *, size_t, off_t),
           int fd, const void *buf, size_t count, off_t offset)
{
  ssize_t r;

  if (!is_tracked (fd))
    return real (fd, buf, count, offset);
  pthread_mutex_lock (&lock);
  journal_change (fd, offset, count, offset + count);
  r = real (fd, buf, count, offset);
  pthread_mutex_unlock (&lock);
  return r;
}

ssize_t
pwrite (int fd, const void *buf, size_t count, off_t offset)
{
  RESOLVE ();
  return do_pwrite (real_pwrite, fd, buf, count, offset);
}

ssize_t
pwrite64 (int fd, const void *buf, size_t count, off_t offset)
{
  RESOLVE ();
  return do_pwrite (real_pwrite64, fd, buf, count, offset);
}

static int
do_ftruncate (int (*real) (int, off_t), int fd, off_t length)
{
  struct record rec = { .kind = REC_TRUNCATE };
  int r;

  if (!is_tracked (fd) || length < 0)
    return real (fd, length);
  pthread_mutex_lock (&lock);
  rec.old_size = file_size (fd);
  rec.new_size = length;
  if (rec.new_size < rec.old_size) {     /* journal what is cut off */
    rec.offset = rec.new_size;
    rec.length = rec.nold = rec.old_size - rec.new_size;
  }
  else
    rec.offset = rec.old_size;
  journal (fd, &rec, rec.offset);
  r = real (fd, length);
  pthread_mutex_unlock (&lock);
  return r;
}

int
ftruncate (int fd, off_t length)
{
  RESOLVE ();
  return do_ftruncate (real_ftruncate, fd, length);
}

int
ftruncate64 (int fd, off_t length)
{
  RESOLVE ();
  return do_ftruncate (real_ftruncate64, fd, length);
}

static int
do_fallocate (int (*real) (int, int, off_t, off_t),
              int fd, int mode, off_t offset, off_t len)
{
  int r;

  if (!is_tracked (fd) || offset < 0 || len <= 0)
    return real (fd, mode, offset, len);
  pthread_mutex_lock (&lock);
  journal_change (fd, offset, len,
                  mode & FALLOC_FL_KEEP_SIZE ? 0 : offset + len);
  r = real (fd, mode, offset, len);
  pthread_mutex_unlock (&lock);
  return r;
}

int
fallocate (int fd, int mode, off_t offset, off_t len)
{
  RESOLVE ();
  return do_fallocate (real_fallocate, fd, mode, offset, len);
}

int
fallocate64 (int fd, int mode, off_t offset, off_t len)
{
  RESOLVE ();
  return do_fallocate (real_fallocate64, fd, mode, offset, len);
}

/* What was journalled before the sync started is durable once it
 * succeeds; what came meanwhile may or may not be.
 */
static int
do_sync (int (*real) (int), int fd)
{
  struct record rec = { .kind = REC_SYNC };
  uint64_t upto;
  int r;

  if (!is_tracked (fd))
    return real (fd);
  pthread_mutex_lock (&lock);
  upto = next_seq;
  pthread_mutex_unlock (&lock);
  r = real (fd);
  if (r == 0) {
    pthread_mutex_lock (&lock);
    if (next_seq == upto) {
      if (real_ftruncate (log_fd, 0) == -1)
        fail ("emptying the journal");
    }
    else {
      rec.magic = MAGIC;
      rec.seq = upto;
      write_all (&rec, sizeof rec);
    }
    pthread_mutex_unlock (&lock);
  }
  return r;
}

int
fdatasync (int fd)
{
  RESOLVE ();
  return do_sync (real_fdatasync, fd);
}

int
fsync (int fd)
{
  RESOLVE ();
  return do_sync (real_fsync, fd);
}

int
close (int fd)
{
  RESOLVE ();
  if (is_tracked (fd))
    __atomic_store_n (&tracked[fd], false, __ATOMIC_RELEASE);
  return real_close (fd);
}

/* open and friends take a mode only with O_CREAT or O_TMPFILE (which
 * includes O_DIRECTORY).
 */
#define MODE_ARG(flags, last, mode)                             \
  do {                                                          \
    if (((flags) & O_CREAT) || ((flags) & O_TMPFILE) == O_TMPFILE) { \
      va_list ap;                                               \
      va_start (ap, last);                                      \
      mode = va_arg (ap, mode_t);                               \
      va_end (ap);                                              \
    }                                                           \
  } while (0)

int
open (const char *path, int flags, ...)
{
  mode_t mode = 0;

  RESOLVE ();
  MODE_ARG (flags, flags, mode);
  return opened (real_open (path, flags, mode), flags);
}

int
open64 (const char *path, int flags, ...)
{
  mode_t mode = 0;

  RESOLVE ();
  MODE_ARG (flags, flags, mode);
  return opened (real_open64 (path, flags, mode), flags);
}

int
openat (int dirfd, const char *path, int flags, ...)
{
  mode_t mode = 0;

  RESOLVE ();
  MODE_ARG (flags, flags, mode);
  return opened (real_openat (dirfd, path, flags, mode), flags);
}

int
openat64 (int dirfd, const char *path, int flags, ...)
{
  mode_t mode = 0;

  RESOLVE ();
  MODE_ARG (flags, flags, mode);
  return opened (real_openat64 (dirfd, path, flags, mode), flags);
}
