/* qed-img: what the commands share: messages, options, sizes, JSON,
 * progress, opening images.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qed-img.h"

int
fail (const char *what, const char *fmt, ...)
{
  va_list ap;

  fprintf (stderr, "qed-img: ");
  if (what)
    fprintf (stderr, "%s: ", what);
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fputc ('\n', stderr);
  return 1;
}

int
usage_error (const char *command, const char *fmt, ...)
{
  va_list ap;

  fprintf (stderr, "qed-img: %s: ", command);
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fprintf (stderr, "\nTry 'qed-img %s --help' for more information.\n",
           command);
  return 1;
}

bool
format_is_qed (const char *option, const char *format)
{
  if (strcmp (format, "qed") == 0)
    return true;
  fail (NULL, "%s %s: this argument must be a QED image (%s qed, or"
        " nothing)", option, format, option);
  return false;
}

bool
parse_output (const char *arg, enum output *output)
{
  if (strcmp (arg, "human") == 0)
    *output = OUTPUT_HUMAN;
  else if (strcmp (arg, "json") == 0)
    *output = OUTPUT_JSON;
  else {
    fail (NULL, "--output=%s: the output format must be human or json", arg);
    return false;
  }
  return true;
}

bool
parse_size (const char *s, uint64_t *size)
{
  static const char units[] = "bkmgtpe";
  uint64_t whole = 0, frac_num = 0, frac_den = 1, unit;
  const char *p = s, *u;
  unsigned shift;

  if (*p < '0' || *p > '9')
    return false;
  for (; *p >= '0' && *p <= '9'; p++) {
    if (whole > (UINT64_MAX - 9) / 10)
      return false;
    whole = whole * 10 + (*p - '0');
  }
  if (*p == '.') {
    for (p++; *p >= '0' && *p <= '9'; p++)
      if (frac_den < UINT64_C (1000000000000)) {
        frac_num = frac_num * 10 + (*p - '0');
        frac_den *= 10;
      }
    if (frac_den == 1)
      return false;
  }
  if (*p == '\0') {
    if (frac_num)
      return false;             /* a fraction of a byte */
    *size = whole;
    return true;
  }
  if (p[1] != '\0' || (u = strchr (units, p[0] | 0x20)) == NULL)
    return false;
  shift = 10 * (u - units);
  if (shift == 0 && frac_num)
    return false;
  unit = UINT64_C (1) << shift;
  if (whole > UINT64_MAX / unit)
    return false;
  /* The fraction's bytes, rounded down: frac_num / frac_den < 1, so
   * unit * frac_num / frac_den < unit; work in 128 bits.
   */
  *size = whole * unit;
  if (frac_num) {
    uint64_t extra = (unsigned __int128) unit * frac_num / frac_den;

    if (*size > UINT64_MAX - extra)
      return false;
    *size += extra;
  }
  return true;
}

const char *
human_size (uint64_t size)
{
  static const char *const units[] = {
    "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"
  };
  static char buf[32];
  unsigned i = 0;

  /* The largest unit in which the number is at least 1000/1024, so
   * that it prints in at most three digits before the point.
   */
  while (i < 6 && (long double) size >= 1000.0L * (UINT64_C (1) << (10 * i)))
    i++;
  snprintf (buf, sizeof buf, "%0.3g %s",
            (double) ((long double) size / (UINT64_C (1) << (10 * i))),
            units[i]);
  return buf;
}

bool
parse_create_options (char *list, struct qed_create_options *opts,
                      const char **backing, const char **backing_format,
                      bool *table_size_given)
{
  char *saveptr, *item;

  for (item = strtok_r (list, ",", &saveptr); item;
       item = strtok_r (NULL, ",", &saveptr)) {
    char *value = strchr (item, '=');
    uint64_t n;

    if (value == NULL) {
      fail (NULL, "-o %s: expected key=value", item);
      return false;
    }
    *value++ = '\0';
    if (strcmp (item, "cluster_size") == 0 || strcmp (item, "table_size") == 0) {
      bool cluster = item[0] == 'c';
      /* A table size counts clusters: no unit. */
      bool plain = value[strspn (value, "0123456789")] == '\0';

      if ((!cluster && !plain) || !parse_size (value, &n) ||
          n == 0 || n > UINT32_MAX) {
        fail (NULL, "-o %s=%s: not a valid %s", item, value,
              cluster ? "cluster size" : "table size (a number of clusters)");
        return false;
      }
      if (cluster)
        opts->cluster_size = n;
      else {
        opts->table_size = n;
        *table_size_given = true;
      }
    }
    else if (strcmp (item, "backing_file") == 0)
      *backing = value;
    else if (strcmp (item, "backing_fmt") == 0)
      *backing_format = value;
    else {
      fail (NULL, "-o %s: unknown option (cluster_size, table_size,"
            " backing_file or backing_fmt)", item);
      return false;
    }
  }
  return true;
}

