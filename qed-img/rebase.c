/* qed-img rebase: give an image another backing file (or none),
 * copying first what would otherwise read differently; with -u, only
 * the header changes.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "qed-img.h"

/* -u: the new name in the header, nothing else; the old backing file
 * may be missing.
 */
static int
rebase_unsafe (const char *file, const char *backing,
               const char *backing_format)
{
  struct qed_image *img;
  int r;

  if (open_image (file, QED_READ_WRITE, false, true, &img) != 0)
    return 1;
  r = qed_image_set_backing (img, backing, backing_format);
  if (close_image (file, img) != 0 || r < 0)
    return fail (file, "the backing file was not changed");
  return 0;
}

/* Copy into file every cluster it does not hold whose contents differ
 * between its old chain and the new backing file, then name the new
 * one: what file reads never changes, even after a crash.
 */
static int
rebase_safe (const char *file, const char *backing,
             const char *backing_format, bool progress)
{
  struct source image, new_backing = { NULL };
  struct copy copy;
  int r;

  /* The new backing file first: an image in its chain would be locked
   * by the image opened for writing.  It is named relative to the
   * image, as the header will name it.
   */
  if (backing) {
    if (source_open (&new_backing, backing, backing_format, file,
                     false) != 0)
      return fail (file, "could not open the new backing file %s", backing);
    if (source_uses (&new_backing, file)) {
      source_close (&new_backing);
      return fail (file, "would be its own backing file (-b %s)", backing);
    }
  }
  if (source_open_flags (&image, file, "qed", NULL, SOURCE_WRITABLE) != 0) {
    source_close (&new_backing);
    return fail (file, "could not open the image or its backing files"
                 " (with -u, only the header is changed)");
  }

  copy = (struct copy) {
    .from = &image,
    .to = &image,
    .current = backing ? &new_backing : NULL,
    .unit = source_unit (&image),
  };
  r = copy_start (&copy, progress, image.size);
  if (r == 0) {
    /* The copies are durable before the header names the new file. */
    if (copy_allocated (&copy, &image, false) < 0 ||
        source_flush (&image) < 0)
      r = fail (file, "the clusters that would change could not be copied;"
                " the backing file was not changed");
    else if (qed_image_set_backing (image.qed, backing, backing_format) < 0)
      r = fail (file, "the backing file was not changed");
    else
      progress_end (&copy.progress);
    copy_end (&copy);
  }
  source_close (&new_backing);
  if (source_close (&image) != 0)
    r = 1;
  return r;
}

int
cmd_rebase (int argc, char **argv)
{
  static const struct option long_options[] = {
    COMMON_LONG_OPTIONS,
    { NULL }
  };
  const char *backing = NULL, *backing_format = NULL, *file;
  bool progress = false, quiet = false, unsafe = false;
  int c;

  while ((c = getopt_long (argc, argv, "hf:pqub:F:", long_options,
                           NULL)) != -1) {
    switch (c) {
    case 'h':
      return command_help ("rebase");
    case 'f':
      if (!format_is_qed ("-f", optarg))
        return 1;
      break;
    case 'p':
      progress = true;
      break;
    case 'q':
      quiet = true;
      break;
    case 'u':
      unsafe = true;
      break;
    case 'b':
      backing = optarg;
      break;
    case 'F':
      backing_format = optarg;
      break;
    default:
      return usage_error ("rebase", "unknown option");
    }
  }
  if (argc - optind != 1)
    return usage_error ("rebase", "expected one FILE");
  file = argv[optind];
  if (backing == NULL)
    return usage_error ("rebase", "-b BACKING is needed (-b \"\" for none)");
  /* -b "": no backing file. */
  if (backing[0] == '\0')
    backing = NULL;
  if (!backing_options_valid (file, "-b", backing, backing_format))
    return 1;

  if (unsafe)
    return rebase_unsafe (file, backing, backing_format);
  return rebase_safe (file, backing, backing_format, progress && !quiet);
}
