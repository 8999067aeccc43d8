/* nbdkit-qed: the file layer.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Every byte the engine reads or writes goes through one of these, so
 * that tests can swap in a file that injects errors or records writes
 * to replay crashes (tests/file-*.c), and the fuzzers a file in memory.
 *
 * All operations return 0 or a negative errno.  pread and pwrite
 * transfer the whole count or fail: a read past the end of the file is
 * -EIO.  They may be called from many threads at once.
 */

#ifndef QED_FILE_H
#define QED_FILE_H

#include <stddef.h>
#include <stdint.h>

struct qed_file;

/* QEMU's locking convention (see lib/lock.c). */
enum qed_lock_mode {
  QED_LOCK_NONE,                /* drop all locks */
  QED_LOCK_SHARED,              /* readers: refuse other writers */
  QED_LOCK_EXCLUSIVE,           /* a writer: refuse other writers */
};

struct qed_file_ops {
  int (*pread) (struct qed_file *f, void *buf, size_t count, uint64_t offset);
  int (*pwrite) (struct qed_file *f, const void *buf, size_t count,
                 uint64_t offset);
  /* Make every completed write durable (fdatasync). */
  int (*flush) (struct qed_file *f);
  int (*get_size) (struct qed_file *f, uint64_t *size);
  int (*truncate) (struct qed_file *f, uint64_t size);
  /* Deallocate host space; the range reads as zeros afterwards and the
   * file size does not change.  -EOPNOTSUPP if the file cannot.
   */
  int (*punch) (struct qed_file *f, uint64_t offset, uint64_t count);
  /* Take or change the locks; -EBUSY (with a message naming the
   * holder) when another process's locks conflict.
   */
  int (*lock) (struct qed_file *f, enum qed_lock_mode mode);
  void (*close) (struct qed_file *f);
};

struct qed_file {
  const struct qed_file_ops *ops;
  /* Whether writes are possible (the file was opened read-write). */
  int writable;
};

/* A file on the host, opened read-write when writable and possible,
 * else read-only.  On failure returns NULL with errno set.
 */
struct qed_file *qed_file_open_posix (const char *path, int writable);

/* The device and inode number of a host file, to find loops in backing
 * chains; -ENOTSUP for files that are not host files.
 */
int qed_file_identity (struct qed_file *f, uint64_t *dev, uint64_t *ino);

#endif /* QED_FILE_H */
