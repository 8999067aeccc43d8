/* nbdkit-qed: QEMU-compatible image locking.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * QEMU marks what each user of an image does with shared open file
 * description (OFD) locks on single bytes: byte 100 + p for each
 * permission p it holds and byte 200 + p for each permission it does
 * not let others hold.  Before a user takes a permission it probes
 * that nobody refuses it, and before it refuses one that nobody holds
 * it.  Following the same convention makes QEMU's tools and this
 * server see each other.
 */

#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qed.h"
#include "lock.h"

enum perm {
  PERM_CONSISTENT_READ = 0,
  PERM_WRITE = 1,
  PERM_WRITE_UNCHANGED = 2,
  PERM_RESIZE = 3,
  PERM_GRAPH_MOD = 4,
  NR_PERMS = 5,
};

#define PERM_BASE 100
#define SHARED_BASE 200

static const char *const perm_names[NR_PERMS] = {
  "consistent read", "write", "write unchanged", "resize", "graph change",
};

/* What each mode holds and refuses, as qemu-nbd does (read-only users
 * still refuse writers and resizers).
 */
static unsigned
held (enum qed_lock_mode mode)
{
  switch (mode) {
  case QED_LOCK_SHARED:
    return 1u << PERM_CONSISTENT_READ;
  case QED_LOCK_EXCLUSIVE:
    return 1u << PERM_CONSISTENT_READ | 1u << PERM_WRITE | 1u << PERM_RESIZE;
  default:
    return 0;
  }
}

static unsigned
refused (enum qed_lock_mode mode)
{
  return mode == QED_LOCK_NONE ? 0 : 1u << PERM_WRITE | 1u << PERM_RESIZE;
}

static int
set_byte (int fd, off_t byte, short type)
{
  struct flock fl = {
    .l_type = type, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1,
  };
  return fcntl (fd, F_OFD_SETLK, &fl);
}

/* Does another open file description hold a lock on byte? */
static int
probe_byte (int fd, off_t byte, bool *locked)
{
  struct flock fl = {
    .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1,
  };
  if (fcntl (fd, F_OFD_GETLK, &fl) == -1)
    return -errno;
  *locked = fl.l_type != F_UNLCK;
  return 0;
}

static int
set_bytes (int fd, enum qed_lock_mode mode)
{
  unsigned h = held (mode), r = refused (mode);

  for (int p = 0; p < NR_PERMS; p++) {
    if (set_byte (fd, PERM_BASE + p, h & (1u << p) ? F_RDLCK : F_UNLCK) == -1 ||
        set_byte (fd, SHARED_BASE + p, r & (1u << p) ? F_RDLCK : F_UNLCK) == -1)
      return -errno;
  }
  return 0;
}

/* Does a "lock:" line of /proc/PID/fdinfo cover byte of inode ino?
 * The line looks like
 *   lock:	1: OFDLCK ADVISORY  READ -1 fe:00:10952730 100 101
 */
static bool
fdinfo_line_covers (char *line, uint64_t ino, uint64_t byte)
{
  char *save, *tok, *dev = NULL, *start = NULL, *end = NULL;
  const char *colon;

  if (strstr (line, "OFDLCK") == NULL)
    return false;
  for (tok = strtok_r (line, " \t\n", &save); tok;
       tok = strtok_r (NULL, " \t\n", &save)) {
    if (dev == NULL) {
      colon = strchr (tok, ':');
      if (colon && strchr (colon + 1, ':'))
        dev = tok;
    }
    else if (start == NULL)
      start = tok;
    else {
      end = tok;
      break;
    }
  }
  if (end == NULL)
    return false;
  if (strtoull (strrchr (dev, ':') + 1, NULL, 10) != ino ||
      byte < strtoull (start, NULL, 10))
    return false;
  return strcmp (end, "EOF") == 0 || byte <= strtoull (end, NULL, 10);
}

/* Name the first other process holding a lock on byte of the file, as
 * "qemu-nbd (pid 123)", or "another process" when it cannot be found.
 */
