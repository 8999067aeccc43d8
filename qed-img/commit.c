/* qed-img commit: write what an image holds itself into its backing
 * file, then (unless -d) empty the image, which then reads through to
 * the backing file as it read before.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "qed-img.h"

int
cmd_commit (int argc, char **argv)
{
  static const struct option long_options[] = {
    COMMON_LONG_OPTIONS,
    { NULL }
  };
  bool progress = false, quiet = false, keep = false;
  struct qed_image_info info;
  struct source image, base;
  struct copy copy;
  const char *file;
  int c, r;

  while ((c = getopt_long (argc, argv, "hf:pdq", long_options,
                           NULL)) != -1) {
    switch (c) {
    case 'h':
      return command_help ("commit");
    case 'f':
      if (!format_is_qed ("-f", optarg))
        return 1;
      break;
    case 'p':
      progress = true;
      break;
    case 'd':
      keep = true;
      break;
    case 'q':
      quiet = true;
      break;
    default:
      return usage_error ("commit", "unknown option");
    }
  }
  if (argc - optind != 1)
    return usage_error ("commit", "expected one FILE");
  file = argv[optind];

  /* The image locks itself only: its backing file is opened again
   * below, for writing.
   */
  if (source_open_flags (&image, file, "qed", NULL, SOURCE_UNLOCKED_CHAIN |
                         (keep ? 0 : SOURCE_WRITABLE)) != 0)
    return 1;
  qed_image_get_info (image.qed, &info);
  if (info.backing_name == NULL) {
    source_close (&image);
    return fail (file, "the image has no backing file to commit into");
  }
  if (source_open_flags (&base, info.backing_name,
                         info.backing_raw ? "raw" : NULL, image.name,
                         SOURCE_WRITABLE) != 0) {
    /* The name is the image's: say it before closing the image. */
    fail (file, "could not open the backing file %s for writing",
          info.backing_name);
    source_close (&image);
    return 1;
  }

  /* The image's chain opened the base again, read-only: clear what
   * points past the base's end now, before that copy of its tables
   * reads any, or it would keep them as errors once this one grows
   * the file.
   */
  if (base.qed && qed_image_clear_past_end (base.qed) < 0) {
    fail (file, "could not commit into %s", base.name);
    source_close (&base);
    source_close (&image);
    return 1;
  }

  copy = (struct copy) {
    .from = &image,
    .to = &base,
    .write_all = true,
    .unit = source_unit (&base),
  };
  r = copy_start (&copy, progress && !quiet, image.size);
  if (r == 0) {
    /* As qemu-img commit: a shorter base grows to the image's size. */
    if ((base.size < image.size && source_grow (&base, image.size) < 0) ||
        copy_allocated (&copy, &image, true) < 0)
      r = fail (file, "could not commit into %s", base.name);
    /* The base holds everything before the image lets go of it. */
    else if (source_flush (&base) < 0)
      r = fail (file, "could not commit into %s", base.name);
    else if (!keep && qed_image_make_empty (image.qed) < 0)
      r = fail (file, "%s holds the image's data, but the image could not"
                " be emptied", base.name);
    else
      progress_end (&copy.progress);
    copy_end (&copy);
  }
  if (source_close (&base) != 0)
    r = 1;
  if (source_close (&image) != 0)
    r = 1;
  if (r == 0 && !quiet)
    printf ("Image committed.\n");
  return r;
}
