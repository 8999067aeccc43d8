/* qed-img: QED images without QEMU.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * One file per command (create.c, info.c, ...), each a function that
 * takes the command's arguments and returns the exit status; this
 * header has what they share (common.c, source.c).
 */

#ifndef QED_IMG_H
#define QED_IMG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "qed.h"

struct command {
  const char *name;
  int (*run) (int argc, char **argv);
  const char *synopsis;         /* the arguments, for --help */
  const char *summary;          /* one line */
};
/* Every command, for qed-img.c's dispatch and help. */
extern const struct command commands[];

/* How every command finds images and backing files by name: paths,
 * and the network protocols of qed-net.h, all of them, as qemu-img.
 */
extern const struct qed_opener *opener;

int cmd_create (int argc, char **argv);
int cmd_info (int argc, char **argv);
int cmd_check (int argc, char **argv);
int cmd_map (int argc, char **argv);
int cmd_convert (int argc, char **argv);
int cmd_rebase (int argc, char **argv);
int cmd_resize (int argc, char **argv);
int cmd_commit (int argc, char **argv);

/* Print "qed-img: what: message" to stderr; returns 1, the exit status
 * of a command that failed.  what is the file (or option) at fault and
 * may be NULL.
 */
int fail (const char *what, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));
/* A usage error in command: the message, then where to get help. */
int usage_error (const char *command, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));
/* Print the usage of command to stdout (qed-img COMMAND --help). */
int command_help (const char *command);

/* Options that several commands take, for their getopt_long tables. */
enum {
  OPT_OUTPUT = 256,             /* --output=human|json */
  OPT_BACKING_CHAIN,
  OPT_SHRINK,
};
#define COMMON_LONG_OPTIONS                                     \
  { "help", no_argument, NULL, 'h' },                           \
  { "format", required_argument, NULL, 'f' },                   \
  { "force-share", no_argument, NULL, 'U' }

/* -f FMT (or -F for an argument that must be QED): only qed. */
bool format_is_qed (const char *option, const char *format);
/* --output=human|json. */
enum output { OUTPUT_HUMAN, OUTPUT_JSON };
bool parse_output (const char *arg, enum output *output);

/* -o key=value,...: qemu-img's creation options for QED
 * (cluster_size, table_size, and backing_file and backing_fmt, which
 * set *backing and *backing_format as -b and -F do); list is cut up.
 * false after a message naming the bad option.
 */
bool parse_create_options (char *list, struct qed_create_options *opts,
                           const char **backing, const char **backing_format,
                           bool *table_size_given);
/* A backing file given with option (-b or -B) and -F for file: -F
 * without it, a missing -F, a format but raw or qed are refused with a
 * message.
 */
bool backing_options_valid (const char *file, const char *option,
                            const char *backing, const char *backing_format);

/* A size as qemu-img takes it: a number of bytes, or with one of the
 * suffixes k K M G T P E (powers of 1024; b or B for bytes), with a
 * decimal fraction before a suffix.  false if s is no size.
 */
bool parse_size (const char *s, uint64_t *size);
/* A size as qemu-img prints it: three significant digits and a binary
 * unit ("1.5 MiB").  Returns a static buffer.
 */
const char *human_size (uint64_t size);

/* Open a QED image for a command: access as in qed.h; force_share
 * takes no locks (-U); header_only as in qed.h.  On failure the
 * engine has said why, naming the file.
 */
int open_image (const char *file, enum qed_access access, bool force_share,
                bool header_only, struct qed_image **imgp);
/* Close it; returns 1 (after a message) if the final flush failed. */
int close_image (const char *file, struct qed_image *img);

/* The bytes the file takes on its disk (st_blocks), as qemu-img's
 * "actual-size"; 0 if it cannot be had.
 */
uint64_t allocated_bytes (const char *file);

/* Whether both names are one existing file (device and inode). */
bool same_file (const char *a, const char *b);

/* JSON, in qemu-img's layout: objects with four spaces of indent per
 * level, one member per line.
 */
struct json {
  FILE *fp;
  unsigned depth;
  bool first;                   /* no member yet in the current object */
};
void json_begin_object (struct json *j);
void json_end_object (struct json *j);
void json_member_string (struct json *j, const char *key, const char *value);
void json_member_uint (struct json *j, const char *key, uint64_t value);
void json_member_bool (struct json *j, const char *key, bool value);
void json_write_string (FILE *fp, const char *s);

