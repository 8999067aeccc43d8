/* nbdkit-qed: the QED image engine.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * This is the whole interface the front ends (the nbdkit plugin) and
 * the tests use; qed-file.h is the file layer under it.  The engine
 * knows nothing of nbdkit.
 *
 * Conventions:
 * - Functions returning int return 0 on success or a negative errno.
 *   The errno is what an NBD client should see: EIO for a corrupt
 *   image or an I/O error, ENOSPC for a full disk, EROFS for a write to
 *   a read-only image, ENOTSUP for a fast zero that would not be fast.
 *   Every failure but running out of memory (-ENOMEM) is also
 *   described through the log function.
 * - Offsets and counts are in bytes of the virtual disk unless named
 *   "host".
 * - Every function taking an image may be called from any thread at
 *   any time until qed_image_close.  Requests (read, write, zero, trim,
 *   flush, block status, map) run in parallel; qed_image_enable_writes,
 *   qed_image_check, qed_image_set_backing, qed_image_resize,
 *   qed_image_make_empty and qed_image_close wait for the requests in
 *   flight, hold new ones back while they run, and run one at a time.
 */

#ifndef QED_H
#define QED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qed-file.h"

struct qed_image;

/* Messages.  The engine reports errors, the repairs it made and debug
 * details through one process-wide function.  The default writes
 * errors and notices to stderr and drops debug messages.
 */
enum qed_log_level { QED_LOG_DEBUG, QED_LOG_NOTICE, QED_LOG_ERROR };
typedef void (*qed_log_fn) (enum qed_log_level level, const char *msg);
void qed_set_log_function (qed_log_fn fn);
/* Send a message through it (file layers use it too). */
void qed_log (enum qed_log_level level, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));
/* The noun for a count of n in messages: one if n is 1, else many
 * ("%" PRIu64 " %s", n, qed_plural (n, "entry", "entries")).
 */
const char *qed_plural (uint64_t n, const char *one, const char *many);

/* Opening. */
enum qed_access {
  QED_READ_ONLY,           /* open the file read-only; never write */
  QED_READ_WRITE,          /* writable at once (repairs if NEED_CHECK) */
  QED_WRITE_ON_DEMAND,     /* open the file read-write when permitted, but
                            * write nothing until qed_image_enable_writes */
};

struct qed_open_options {
  enum qed_access access;
  /* How the image and its backing files are found by name; NULL: the
   * POSIX opener (paths).
   */
  const struct qed_opener *opener;
  /* Backing files.  no_backing refuses any image whose header names a
   * backing file.  backing replaces the name in the header (resolved
   * like it, by the opener); backing_format
   * ("raw" or "qed") replaces the header's raw bit and probing.
   */
  bool no_backing;
  const char *backing;
  const char *backing_format;
  /* Bytes of memory for cached L2 tables; 0 selects the default: 4 MiB,
   * or 32 MiB with direct.
   */
  size_t l2_cache_size;
  /* Take no QEMU-compatible OFD locks on the image and backing files. */
  bool no_locking;
  /* Open the image and its backing files with QED_OPEN_DIRECT: I/O
   * bypasses the host's page cache.
   */
  bool direct;
  /* Run check (and repair, if writable) on open even when the image
   * does not have NEED_CHECK set.  For images from untrusted sources.
   */
  bool always_check;
  /* Open the image for its header and tables alone (qed_image_get_info,
   * qed_image_set_backing, qed_image_check): the backing file is not
   * opened, so it may be missing, and requests fail with EINVAL.
   */
  bool header_only;
};

/* Open the image of that name (through the opener).  On failure *imgp
 * is untouched and the log has said which field or step was wrong;
 * -EMEDIUMTYPE means the file is an image in another format (the log
 * names it), which the caller may say how to use.
 */
int qed_image_open (const char *name, const struct qed_open_options *opts,
                    struct qed_image **imgp);

/* Open an image over an already open file.  The image owns the file
 * from then on (also on failure).  name (may be NULL) is only used to
 * resolve a relative backing file name and for messages.
 */
