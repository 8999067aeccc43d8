/* qed-img map: where each byte of the image and its backing chain
 * reads from, in qemu-img map's words, byte for byte.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "qed-img.h"

/* One extent, as qemu-img map --output=json prints it: the entries
 * separated by a comma and a newline, the array on no lines of its own.
 */
static void
print_json (const struct qed_map_extent *e, bool first)
{
  printf ("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ","
          " \"depth\": %u, \"present\": %s, \"zero\": %s, \"data\": %s",
          first ? "" : ",\n", e->offset, e->length, e->depth,
          e->present ? "true" : "false", e->zero ? "true" : "false",
          e->data ? "true" : "false");
  if (e->has_host)
    printf (", \"offset\": %" PRIu64, e->host);
  putchar ('}');
}

/* The human output lists the data alone: where it is stored, in which
 * file.  (A zero from 0x is written 0, as printf's %#x writes it.)
 */
static void
print_human (const struct qed_map_extent *e)
{
  if (e->data && !e->zero)
    printf ("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n",
            e->offset, e->length, e->host, e->file);
}

struct printer {
  enum output output;
  bool first;
};

static int
print_extent (void *opaque, const struct qed_map_extent *e)
{
  struct printer *p = opaque;

  if (p->output == OUTPUT_JSON)
    print_json (e, p->first);
  else
    print_human (e);
  p->first = false;
  return 0;
}

int
cmd_map (int argc, char **argv)
{
  static const struct option long_options[] = {
    COMMON_LONG_OPTIONS,
    { "output", required_argument, NULL, OPT_OUTPUT },
    { NULL }
  };
  struct printer p = { .output = OUTPUT_HUMAN, .first = true };
  bool force_share = false;
  struct qed_image *img;
  const char *file;
  int c, r;

  while ((c = getopt_long (argc, argv, "hf:U", long_options, NULL)) != -1) {
    switch (c) {
    case 'h':
      return command_help ("map");
    case 'f':
      if (!format_is_qed ("-f", optarg))
        return 1;
      break;
    case 'U':
      force_share = true;
      break;
    case OPT_OUTPUT:
      if (!parse_output (optarg, &p.output))
        return 1;
      break;
    default:
      return usage_error ("map", "unknown option");
    }
  }
  if (argc - optind != 1)
    return usage_error ("map", "expected one FILE");
  file = argv[optind];

  if (open_image (file, QED_READ_ONLY, force_share, false, &img) != 0)
    return 1;
  if (p.output == OUTPUT_JSON)
    putchar ('[');
  else
    printf ("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
  r = qed_image_map (img, qed_image_size (img), 0, print_extent, &p);
  if (r == 0 && p.output == OUTPUT_JSON) {
    /* An empty disk still shows one extent, as qemu-img shows it. */
    if (p.first)
      print_json (&(struct qed_map_extent) { .length = 0 }, true);
    printf ("]\n");
  }
  if (close_image (file, img) != 0)
    return 1;
  if (r < 0)
    return fail (file, "reading the map: %s", strerror (-r));
  return 0;
}
