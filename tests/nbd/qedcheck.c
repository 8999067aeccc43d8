/* nbdkit-qed tests: run the engine's check on an image file.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 *   qedcheck [-r] IMAGE
 *
 * Prints the result as "name value" lines in qemu-img check's terms.
 * With -r the image is opened writable (which repairs it when it has
 * NEED_CHECK) and then checked with repair.  Exit status: 0 clean,
 * 2 corruptions, 3 leaks only, 1 failure (as qemu-img check).
 */

#include <config.h>

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "qed.h"

int
main (int argc, char **argv)
{
  bool repair = argc == 3 && strcmp (argv[1], "-r") == 0;
  struct qed_open_options opts = {
    .access = repair ? QED_READ_WRITE : QED_READ_ONLY,
    .no_backing = false,
  };
  struct qed_check_result res;
  struct qed_image *img;

  if (argc != 2 && !repair) {
    fprintf (stderr, "usage: qedcheck [-r] IMAGE\n");
    return 1;
  }
  if (qed_image_open (argv[argc - 1], &opts, &img) < 0)
    return 1;
  if (qed_image_check (img, repair, &res) < 0) {
    qed_image_close (img);
    return 1;
  }
  printf ("corruptions %" PRIu64 "\n", res.corruptions);
  printf ("corruptions-fixed %" PRIu64 "\n", res.corruptions_fixed);
  printf ("leaks %" PRIu64 "\n", res.leaks);
  printf ("leaks-fixed %" PRIu64 "\n", res.leaks_fixed);
  printf ("check-errors %" PRIu64 "\n", res.check_errors);
  printf ("allocated-clusters %" PRIu64 "\n", res.allocated_clusters);
  printf ("total-clusters %" PRIu64 "\n", res.total_clusters);
  printf ("image-end-offset %" PRIu64 "\n", res.image_end);
  if (qed_image_close (img) < 0)
    return 1;
  return res.check_errors ? 1 : res.corruptions ? 2 : res.leaks ? 3 : 0;
}
