/* qed-img check: corruption and leaked clusters, counted exactly, in
 * qemu-img check's words and exit statuses; -r repairs.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "qed-img.h"

/* qemu-img check's exit statuses. */
enum {
  CHECK_CLEAN = 0,
  CHECK_INCOMPLETE = 1,
  CHECK_CORRUPT = 2,
  CHECK_LEAKS = 3,
};

static double
percent (uint64_t part, uint64_t whole)
{
  return whole ? 100.0 * part / whole : 0.0;
}

/* qemu-img check's words, "1 leaked clusters" included: the output
 * is byte for byte qemu-img's (tests/nbd/test-qed-img.sh compares
 * them), so it does not use qed_plural.
 */
static void
print_human (const struct qed_check_result *res)
{
  if (res->corruptions_fixed || res->leaks_fixed)
    printf ("The following inconsistencies were found and repaired:\n\n"
            "    %" PRIu64 " leaked clusters\n"
            "    %" PRIu64 " corruptions\n\n"
            "Double checking the fixed image now...\n",
            res->leaks_fixed, res->corruptions_fixed);
  if (res->corruptions == 0 && res->leaks == 0 && res->check_errors == 0)
    printf ("No errors were found on the image.\n");
  if (res->corruptions)
    printf ("\n%" PRIu64 " errors were found on the image.\n"
            "Data may be corrupted, or further writes to the image may"
            " corrupt it.\n", res->corruptions);
  if (res->leaks)
    printf ("\n%" PRIu64 " leaked clusters were found on the image.\n"
            "This means waste of disk space, but no harm to data.\n",
            res->leaks);
  if (res->check_errors)
    printf ("\n%" PRIu64 " internal errors have occurred during the check.\n",
            res->check_errors);
  if (res->total_clusters && res->allocated_clusters)
    printf ("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% fragmented,"
            " 0.00%% compressed clusters\n", res->allocated_clusters,
            res->total_clusters,
            percent (res->allocated_clusters, res->total_clusters),
            percent (res->fragmented_clusters, res->allocated_clusters));
  printf ("Image end offset: %" PRIu64 "\n", res->image_end);
}

/* qemu-img leaves out the counts that are zero. */
static void
member_unless_zero (struct json *j, const char *key, uint64_t value)
{
  if (value)
    json_member_uint (j, key, value);
}

static void
print_json (const char *file, const struct qed_check_result *res)
{
  struct json j = { .fp = stdout };

  json_begin_object (&j);
  json_member_uint (&j, "image-end-offset", res->image_end);
  member_unless_zero (&j, "total-clusters", res->total_clusters);
  member_unless_zero (&j, "corruptions", res->corruptions);
  member_unless_zero (&j, "corruptions-fixed", res->corruptions_fixed);
  json_member_uint (&j, "check-errors", res->check_errors);
  member_unless_zero (&j, "leaks", res->leaks);
  member_unless_zero (&j, "leaks-fixed", res->leaks_fixed);
  member_unless_zero (&j, "allocated-clusters", res->allocated_clusters);
  member_unless_zero (&j, "fragmented-clusters", res->fragmented_clusters);
  json_member_string (&j, "filename", file);
  json_member_string (&j, "format", "qed");
  json_end_object (&j);
  printf ("\n");
}

static uint64_t
fixed (uint64_t before, uint64_t after)
{
  return before > after ? before - after : 0;
}

/* Check, repair, and check again.  Opening the image for writing can
 * repair it already (an image left with NEED_CHECK), so what was fixed
 * is what the first check found and the last one does not.
 */
static int
check_and_repair (struct qed_image *img,
                  struct qed_check_result *res)
{
  struct qed_check_result found;
  int r;

  if ((r = qed_image_check (img, false, &found)) < 0)
    return r;
  if (found.corruptions == 0 && found.leaks == 0) {
    *res = found;
    return 0;
  }
  if ((r = qed_image_enable_writes (img)) < 0 ||
      (r = qed_image_check (img, true, res)) < 0 ||
      (r = qed_image_check (img, false, res)) < 0)
    return r;
  res->corruptions_fixed = fixed (found.corruptions, res->corruptions);
  res->leaks_fixed = fixed (found.leaks, res->leaks);
  return 0;
}

int
cmd_check (int argc, char **argv)
{
  static const struct option long_options[] = {
    COMMON_LONG_OPTIONS,
    { "output", required_argument, NULL, OPT_OUTPUT },
    { "repair", required_argument, NULL, 'r' },
    { "quiet", no_argument, NULL, 'q' },
    { NULL }
  };
  enum output output = OUTPUT_HUMAN;
  bool repair = false, force_share = false, quiet = false;
  struct qed_check_result res;
  struct qed_image *img;
  const char *file;
  int c, r;

  while ((c = getopt_long (argc, argv, "hf:Ur:q", long_options, NULL)) != -1) {
    switch (c) {
    case 'h':
      return command_help ("check");
    case 'f':
      if (!format_is_qed ("-f", optarg))
        return CHECK_INCOMPLETE;
      break;
    case 'U':
      force_share = true;
      break;
    case 'r':
      /* QED repairs leaks and corruption together, as QEMU does. */
      if (strcmp (optarg, "leaks") != 0 && strcmp (optarg, "all") != 0)
        return usage_error ("check", "-r %s: expected leaks or all", optarg);
      repair = true;
      break;
    case 'q':
      quiet = true;
      break;
    case OPT_OUTPUT:
      if (!parse_output (optarg, &output))
        return CHECK_INCOMPLETE;
      break;
    default:
      return usage_error ("check", "unknown option");
    }
  }
  if (argc - optind != 1)
    return usage_error ("check", "expected one FILE");
  file = argv[optind];
  if (repair && force_share)
    return usage_error ("check", "-U cannot be used with -r: repairing"
                        " needs the image to itself");

  if (open_image (file, repair ? QED_WRITE_ON_DEMAND : QED_READ_ONLY,
                  force_share, true, &img) != 0)
    return CHECK_INCOMPLETE;
  r = repair ? check_and_repair (img, &res)
    : qed_image_check (img, false, &res);
  if (close_image (file, img) != 0 && r == 0)
    r = -EIO;
  if (r < 0) {
    fail (file, "the check could not complete: %s", strerror (-r));
    return CHECK_INCOMPLETE;
  }

  if (output == OUTPUT_JSON)
    print_json (file, &res);
  else if (!quiet)
    print_human (&res);
  if (res.check_errors)
    return CHECK_INCOMPLETE;
  if (res.corruptions)
    return CHECK_CORRUPT;
  return res.leaks ? CHECK_LEAKS : CHECK_CLEAN;
}
