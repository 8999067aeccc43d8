/* qed-img create: a new image, laid out as qemu-img create -f qed lays
 * it out.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qed-format.h"
#include "qed-img.h"

/* -o key=value,...: qemu-img's creation options for QED. */
static bool
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

int
cmd_create (int argc, char **argv)
{
  static const struct option long_options[] = {
    COMMON_LONG_OPTIONS,
    { NULL }
  };
  struct qed_create_options opts = { 0 };
  const char *backing = NULL, *backing_format = NULL, *file;
  bool quiet = false, unsafe = false, table_size_given = false;
  int c;

  while ((c = getopt_long (argc, argv, "hf:b:F:o:qu", long_options,
                           NULL)) != -1) {
    switch (c) {
    case 'h':
      return command_help ("create");
    case 'f':
      if (!format_is_qed ("-f", optarg))
        return 1;
      break;
    case 'b':
      backing = optarg;
      break;
    case 'F':
      backing_format = optarg;
      break;
    case 'o':
      if (!parse_create_options (optarg, &opts, &backing, &backing_format,
                                 &table_size_given))
        return 1;
      break;
    case 'q':
      quiet = true;
      break;
    case 'u':
      unsafe = true;
      break;
    default:
      return usage_error ("create", "unknown option");
    }
  }
  if (argc - optind < 1 || argc - optind > 2)
    return usage_error ("create", "expected FILE and SIZE");
  file = argv[optind];
  if (argc - optind == 2 && !parse_size (argv[optind + 1], &opts.size))
    return fail (argv[optind + 1], "not a valid size (a number of bytes,"
                 " or with a suffix k, M, G, T, P or E)");

  if (backing_format && !backing)
    return fail (file, "-F %s without a backing file (-b)", backing_format);
  if (backing) {
    if (backing_format == NULL)
      return fail (file, "the backing file's format is needed: -F raw or"
                   " -F qed (probing it would let data written in a raw"
                   " file pass for a QED header)");
    if (strcmp (backing_format, "raw") != 0 &&
        strcmp (backing_format, "qed") != 0)
      return fail (backing, "-F %s: backing files can be raw or qed",
                   backing_format);
    /* Like qemu-img: the backing file must open, and gives the size
     * when none is given; -u (unsafe) skips that when there is a size.
     */
    if (!unsafe || argc - optind == 1) {
      struct source src;

      if (source_open (&src, backing, backing_format, file, true) != 0)
        return fail (file, "could not open the backing file %s", backing);
      if (argc - optind == 1)
        opts.size = src.size;
      source_close (&src);
    }
    opts.backing_file = backing;
    opts.backing_format = backing_format;
  }
  else if (argc - optind == 1)
    return usage_error ("create", "SIZE is needed without a backing file");

  if (qed_create (file, &opts) < 0)
    return fail (file, "the image was not created");
  if (!quiet) {
    printf ("Formatting '%s', fmt=qed size=%" PRIu64, file,
            (opts.size + 511) & ~UINT64_C (511));
    if (backing)
      printf (" backing_file=%s backing_fmt=%s", backing, backing_format);
    printf (" cluster_size=%" PRIu32, opts.cluster_size ? opts.cluster_size
            : QED_DEFAULT_CLUSTER_SIZE);
    if (table_size_given)
      printf (" table_size=%" PRIu32, opts.table_size);
    printf ("\n");
    fflush (stdout);
  }
  return 0;
}