static void
find_holder (int fd, uint64_t byte, char *out, size_t outlen)
{
  struct stat st;
  DIR *proc;
  struct dirent *d;
  pid_t self = getpid ();

  snprintf (out, outlen, "another process");
  if (fstat (fd, &st) == -1 || (proc = opendir ("/proc")) == NULL)
    return;
  while ((d = readdir (proc)) != NULL) {
    char path[300], line[256], comm[64] = "?";
    DIR *fds;
    struct dirent *fdd;
    pid_t pid = atoi (d->d_name);
    bool found = false;

    if (pid <= 0 || pid == self)
      continue;
    snprintf (path, sizeof path, "/proc/%d/fdinfo", (int) pid);
    fds = opendir (path);
    if (fds == NULL)
      continue;
    while (!found && (fdd = readdir (fds)) != NULL) {
      FILE *fp;

      if (fdd->d_name[0] == '.')
        continue;
      snprintf (path, sizeof path, "/proc/%d/fdinfo/%s", (int) pid,
                fdd->d_name);
      fp = fopen (path, "r");
      if (fp == NULL)
        continue;
      while (fgets (line, sizeof line, fp))
        if (strncmp (line, "lock:", 5) == 0 &&
            fdinfo_line_covers (line, st.st_ino, byte)) {
          found = true;
          break;
        }
      fclose (fp);
    }
    closedir (fds);
    if (found) {
      FILE *fp;

      snprintf (path, sizeof path, "/proc/%d/comm", (int) pid);
      fp = fopen (path, "r");
      if (fp) {
        if (fgets (comm, sizeof comm, fp))
          comm[strcspn (comm, "\n")] = '\0';
        fclose (fp);
      }
      snprintf (out, outlen, "%s (pid %d)", comm, (int) pid);
      break;
    }
  }
  closedir (proc);
}

/* Check the locks of mode against everybody else's; a conflict is
 * logged at level.
 */
static int
check_conflicts (int fd, const char *path, enum qed_lock_mode mode,
                 enum qed_log_level level)
{
  unsigned h = held (mode), r = refused (mode);
  char holder[128];

  for (int p = 0; p < NR_PERMS; p++) {
    bool locked = false;
    int e;

    if (h & (1u << p)) {
      if ((e = probe_byte (fd, SHARED_BASE + p, &locked)) < 0)
        return e;
      if (locked) {
        find_holder (fd, SHARED_BASE + p, holder, sizeof holder);
        qed_log (level, "%s: image is in use: %s does not allow"
                 " others the \"%s\" permission (it has the image open,"
                 " and we need that permission to %s it)",
                 path, holder, perm_names[p],
                 p == PERM_CONSISTENT_READ ? "read" : "write");
        return -EBUSY;
      }
    }
    if (r & (1u << p)) {
      if ((e = probe_byte (fd, PERM_BASE + p, &locked)) < 0)
        return e;
      if (locked) {
        find_holder (fd, PERM_BASE + p, holder, sizeof holder);
        qed_log (level, "%s: image is in use: %s holds the \"%s\""
                 " permission (it has the image open for writing)",
                 path, holder, perm_names[p]);
        return -EBUSY;
      }
    }
  }
  return 0;
}

int
qed_lock_apply (int fd, const char *path, enum qed_lock_mode from,
                enum qed_lock_mode to)
{
  int r;

  r = set_bytes (fd, to);
  if (r < 0) {
    if (r == -EINVAL || r == -ENOTSUP || r == -ENOLCK) {
      qed_log (QED_LOG_DEBUG,
               "%s: no OFD locks on this file system, using it unlocked",
               path);
      return 0;
    }
    qed_log (QED_LOG_ERROR, "%s: cannot take locks: %s", path,
             strerror (-r));
    set_bytes (fd, from);
    return r;
  }
  /* A reader refused writes can go on reading: whether that is an
   * error is for the caller to say.
   */
  r = check_conflicts (fd, path, to,
                       from == QED_LOCK_SHARED && to == QED_LOCK_EXCLUSIVE
                       ? QED_LOG_NOTICE : QED_LOG_ERROR);
  if (r < 0)
    set_bytes (fd, from);
  return r;
}
