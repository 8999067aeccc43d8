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

  if (!backing_options_valid (file, "-b", backing, backing_format))
    return 1;
  if (backing) {
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
