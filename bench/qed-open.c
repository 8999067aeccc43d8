/* nbdkit-qed benchmarks: how long the engine takes to open an image.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 *   qed-open [-n RUNS] IMAGE
 *
 * Opens IMAGE as the plugin does (QED_WRITE_ON_DEMAND, then
 * qed_image_enable_writes as the first writable connection does),
 * reads 4 KiB in the middle of the disk (the first request: it loads
 * an L2 table when the image maps anything there) and closes it, RUNS
 * times (default 20).  Prints one line:
 *
 *   open-ms FIRST MEDIAN enable-ms MEDIAN close-ms MEDIAN rss-kib N
 *   read-ms FIRST MEDIAN hwm-kib N
 *
 * FIRST is the first open or read (its reads may miss the page cache),
 * the medians are over all runs, rss-kib is the process's VmRSS right
 * after the last open (before the read and close), and hwm-kib its
 * VmHWM (peak RSS) at the end: the engine's own memory plus a small C
 * program's.  Built by make (bench/Makefile.am) and run by
 * bench/bench.sh and bench/scale.sh; it is not part of make check.
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "qed.h"

static double
now_ms (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int
compare_double (const void *a, const void *b)
{
  double x = *(const double *) a, y = *(const double *) b;
  return x < y ? -1 : x > y;
}

static double
median (double *v, int n)
{
  qsort (v, n, sizeof *v, compare_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* A field of /proc/self/status in KiB: "VmRSS" or "VmHWM". */
static long
status_kib (const char *field)
{
  FILE *fp = fopen ("/proc/self/status", "r");
  char line[256];
  size_t n = strlen (field);
  long kib = -1;

  if (fp == NULL)
    return -1;
  while (fgets (line, sizeof line, fp))
    if (strncmp (line, field, n) == 0 && line[n] == ':' &&
        sscanf (line + n + 1, "%ld", &kib) == 1)
      break;
  fclose (fp);
  return kib;
}

int
main (int argc, char **argv)
{
  struct qed_open_options opts = { .access = QED_WRITE_ON_DEMAND };
  double *open_ms, *enable_ms, *read_ms, *close_ms, first = 0;
  double first_read = 0;
  static char buf[4096];
  long rss = -1;
  int runs = 20, c;

  while ((c = getopt (argc, argv, "n:")) != -1) {
    if (c == 'n' && atoi (optarg) > 0)
      runs = atoi (optarg);
    else {
      fprintf (stderr, "usage: qed-open [-n RUNS] IMAGE\n");
      return 1;
    }
  }
  if (optind != argc - 1) {
    fprintf (stderr, "usage: qed-open [-n RUNS] IMAGE\n");
    return 1;
  }

  open_ms = calloc (runs, sizeof *open_ms);
  enable_ms = calloc (runs, sizeof *enable_ms);
  read_ms = calloc (runs, sizeof *read_ms);
  close_ms = calloc (runs, sizeof *close_ms);
  if (!open_ms || !enable_ms || !read_ms || !close_ms) {
    perror ("calloc");
    return 1;
  }

  for (int i = 0; i < runs; i++) {
    struct qed_image *img;
    double t0, t1, t2, t3, t4;
    uint64_t middle;
    int r;

    t0 = now_ms ();
    r = qed_image_open (argv[optind], &opts, &img);
    t1 = now_ms ();
    if (r < 0) {
      fprintf (stderr, "qed-open: %s: %s\n", argv[optind], strerror (-r));
      return 1;
    }
    r = qed_image_enable_writes (img);
    t2 = now_ms ();
    if (r < 0) {
      fprintf (stderr, "qed-open: enable writes: %s\n", strerror (-r));
      return 1;
    }
    if (i == runs - 1)
      rss = status_kib ("VmRSS");
    middle = qed_image_size (img) / 2 / sizeof buf * sizeof buf;
    if (qed_image_size (img) < sizeof buf) {
      fprintf (stderr, "qed-open: the image is smaller than 4 KiB\n");
      return 1;
    }
    r = qed_image_read (img, buf, sizeof buf, middle);
    t3 = now_ms ();
    if (r < 0) {
      fprintf (stderr, "qed-open: read: %s\n", strerror (-r));
      return 1;
    }
    r = qed_image_close (img);
    t4 = now_ms ();
    if (r < 0) {
      fprintf (stderr, "qed-open: close: %s\n", strerror (-r));
      return 1;
    }
    if (i == 0) {
      first = t1 - t0;
      first_read = t3 - t2;
    }
    open_ms[i] = t1 - t0;
    enable_ms[i] = t2 - t1;
    read_ms[i] = t3 - t2;
    close_ms[i] = t4 - t3;
  }

  printf ("open-ms %.3f %.3f enable-ms %.3f close-ms %.3f rss-kib %ld"
          " read-ms %.3f %.3f hwm-kib %ld\n",
          first, median (open_ms, runs), median (enable_ms, runs),
          median (close_ms, runs), rss, first_read, median (read_ms, runs),
          status_kib ("VmHWM"));
  return 0;
}
