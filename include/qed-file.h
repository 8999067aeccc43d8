/* nbdkit-qed: the file layer, and openers that find files by name.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Every byte the engine reads or writes goes through a struct
 * qed_file, and every file the engine opens by name (the image, its
 * backing files) comes from a struct qed_opener, as SQLite's files and
 * VFS: a front end installs the opener that resolves names its way (a
 * path, an NBD URI, an HTTP URL), tests swap in files that fail or
 * record writes to replay crashes (tests/unit/memfile.h), the fuzzers
 * a file in memory.  files/ holds the POSIX layer and the network
 * ones (qed-net.h).
 *
 * All operations return 0 or a negative errno.  pread and pwrite
 * transfer the whole count or fail: a read past the end of the file is
 * -EIO.  They may be called from many threads at once.
 */

#ifndef QED_FILE_H
#define QED_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct qed_file;

/* QEMU's locking convention (see files/lock.c). */
enum qed_lock_mode {
  QED_LOCK_NONE,                /* drop all locks */
  QED_LOCK_SHARED,              /* readers: refuse other writers */
  QED_LOCK_EXCLUSIVE,           /* a writer: refuse other writers */
};

/* A file declares what it can do by the operations it fills in: a
 * NULL capability means the file cannot, and the engine does without.
 */
struct qed_file_ops {
  /* Every file. */
  int (*pread) (struct qed_file *f, void *buf, size_t count, uint64_t offset);
  int (*get_size) (struct qed_file *f, uint64_t *size);
  void (*close) (struct qed_file *f);

  /* Every writable file.  flush makes every completed write durable
   * (fdatasync).
   */
  int (*pwrite) (struct qed_file *f, const void *buf, size_t count,
                 uint64_t offset);
  int (*flush) (struct qed_file *f);

  /* Capabilities. */
  /* Change the size.  NULL: the file cannot grow, so the image cannot
   * allocate clusters (writes that need them fail with ENOSPC) and
   * repair leaves leaked clusters where they are.
   */
  int (*truncate) (struct qed_file *f, uint64_t size);
  /* Deallocate host space; the range reads as zeros afterwards and the
   * file size does not change.  NULL, or -EOPNOTSUPP from a file that
   * finds out late: trim does nothing and zeroing writes zeros.
   */
  int (*punch) (struct qed_file *f, uint64_t offset, uint64_t count);
  /* Take or change QEMU-compatible locks; -EBUSY (with a message
   * naming the holder: a notice when shared locks were to become
   * exclusive, since the caller may go on reading, else an error)
   * when another process's locks conflict.  NULL:
   * the file cannot be locked, and is used without locks.
   */
  int (*lock) (struct qed_file *f, enum qed_lock_mode mode);
  /* Two numbers that are the same for two opens of one file and differ
   * between files (device and inode), to find loops in backing chains.
   * NULL: only the chain's depth limit stops a loop.
   */
  int (*identity) (struct qed_file *f, uint64_t id[2]);
  /* Start reading the range into the host's cache, without waiting
   * for it (posix_fadvise WILLNEED).  NULL: the file has no cache to
   * warm, and prefetching reads only the image's tables.
   */
  int (*prefetch) (struct qed_file *f, uint64_t offset, uint64_t count);
  /* Whether offset lies in a hole (a range the file does not store,
   * which reads as zeros) or in data, and how far that lasts: sets
   * *hole and *length, from 1 to count bytes.  The range may pass the
   * end of the file, which is a hole.  Used to map raw backing files
   * as QEMU does (SEEK_DATA and SEEK_HOLE).  NULL, or a failure: the
   * engine takes the range as data.
   */
  int (*extent) (struct qed_file *f, uint64_t offset, uint64_t count,
                 uint64_t *length, bool *hole);
};

struct qed_file {
  const struct qed_file_ops *ops;
  /* Whether writes are possible (the file was opened read-write). */
  int writable;
};

/* Flags of qed_opener.open. */
#define QED_OPEN_WRITE  (1u << 0)  /* read-write where permitted, else
                                    * read-only (file->writable says) */
#define QED_OPEN_CREATE (1u << 1)  /* create the file if it is missing */
#define QED_OPEN_DIRECT (1u << 2)  /* bypass the host's page cache
                                    * (O_DIRECT); a file layer that
                                    * cannot fails the open with EINVAL */

struct qed_opener {
  /* The name under which to open name, which the file called base
   * names (a backing file in base's header), or the user gave (base is
   * NULL).  Returns 0 and a malloc'd string in *resolved, or a
   * negative errno.
   */
  int (*resolve) (const struct qed_opener *opener, const char *name,
                  const char *base, char **resolved);
  /* Open a resolved name.  Returns 0 and the file in *filep, or a
   * negative errno (the caller reports it with the name).
   */
  int (*open) (const struct qed_opener *opener, const char *name,
               unsigned flags, struct qed_file **filep);
  void *opaque;                 /* for the opener's own use */
};

/* Host files by path: relative names are resolved against the
 * directory of the image that names them.
 */
extern const struct qed_opener qed_posix_opener;

/* A new, empty, writable file in the directory dir that has no name
 * (O_TMPFILE; where the file system lacks it, the file is unlinked
 * right after it is made), so that it vanishes when closed, however
 * the process ends.
 */
int qed_posix_tmpfile (const char *dir, struct qed_file **filep);

#endif /* QED_FILE_H */