/* -p: a percentage on one line, redrawn, as qemu-img draws it. */
struct progress {
  bool enabled;
  uint64_t total;
  int last_hundredths;          /* last drawn, to draw only changes */
};
void progress_start (struct progress *p, bool enabled, uint64_t total);
void progress_update (struct progress *p, uint64_t done);
void progress_end (struct progress *p);

/* A disk image a command reads, or writes: QED (through its backing
 * chain) or raw.
 */
struct source {
  char *name;                   /* resolved */
  struct qed_image *qed;        /* a QED image, or */
  struct qed_file *raw;         /* a raw file */
  uint64_t size;                /* virtual size in bytes */
  bool writable;                /* opened for writing */
};
/* Open name in format ("qed", "raw" or NULL: by its first bytes),
 * read-only; relative_to (may be NULL) is the image naming it, which
 * relative names are resolved against.  Returns 0, or 1 after a
 * message.
 */
int source_open (struct source *src, const char *name, const char *format,
                 const char *relative_to, bool force_share);
/* The same, with flags: */
enum {
  SOURCE_WRITABLE = 1,          /* read-write, locked against everybody */
  SOURCE_NO_LOCKS = 2,          /* take no locks (-U) */
  /* Lock the image but not its backing files, which the command opens
   * again to write them (commit).
   */
  SOURCE_UNLOCKED_CHAIN = 4,
};
int source_open_flags (struct source *src, const char *name,
                       const char *format, const char *relative_to,
                       unsigned flags);
/* Make name a new, empty image, writable: format "qed" as opts say
 * (qed_create), or "raw": a sparse file of opts->size bytes.  The size
 * is rounded up to 512 bytes, as qemu-img rounds it.
 */
int source_create (struct source *src, const char *name, const char *format,
                   const struct qed_create_options *opts);

/* What writes to the image are cut into, and each skipped, zeroed or
 * written as a whole (struct copy): its clusters, or for a raw file
 * blocks of RAW_BLOCK_SIZE bytes, so that blocks of zeros become holes
 * as with qemu-img's default -S 4k.
 */
#define RAW_BLOCK_SIZE 4096
uint64_t source_unit (const struct source *src);
/* Whether file is the image or one of its backing files. */
bool source_uses (struct source *src, const char *file);

/* Requests return 0 or a negative errno, after a message.  Past the
 * end, an image reads as zeros.
 */
int source_read (struct source *src, void *buf, uint64_t count,
                 uint64_t offset);
/* How many bytes from offset on (at most count) are known to read as
 * zeros: block status for a QED image, holes for a raw file.
 */
int source_zeros_at (struct source *src, uint64_t offset, uint64_t count,
                     uint64_t *zeros);
int source_write (struct source *src, const void *buf, uint64_t count,
                  uint64_t offset);
/* Zero clusters in a QED image (or host space given back), a hole in a
 * raw file (or zeros written).
 */
int source_zero (struct source *src, uint64_t count, uint64_t offset);
/* Make the image size bytes long (longer than it is), reading zeros
 * in the new part.
 */
int source_grow (struct source *src, uint64_t size);
int source_flush (struct source *src);
/* Close it; returns 1 (after a message) if the final flush failed. */
int source_close (struct source *src);

/* copy.c: make a range of one image read as another (convert, rebase
 * and commit).  Fill in the first fields, then copy_start.
 */
struct copy {
  struct source *from;          /* what `to` is to read afterwards */
  struct source *to;            /* written (may be from itself) */
  /* What `to` reads where it is not written (its backing file):
   * pieces that read the same in from are left alone.  NULL: zeros.
   */
  struct source *current;
  /* Write every piece, also what may read the same already (commit,
   * which does not read the base).
   */
  bool write_all;
  /* Pieces end at multiples of unit (source_unit of to), and are
   * skipped, zeroed or written as a whole.
   */
  uint64_t unit;
  struct progress progress;     /* drawn as copy_range advances */
  char *buf, *current_buf;      /* copy_start's */
};
/* Allocate the buffers and start the progress (if enabled) towards
 * total bytes.  Returns 0, or 1 after a message.
 */
int copy_start (struct copy *c, bool progress, uint64_t total);
/* Copy [offset, offset + count); the progress is drawn up to the end
 * of the range.  Returns 0 or a negative errno (after a message).
 */
int copy_range (struct copy *c, uint64_t offset, uint64_t count);
/* Copy the ranges of the QED image that are (in_image) or are not
 * allocated in the image itself, as opposed to its backing files.
 */
int copy_allocated (struct copy *c, struct source *image, bool in_image);
/* Free the buffers (the progress is the command's to end). */
void copy_end (struct copy *c);

#endif /* QED_IMG_H */
