/* qed-img: make, inspect, check, repair, map, resize, commit, rebase
 * and convert QED images, with qemu-img's syntax, on the engine that
 * serves them.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include <config.h>

#include <stdio.h>
#include <string.h>

#include "qed-net.h"
#include "qed-img.h"

const struct command commands[] = {
  { "create", cmd_create,
    "[-f qed] [-b BACKING -F raw|qed] [-u] [-o OPTIONS] [-q] FILE [SIZE]",
    "make a new image (OPTIONS: cluster_size=SIZE,table_size=N)" },
  { "info", cmd_info,
    "[-f qed] [-U] [--output=human|json] [--backing-chain] FILE",
    "show what the header says, and the backing chain" },
  { "check", cmd_check,
    "[-f qed] [-U] [-r leaks|all] [--output=human|json] [-q] FILE",
    "check the image for corruption and leaked clusters, and repair" },
  { "map", cmd_map,
    "[-f qed] [-U] [--output=human|json] FILE",
    "show where each byte of the image and its backing chain is stored" },
  { "resize", cmd_resize,
    "[-f qed] [--shrink] [-q] FILE [+|-]SIZE",
    "change the size of the disk (smaller only with --shrink)" },
  { "convert", cmd_convert,
    "[-f qed|raw] [-p] [-q] [-O qed|raw] [-o OPTIONS] [-B BACKING -F raw|qed]"
    " SRC DST",
    "copy an image into a new one (OPTIONS as for create)" },
  { "rebase", cmd_rebase,
    "[-f qed] [-p] [-u] [-q] -b BACKING [-F raw|qed] FILE",
    "give the image another backing file, or none (-b \"\")" },
  { "commit", cmd_commit,
    "[-f qed] [-p] [-d] [-q] FILE",
    "write what the image holds into its backing file, and empty it" },
  { NULL }
};

static const struct command *
find_command (const char *name)
{
  for (const struct command *c = commands; c->name; c++)
    if (strcmp (c->name, name) == 0)
      return c;
  return NULL;
}

int
command_help (const char *name)
{
  const struct command *c = find_command (name);

  printf ("Usage: qed-img %s %s\n\n%s.\n\nSee qed-img(1) for the details.\n",
          c->name, c->synopsis, c->summary);
  return 0;
}

static int
usage (FILE *fp)
{
  fprintf (fp, "Usage: qed-img COMMAND [OPTIONS] ARGS...\n\n"
           "QED disk images without QEMU.  Commands:\n\n");
  for (const struct command *c = commands; c->name; c++)
    fprintf (fp, "  %-8s %s\n", c->name, c->summary);
  fprintf (fp, "\n'qed-img COMMAND --help' shows a command's options;"
           " qed-img(1) has the details.\n");
  return fp == stdout ? 0 : 1;
}

/* Engine messages already name the file they are about. */
static void
log_message (enum qed_log_level level, const char *msg)
{
  if (level != QED_LOG_DEBUG)
    fprintf (stderr, "qed-img: %s\n", msg);
}

const struct qed_opener *opener;

int
main (int argc, char **argv)
{
  const struct qed_net_options net_options = { .protocols = QED_PROTO_ALL };
  struct qed_opener *net_opener;
  const struct command *c;
  int r;

  if (argc < 2)
    return usage (stderr);
  if (strcmp (argv[1], "--help") == 0 || strcmp (argv[1], "-h") == 0)
    return usage (stdout);
  if (strcmp (argv[1], "--version") == 0 || strcmp (argv[1], "-V") == 0) {
    printf ("qed-img %s\n", PACKAGE_VERSION);
    return 0;
  }
  c = find_command (argv[1]);
  if (c == NULL) {
    fail (NULL, "unknown command '%s'", argv[1]);
    return usage (stderr);
  }
  qed_set_log_function (log_message);
  if ((r = qed_net_opener_new (&net_options, &net_opener)) < 0)
    return fail (NULL, "%s", strerror (-r));
  opener = net_opener;
  /* The command's own getopt sees its name as argv[0]. */
  r = c->run (argc - 1, argv + 1);
  qed_net_opener_free (net_opener);
  return r;
}
