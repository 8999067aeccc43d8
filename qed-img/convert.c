/* qed-img convert: copy a raw or QED image (through its chain) into a
 * new QED or raw image, writing only what does not read as zeros, or
 * with -B only what differs from the new image's backing file.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "qed-img.h"

int
cmd_convert (int argc, char **argv)
{
  static const struct option long_options[] = {
    COMMON_LONG_OPTIONS,
    { NULL }
  };
  struct qed_create_options opts = { 0 };
  const char *in_format = NULL, *out_format = "raw";
  const char *backing = NULL, *backing_format = NULL, *src_name, *dst;
  bool progress = false, quiet = false, options_given = false, unused;
  struct source src, base = { NULL }, out;
  struct copy copy;
  int c, r;

  while ((c = getopt_long (argc, argv, "hf:pqO:o:B:F:", long_options,
                           NULL)) != -1) {
    switch (c) {
    case 'h':
      return command_help ("convert");
    case 'f':
      in_format = optarg;
      break;
    case 'p':
      progress = true;
      break;
    case 'q':
      quiet = true;
      break;
    case 'O':
      out_format = optarg;
      break;
    case 'o':
      options_given = true;
      if (!parse_create_options (optarg, &opts, &backing, &backing_format,
                                 &unused))
        return 1;
      break;
    case 'B':
      backing = optarg;
      break;
    case 'F':
      backing_format = optarg;
      break;
    default:
      return usage_error ("convert", "unknown option");
    }
  }
  if (argc - optind != 2)
    return usage_error ("convert", "expected SRC and DST");
  src_name = argv[optind];
  dst = argv[optind + 1];

  /* Everything is checked before DST is created. */
  if (strcmp (out_format, "qed") != 0 && strcmp (out_format, "raw") != 0)
    return fail (dst, "-O %s: the output format must be qed or raw",
                 out_format);
  if (strcmp (out_format, "raw") == 0 && options_given)
    return fail (dst, "-o: a raw image has no options (-O qed has)");
  if (strcmp (out_format, "raw") == 0 && backing)
    return fail (dst, "-B: a raw image has no backing file (-O qed has)");
  if (!backing_options_valid (dst, "-B", backing, backing_format))
    return 1;
  if (source_open (&src, src_name, in_format, NULL, false) != 0)
    return 1;
  if (source_uses (&src, dst)) {
    source_close (&src);
    return fail (dst, "is the image being converted (%s), or one of its"
                 " backing files", src_name);
  }
  if (backing) {
    /* Named relative to DST, as its header will name it. */
    if (source_open (&base, backing, backing_format, dst, false) != 0) {
      source_close (&src);
      return fail (dst, "could not open the backing file %s", backing);
    }
    if (source_uses (&base, dst)) {
      source_close (&base);
      source_close (&src);
      return fail (dst, "would be its own backing file (-B %s)", backing);
    }
  }
  opts.size = src.size;
  opts.backing_file = backing;
  opts.backing_format = backing_format;
  if (source_create (&out, dst, out_format, &opts) != 0) {
    source_close (&base);
    source_close (&src);
    return 1;
  }

  copy = (struct copy) {
    .from = &src,
    .to = &out,
    .current = backing ? &base : NULL,
    .unit = source_unit (&out),
  };
  r = copy_start (&copy, progress && !quiet, out.size);
  if (r == 0) {
    if (copy_range (&copy, 0, out.size) < 0)
      r = fail (dst, "the conversion did not complete");
    else
      progress_end (&copy.progress);
    copy_end (&copy);
  }
  if (source_close (&out) != 0)
    r = 1;
  source_close (&base);
  source_close (&src);
  return r;
}