int qed_image_open_file (struct qed_file *file, const char *name,
                         const struct qed_open_options *opts,
                         struct qed_image **imgp);

/* For QED_WRITE_ON_DEMAND images: take the write lock, clear unknown
 * autoclear bits, repair if NEED_CHECK is set, and allow writes.
 * Returns -EROFS if the file could only be opened read-only (then and
 * after, logged once), -EBUSY if another process holds the image (it
 * may be tried again).  Calling it on an image that is already
 * writable does nothing.
 */
int qed_image_enable_writes (struct qed_image *img);
bool qed_image_is_writable (const struct qed_image *img);

/* Table entries pointing at or past the end of the file read as
 * errors; the first write that grows a writable image clears them
 * first (reading every L2 table), so that the file never grows over
 * the place they point at.  This clears them now instead, as a
 * repair would, for a caller that also reads the file through
 * another image (a backing chain opening it again) whose view of the
 * tables must not keep them.  -EROFS if the image is not writable.
 */
int qed_image_clear_past_end (struct qed_image *img);

/* Start the background thread that makes the image clean (flush, then
 * clear NEED_CHECK) after idle_ms without allocating writes.  Must be
 * called after any fork.  qed_image_close stops it.
 */
int qed_image_start_background (struct qed_image *img, unsigned idle_ms);

/* Wait for the requests in flight, flush, clear NEED_CHECK if this
 * process set it, and free everything, including backing images.
 * Returns the first error from the flush or header update; the image
 * is closed either way.
 */
int qed_image_close (struct qed_image *img);

/* Geometry. */
uint64_t qed_image_size (const struct qed_image *img);
uint32_t qed_image_cluster_size (const struct qed_image *img);
bool qed_image_has_backing (const struct qed_image *img);

/* What the header says.  The strings belong to the image and live
 * until qed_image_close or qed_image_set_backing.
 */
struct qed_image_info {
  uint64_t size;                  /* virtual disk, bytes */
  uint32_t cluster_size;
  uint32_t table_size;            /* clusters per L1 or L2 table */
  uint32_t header_size;           /* clusters */
  uint64_t features, compat_features, autoclear_features;
  const char *backing_name;       /* as written in the header; NULL: none */
  bool backing_raw;               /* the header says the backing file is
                                   * raw (not probed) */
  bool need_check;
};
void qed_image_get_info (const struct qed_image *img,
                         struct qed_image_info *info);

/* Change the backing file named in the header, as qemu-img rebase -u
 * does: name NULL makes the image standalone; format "raw" sets the
 * no-probe bit, "qed" or NULL clears it.  The image must be writable.
 * Unless the image was opened header_only, the new backing file is
 * opened first (nothing changes if it cannot be) and serves the
 * requests that follow.  What the image reads through its unallocated
 * clusters changes accordingly: copying what must not change is the
 * caller's work.  The header always names a whole backing file, even
 * after a crash during the call.
 */
int qed_image_set_backing (struct qed_image *img, const char *name,
                           const char *format);

/* Whether a file holds a QED image, or raw data, by its first bytes.
 * Files in the other formats QEMU knows (qcow2, vmdk, ...) are refused
 * with -ENOTSUP, after a message naming the format.  name is for
 * messages.
 */
int qed_probe_file (struct qed_file *file, const char *name, bool *is_qed);

/* Requests.  offset + count must lie inside the virtual disk. */
int qed_image_read (struct qed_image *img, void *buf, uint64_t count,
                    uint64_t offset);

#define QED_FUA        (1u << 0) /* durable before returning */
#define QED_FAST_ZERO  (1u << 1) /* qed_image_zero: fail with ENOTSUP
                                  * rather than write data */
#define QED_MAY_TRIM   (1u << 2) /* qed_image_zero: host space may be
                                  * given back */
int qed_image_write (struct qed_image *img, const void *buf, uint64_t count,
                     uint64_t offset, unsigned flags);