bool
backing_options_valid (const char *file, const char *option,
                       const char *backing, const char *backing_format)
{
  if (backing_format && !backing) {
    fail (file, "-F %s without a backing file (%s)", backing_format, option);
    return false;
  }
  if (backing == NULL)
    return true;
  if (backing_format == NULL) {
    fail (file, "the backing file's format is needed: -F raw or -F qed"
          " (probing it would let data written in a raw file pass for a"
          " QED header)");
    return false;
  }
  if (strcmp (backing_format, "raw") != 0 &&
      strcmp (backing_format, "qed") != 0) {
    fail (backing, "-F %s: backing files can be raw or qed", backing_format);
    return false;
  }
  return true;
}

int
open_image (const char *file, enum qed_access access, bool force_share,
            bool header_only, struct qed_image **imgp)
{
  struct qed_open_options opts = {
    .access = access,
    .opener = opener,
    .no_locking = force_share,
    .header_only = header_only,
  };

  return qed_image_open (file, &opts, imgp) < 0 ? 1 : 0;
}

int
close_image (const char *file, struct qed_image *img)
{
  int r = qed_image_close (img);

  if (r < 0)
    return fail (file, "closing the image: %s", strerror (-r));
  return 0;
}

uint64_t
allocated_bytes (const char *file)
{
  struct stat st;

  return stat (file, &st) == 0 ? (uint64_t) st.st_blocks * 512 : 0;
}

bool
same_file (const char *a, const char *b)
{
  struct stat sa, sb;

  return stat (a, &sa) == 0 && stat (b, &sb) == 0 &&
    sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

static void
json_indent (struct json *j)
{
  fprintf (j->fp, "%*s", 4 * j->depth, "");
}

static void
json_key (struct json *j, const char *key)
{
  fprintf (j->fp, "%s\n", j->first ? "" : ",");
  j->first = false;
  json_indent (j);
  json_write_string (j->fp, key);
  fprintf (j->fp, ": ");
}

void
json_begin_object (struct json *j)
{
  fputc ('{', j->fp);
  j->depth++;
  j->first = true;
}

void
json_end_object (struct json *j)
{
  j->depth--;
  fputc ('\n', j->fp);
  json_indent (j);
  fputc ('}', j->fp);
  j->first = false;
}

void
json_member_string (struct json *j, const char *key, const char *value)
{
  json_key (j, key);
  json_write_string (j->fp, value);
}

void
json_member_uint (struct json *j, const char *key, uint64_t value)
{
  json_key (j, key);
  fprintf (j->fp, "%" PRIu64, value);
}

void
json_member_bool (struct json *j, const char *key, bool value)
{
  json_key (j, key);
  fprintf (j->fp, "%s", value ? "true" : "false");
}

void
json_write_string (FILE *fp, const char *s)
{
  fputc ('"', fp);
  for (const unsigned char *p = (const unsigned char *) s; *p; p++) {
    if (*p == '"' || *p == '\\')
      fprintf (fp, "\\%c", *p);
    else if (*p < 0x20)
      fprintf (fp, "\\u%04x", *p);
    else
      fputc (*p, fp);
  }
  fputc ('"', fp);
}

void
progress_start (struct progress *p, bool enabled, uint64_t total)
{
  *p = (struct progress) { .enabled = enabled, .total = total,
                           .last_hundredths = -1 };
  progress_update (p, 0);
}

void
progress_update (struct progress *p, uint64_t done)
{
  int hundredths;

  if (!p->enabled)
    return;
  hundredths = p->total ? (int) ((unsigned __int128) done * 10000 / p->total)
    : 10000;
  if (hundredths == p->last_hundredths)
    return;
  p->last_hundredths = hundredths;
  printf ("    (%d.%02d/100%%)\r", hundredths / 100, hundredths % 100);
  fflush (stdout);
}

void
progress_end (struct progress *p)
{
  if (!p->enabled)
    return;
  progress_update (p, p->total);
  putchar ('\n');
}
