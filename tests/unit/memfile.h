/* nbdkit-qed tests: a file in memory that can fail and crash.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The SQLite habit: the engine's file layer (qed-file.h) implemented
 * over memory, so tests can count operations, inject errors into any
 * operation, and record every write and flush to rebuild the file as
 * a crash at any point would have left it.
 *
 * Closing the qed_file does not free the memfile: tests inspect it
 * after the image is closed, then call memfile_free.
 */

#ifndef QED_TESTS_MEMFILE_H
#define QED_TESTS_MEMFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qed-file.h"

struct memfile;

enum memfile_op {
  MF_PREAD = 1, MF_PWRITE = 2, MF_FLUSH = 4, MF_TRUNCATE = 8, MF_PUNCH = 16,
  MF_EXTENT = 32,
};

struct memfile *memfile_new (const void *data, size_t size);
void memfile_free (struct memfile *mf);

/* The qed_file view.  Each call returns the same file. */
struct qed_file *memfile_file (struct memfile *mf);

/* Current contents (valid until the next write). */
const unsigned char *memfile_data (struct memfile *mf, size_t *size);

/* Operations done so far, of the kinds in mask. */
uint64_t memfile_count (struct memfile *mf, unsigned mask);

/* Bytes written so far by successful pwrites. */
uint64_t memfile_bytes_written (struct memfile *mf);

/* Take the capabilities in mask (MF_TRUNCATE: it cannot change size;
 * MF_PUNCH; MF_EXTENT) away, as a file layer that lacks them declares
 * it.
 */
void memfile_without (struct memfile *mf, unsigned mask);

/* Give the file the extent capability (MF_EXTENT), which a memfile
 * lacks otherwise: aligned blocks of block bytes that hold only zeros
 * are holes, and so is everything past the end, as a file system that
 * stores no zero blocks would say.
 */
void memfile_holes (struct memfile *mf, uint64_t block);

/* Operations of the kinds in mask (MF_PREAD, MF_PWRITE, MF_FLUSH)
 * take us microseconds, outside the file's lock, as a disk's would: so
 * that threads using the file overlap.
 */
void memfile_delay (struct memfile *mf, unsigned mask, unsigned us);

/* The next operation of a kind in mask waits, after it is counted and
 * before it does anything, until memfile_release; memfile_wait_held
 * waits until one does.  To stop a thread inside the engine at a
 * known point.
 */
void memfile_hold (struct memfile *mf, unsigned mask);
void memfile_wait_held (struct memfile *mf);
void memfile_release (struct memfile *mf);

/* Fail operations in mask with -err: the first after skip more of
 * them have succeeded, and every one after it when persistent.
 * err 0 stops injecting.
 */
void memfile_fail (struct memfile *mf, unsigned mask, uint64_t skip, int err,
                   bool persistent);

/* From now on record every write, truncate, punch and flush. */
void memfile_record (struct memfile *mf);

/* Number of recorded operations. */
size_t memfile_recorded (struct memfile *mf);

/* Recorded operation i: its kind, offset and count (a truncate's new
 * size).
 */
enum memfile_op memfile_recorded_op (struct memfile *mf, size_t i,
                                     uint64_t *offset, uint64_t *count);

/* How many of the first n recorded operations a crash after them
 * keeps for certain: those up to the last flush among them.
 */
size_t memfile_flushed (struct memfile *mf, size_t n);

/* Which of the operations since the last flush reached the disk. */
enum memfile_crash_mode {
  MF_CRASH_KEEP_ALL,            /* all of them */
  MF_CRASH_DROP_ALL,            /* none */
  MF_CRASH_KEEP_LAST,           /* only the last one: the worst reordering
                                 * for a write that had to follow others */
  MF_CRASH_RANDOM,              /* each one with probability 1/2 */
  MF_CRASH_TORN,                /* each 512-byte sector of each write
                                 * (the disk's atomic unit, aligned in
                                 * the file), and each other operation,
                                 * with probability 1/2 */
};

/* The file as a crash would leave it after the first n recorded
 * operations: those before the last flush among them are on disk, the
 * others as mode says (seed drives MF_CRASH_RANDOM and MF_CRASH_TORN).
 * Returns a new memfile.
 */
struct memfile *memfile_crash (struct memfile *mf, size_t n,
                               enum memfile_crash_mode mode, uint64_t seed);

#endif /* QED_TESTS_MEMFILE_H */