/* Make the range read as zeros.  Whole clusters become zero clusters
 * (or, when allocated, keep their cluster and give its host space
 * back); partial clusters are written with zeros unless they already
 * read as zero.
 */
int qed_image_zero (struct qed_image *img, uint64_t count, uint64_t offset,
                    unsigned flags);

/* Give back the host space of wholly covered allocated clusters.  The
 * contents of a trimmed range are unspecified afterwards (they read as
 * zeros today).  Elsewhere it does nothing.
 */
int qed_image_trim (struct qed_image *img, uint64_t count, uint64_t offset,
                    unsigned flags);

int qed_image_flush (struct qed_image *img);

/* Prefetch the range: read the L2 tables that map it (of the image and
 * its QED backing files) into the L2 cache, and have the file layers
 * start reading its data into the host's cache.  Returns before that
 * data has arrived.  Fails with EIO where a read would.
 */
int qed_image_prefetch (struct qed_image *img, uint64_t count,
                        uint64_t offset);

/* Block status.  Reports the range from offset as consecutive extents
 * (each at least 1 byte, together covering at least one byte and at
 * most count bytes) by calling fn until it returns non-zero or the
 * range is covered.  Extent types are NBD's flags.
 */
#define QED_EXTENT_HOLE 1u      /* no data in the image or its chain (zero
                                 * or unallocated clusters, holes of a raw
                                 * backing file) */
#define QED_EXTENT_ZERO 2u      /* reads as zeros */
typedef int (*qed_extent_fn) (void *opaque, uint64_t offset, uint64_t length,
                              unsigned type);
int qed_image_block_status (struct qed_image *img, uint64_t count,
                            uint64_t offset, qed_extent_fn fn, void *opaque);

/* The map of the image and its backing chain, as qemu-img map
 * --output=json shows it: where each byte of the range reads from.
 * Reports the range from offset as consecutive extents covering it all
 * by calling fn until it returns non-zero (a negative errno is then
 * returned, anything else stops with 0) or the range is covered.
 * Adjacent extents that agree in everything but offset and length,
 * with host offsets that continue, are reported as one, so the extents
 * of the whole disk are qemu-img map's entries.  Fails with -EIO (and
 * says where) if an invalid table entry maps a byte of the range.
 */
struct qed_map_extent {
  uint64_t offset, length;      /* virtual bytes */
  /* The file the bytes come from: 0 the image, 1 its backing file, and
   * so on.  When no file holds them (present false), the image whose
   * chain ends there: the bottom of the chain, or the one whose backing
   * file is shorter.
   */
  unsigned depth;
  const char *file;             /* its name (as opened, a backing file's
                                 * as resolved; NULL if none was given);
                                 * valid until the image is closed */
  bool present;                 /* the file holds them: a data or zero
                                 * cluster, a raw backing file's bytes
                                 * (holes too, and the zeros after its
                                 * end up to a multiple of 512 bytes) */
  bool zero;                    /* they read as zeros: a zero cluster,
                                 * a raw hole, no file holds them */
  bool data;                    /* stored data: a data cluster, or a raw
                                 * backing file's bytes outside holes */
  bool has_host;                /* data, and raw holes: host is where */
  uint64_t host;                /* offset starts in the file */
};
typedef int (*qed_map_fn) (void *opaque, const struct qed_map_extent *e);
int qed_image_map (struct qed_image *img, uint64_t count, uint64_t offset,
                   qed_map_fn fn, void *opaque);

/* Consistency check, in qemu-img check's categories. */
struct qed_check_result {
  uint64_t corruptions;         /* found and left (or not fixable) */
  uint64_t corruptions_fixed;
  uint64_t leaks;               /* unreferenced clusters left */
  uint64_t leaks_fixed;
  uint64_t check_errors;        /* tables that could not be read */
  uint64_t allocated_clusters;  /* data clusters referenced */
  uint64_t fragmented_clusters; /* ... not following the one before in
                                 * their L2 table */
  uint64_t total_clusters;      /* virtual disk size in clusters */
  uint64_t image_end;           /* file size after the check */
};

