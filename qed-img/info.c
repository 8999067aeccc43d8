/* qed-img info: what the header says, in qemu-img info's words, and
 * the backing chain.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qed-img.h"

/* The chain is followed this deep at most, as the engine does. */
#define MAX_CHAIN 16

/* One image of the chain. */
struct link {
  char *filename;
  bool is_qed;
  uint64_t size;
  struct qed_image_info qed;    /* is_qed */
  char *full_backing;           /* is_qed with a backing file */
  struct qed_image *img;        /* holds the strings in qed */
};

static void
link_free (struct link *l)
{
  if (l->img)
    qed_image_close (l->img);
  free (l->filename);
  free (l->full_backing);
}

/* Read what filename's header says; for a backing file (format given,
 * or probed when NULL) the name is already resolved.
 */
static int
link_read (struct link *l, const char *filename, const char *format,
           bool force_share)
{
  int r;

  *l = (struct link) { .filename = strdup (filename) };
  if (l->filename == NULL)
    return fail (filename, "out of memory");
  if (format)
    l->is_qed = strcmp (format, "qed") == 0;
  else {
    struct qed_file *file;

    r = opener->open (opener, filename, 0, &file);
    if (r < 0)
      return fail (filename, "%s", strerror (-r));
    r = qed_probe_file (file, filename, &l->is_qed);
    file->ops->close (file);
    if (r < 0)
      return 1;
  }

  if (!l->is_qed) {
    struct source src;

    if (source_open (&src, filename, "raw", NULL, force_share) != 0)
      return 1;
    l->size = src.size;
    source_close (&src);
    return 0;
  }
  if (open_image (filename, QED_READ_ONLY, force_share, true, &l->img) != 0)
    return 1;
  qed_image_get_info (l->img, &l->qed);
  l->size = l->qed.size;
  if (l->qed.backing_name &&
      (r = opener->resolve (opener, l->qed.backing_name, filename,
                            &l->full_backing)) < 0)
    return fail (filename, "%s", strerror (-r));
  return 0;
}

/* Whether name is reached over the network (the opener's resolved
 * names there are URIs): qemu-img has no disk size for it, nor a
 * dirty flag for a raw one.
 */
static bool
is_network (const char *name)
{
  return name[strcspn (name, ":/")] == ':';
}

static void
print_json (const struct link *l, unsigned depth)
{
  struct json j = { .fp = stdout, .depth = depth };

  json_begin_object (&j);
  json_member_uint (&j, "virtual-size", l->size);
  json_member_string (&j, "filename", l->filename);
  if (l->is_qed)
    json_member_uint (&j, "cluster-size", l->qed.cluster_size);
  json_member_string (&j, "format", l->is_qed ? "qed" : "raw");
  if (!is_network (l->filename))
    json_member_uint (&j, "actual-size", allocated_bytes (l->filename));
  if (l->is_qed && l->qed.backing_name) {
    json_member_string (&j, "backing-filename", l->qed.backing_name);
    json_member_string (&j, "full-backing-filename", l->full_backing);
    if (l->qed.backing_raw)
      json_member_string (&j, "backing-filename-format", "raw");
  }
  if (l->is_qed || !is_network (l->filename))
    json_member_bool (&j, "dirty-flag", l->is_qed && l->qed.need_check);
  if (l->is_qed) {
    json_member_uint (&j, "table-size", l->qed.table_size);
    json_member_uint (&j, "features", l->qed.features);
  }
  json_end_object (&j);
}

static void
print_human (const struct link *l)
{
  printf ("image: %s\n", l->filename);
  printf ("file format: %s\n", l->is_qed ? "qed" : "raw");
  printf ("virtual size: %s (%" PRIu64 " bytes)\n", human_size (l->size),
          l->size);
  printf ("disk size: %s\n", is_network (l->filename) ? "unavailable"
          : human_size (allocated_bytes (l->filename)));
  if (!l->is_qed)
    return;
  printf ("cluster_size: %" PRIu32 "\n", l->qed.cluster_size);
  if (l->qed.backing_name) {
    printf ("backing file: %s", l->qed.backing_name);
    if (strcmp (l->qed.backing_name, l->full_backing) != 0)
      printf (" (actual path: %s)", l->full_backing);
    printf ("\n");
    if (l->qed.backing_raw)
      printf ("backing file format: raw\n");
  }
  if (l->qed.need_check)
    printf ("cleanly shut down: no\n");
  printf ("Format specific information:\n"
          "    table size: %" PRIu32 "\n"
          "    features: 0x%" PRIx64 "\n", l->qed.table_size, l->qed.features);
}

/* Whether the file at path is one of the n already in the chain (a
 * loop); remembers it as the n-th.
 */
static bool
seen_before (const char *path, struct stat *seen, size_t n)
{
  if (stat (path, &seen[n]) == -1) {
    seen[n] = (struct stat) { .st_ino = 0 };
    return false;
  }
  for (size_t i = 0; i < n; i++)
    if (seen[i].st_ino != 0 && seen[i].st_dev == seen[n].st_dev &&
        seen[i].st_ino == seen[n].st_ino)
      return true;
  return false;
}

int
cmd_info (int argc, char **argv)
{
  static const struct option long_options[] = {
    COMMON_LONG_OPTIONS,
    { "output", required_argument, NULL, OPT_OUTPUT },
    { "backing-chain", no_argument, NULL, OPT_BACKING_CHAIN },
    { NULL }
  };
  enum output output = OUTPUT_HUMAN;
  bool chain = false, force_share = false;
  struct link links[MAX_CHAIN];
  struct stat seen[MAX_CHAIN];
  size_t n = 0;
  int c, ret = 0;

  while ((c = getopt_long (argc, argv, "hf:U", long_options, NULL)) != -1) {
    switch (c) {
    case 'h':
      return command_help ("info");
    case 'f':
      if (!format_is_qed ("-f", optarg))
        return 1;
      break;
    case 'U':
      force_share = true;
      break;
    case OPT_OUTPUT:
      if (!parse_output (optarg, &output))
        return 1;
      break;
    case OPT_BACKING_CHAIN:
      chain = true;
      break;
    default:
      return usage_error ("info", "unknown option");
    }
  }
  if (argc - optind != 1)
    return usage_error ("info", "expected one FILE");

  /* Read the whole chain first: an error prints nothing else. */
  for (const char *name = argv[optind], *format = "qed"; ; ) {
    const struct link *l;

    if (n == MAX_CHAIN) {
      ret = fail (argv[optind], "the backing chain is longer than %d images",
                  MAX_CHAIN);
      break;
    }
    if (seen_before (name, seen, n)) {
      ret = fail (argv[optind], "backing file loop: %s is already in the"
                  " chain", name);
      break;
    }
    l = &links[n++];
    if ((ret = link_read (&links[n - 1], name, format, force_share)) != 0 ||
        !chain || !l->is_qed || l->qed.backing_name == NULL)
      break;
    name = l->full_backing;
    format = l->qed.backing_raw ? "raw" : NULL;
  }

  if (ret == 0) {
    if (output == OUTPUT_JSON && chain)
      printf ("[\n");
    for (size_t i = 0; i < n; i++) {
      if (output == OUTPUT_JSON) {
        if (chain)
          printf ("    ");
        print_json (&links[i], chain);
        printf ("%s\n", chain && i + 1 < n ? "," : "");
      }
      else {
        if (i > 0)
          printf ("\n");
        print_human (&links[i]);
      }
    }
    if (output == OUTPUT_JSON && chain)
      printf ("]\n");
  }
  for (size_t i = 0; i < n; i++)
    link_free (&links[i]);
  return ret;
}
