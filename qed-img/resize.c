/* qed-img resize: change the size of the virtual disk, growing it or,
 * with --shrink, shrinking it (which QEMU refuses for QED).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "qed-img.h"

/* SIZE, +SIZE or -SIZE from the current size: false after a message. */
static bool
new_size_of (const char *file, const char *arg, uint64_t current,
             uint64_t *size)
{
  int sign = arg[0] == '+' ? 1 : arg[0] == '-' ? -1 : 0;
  uint64_t n;

  if (!parse_size (arg + (sign != 0), &n)) {
    fail (arg, "not a valid size (a number of bytes, or with a suffix k,"
          " M, G, T, P or E, after + or - to add or take away)");
    return false;
  }
  if (sign > 0 && n > UINT64_MAX - current) {
    fail (file, "%s: the new size is too large", arg);
    return false;
  }
  *size = sign > 0 ? current + n : sign < 0 ? current - n : n;
  /* As qemu-img: no empty disk, nor less than nothing. */
  if ((sign < 0 && n >= current) || *size == 0) {
    fail (file, "%s: the new size must be positive", arg);
    return false;
  }
  return true;
}

int
cmd_resize (int argc, char **argv)
{
  static const struct option long_options[] = {
    COMMON_LONG_OPTIONS,
    { "shrink", no_argument, NULL, OPT_SHRINK },
    { "quiet", no_argument, NULL, 'q' },
    { NULL }
  };
  bool quiet = false, shrink = false;
  struct qed_image *img;
  const char *file, *arg;
  uint64_t current, size;
  bool resized;
  int c, r;

  /* SIZE is the last argument, taken before the options as qemu-img
   * takes it, so that -SIZE is not an option.
   */
  if (argc >= 2 && (strcmp (argv[argc - 1], "--help") == 0 ||
                    strcmp (argv[argc - 1], "-h") == 0))
    return command_help ("resize");
  if (argc < 3)
    return usage_error ("resize", "expected FILE and SIZE");
  arg = argv[--argc];
  while ((c = getopt_long (argc, argv, "hf:Uq", long_options, NULL)) != -1) {
    switch (c) {
    case 'h':
      return command_help ("resize");
    case 'f':
      if (!format_is_qed ("-f", optarg))
        return 1;
      break;
    case 'U':
      return usage_error ("resize", "-U cannot be used: resizing needs the"
                          " image to itself");
    case 'q':
      quiet = true;
      break;
    case OPT_SHRINK:
      shrink = true;
      break;
    default:
      return usage_error ("resize", "unknown option");
    }
  }
  if (argc - optind != 1)
    return usage_error ("resize", "expected FILE and SIZE");
  file = argv[optind];

  if (open_image (file, QED_READ_WRITE, false, false, &img) != 0)
    return 1;
  current = qed_image_size (img);
  if (!new_size_of (file, arg, current, &size)) {
    close_image (file, img);
    return 1;
  }
  /* Rounded up as the engine rounds it, to tell a shrink. */
  if (size < current && ((size + 511) & ~UINT64_C (511)) < current &&
      !shrink) {
    close_image (file, img);
    return fail (file, "use --shrink to shrink the image from %" PRIu64
                 " to %" PRIu64 " bytes: the data past the new end would"
                 " be lost", current, size);
  }
  r = qed_image_resize (img, size, shrink);
  resized = qed_image_size (img) != current;
  if (close_image (file, img) != 0)
    return 1;
  if (r < 0 && resized)
    return fail (file, "the image was resized, but clusters may be left"
                 " unused ('qed-img check -r all' gives them back)");
  if (r < 0)
    return fail (file, "the image was not resized");
  if (!quiet) {
    printf ("Image resized.\n");
    fflush (stdout);
  }
  return 0;
}