/* Check the image; with repair, also fix what it found (the image must
 * be writable).  Repair gives back leaked clusters wherever they are:
 * those at the end of the file by truncating it, those in the middle
 * by moving the clusters that lie after them into them first (not for
 * files of more than 2^28 clusters, nor files that cannot change size:
 * their leaks stay, and a notice says so).
 */
int qed_image_check (struct qed_image *img, bool repair,
                     struct qed_check_result *result);

/* Change the size of the virtual disk to new_size bytes, rounded up to
 * a multiple of 512 (as qed_create rounds it; QEMU refuses to resize
 * QED to a size that is not a multiple).  It waits for the requests in
 * flight, which complete on the old size, and holds new ones back until
 * it returns; those see the new size.  Durable when it returns.
 *
 * Growing: the new range reads as zeros, also where the backing file
 * is longer than the old size (those clusters become zero clusters)
 * and in the bytes of the old last cluster past the old size (stale
 * bytes a shrink left there are zeroed).  The size can grow up to
 * qed_image_size_limit of the image's cluster and table sizes: beyond,
 * -EINVAL and the message says the maximum.  An image opened
 * header_only with a backing file does not grow (-EINVAL): what its
 * backing file holds past the old size is unknown.
 *
 * Shrinking: only with allow_shrink (else -EINVAL).  The data past the
 * new end is dropped: the clusters nothing references any more are
 * given back, by moving the clusters in use that lie after them into
 * them and truncating the file, so that the check finds no leak.  The
 * image must be consistent (else -EIO: repair it first), and its file
 * able to change size and of at most 2^28 clusters (else -ENOTSUP).
 *
 * A refusal changes nothing.  Another failure (an I/O error) leaves
 * the old size with the disk as it was, or, when shrinking failed
 * after writing the new size, the new size with the disk below it as
 * it was and maybe leaked clusters (a check with repair gives them
 * back).  A crash at any point is the same: nothing inside the smaller
 * of the two sizes is lost; NEED_CHECK is set while clusters could
 * leak, so the next writable open gives them back.
 *
 * The image must be writable (-EROFS).
 */
int qed_image_resize (struct qed_image *img, uint64_t new_size,
                      bool allow_shrink);

/* Drop every mapping: afterwards the image reads as its backing file
 * (as zeros without one), and its file is cut back to the header and
 * the L1 table.  Requests wait for it as for qed_image_resize.  For "commit", once the backing file holds what the
 * image reads.  A crash at any point leaves each L1 entry as it was or
 * cleared, so the image reads what it read or what its backing file
 * holds there, and at worst leaked clusters, which the next writable
 * open gives back (as for qed_image_resize).  The file must be able to
 * change size and have at most 2^28 clusters (-ENOTSUP), the image be
 * writable (-EROFS).
 */
int qed_image_make_empty (struct qed_image *img);

/* For tests: the check marks clusters in windows of this many (a
 * multiple of 64; 0: the default, 2^28), so that images larger than a
 * window can be small.
 */
void qed_set_check_window (uint64_t clusters);

/* Creation, laid out as qemu-img create -f qed lays it out. */
struct qed_create_options {
  uint64_t size;                  /* rounded up to 512 bytes */
  uint32_t cluster_size;          /* 0: 64 KiB */
  uint32_t table_size;            /* 0: 4 */
  const char *backing_file;       /* NULL: none */
  const char *backing_format;     /* "raw" sets the no-probe bit */
  const struct qed_opener *opener;  /* for qed_create; NULL: POSIX */
};

/* Create (or overwrite) the image of that name through the options'
 * opener, refusing one that another process has open.
 */
int qed_create (const char *name, const struct qed_create_options *opts);
/* The same in an open file (which stays open). */
int qed_create_file (struct qed_file *file,
                     const struct qed_create_options *opts);

#endif /* QED_H */
