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

int cmd_create (int argc, char **argv);
int cmd_info (int argc, char **argv);
int cmd_check (int argc, char **argv);
int cmd_map (int argc, char **argv);

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

/* A disk image a command reads: QED (through its backing chain) or
 * raw.
 */
struct source {
  char *name;                   /* resolved */
  struct qed_image *qed;        /* a QED image, or */
  struct qed_file *raw;         /* a raw file */
  uint64_t size;                /* virtual size in bytes */
};
/* Open name in format ("qed", "raw" or NULL: by its first bytes),
 * read-only; relative_to (may be NULL) is the image naming it, which
 * relative names are resolved against.  Returns 0, or 1 after a
 * message.
 */
int source_open (struct source *src, const char *name, const char *format,
                 const char *relative_to, bool force_share);
int source_read (struct source *src, void *buf, uint64_t count,
                 uint64_t offset);
void source_close (struct source *src);

#endif /* QED_IMG_H */
