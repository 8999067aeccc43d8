/* nbdkit-qed fuzzers: run a harness once on each input given.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 *   fuzz-open FILE|DIR...
 *   fuzz-ops FILE|DIR...
 *
 * Linked with a harness (fuzz-open.c, fuzz-ops.c) in place of
 * libFuzzer, so that every build -- any compiler, with or without
 * sanitizers, under valgrind -- can replay the corpus and the
 * regressions.  Each FILE, and each file under each DIR (recursively,
 * in sorted order), is passed to LLVMFuzzerTestOneInput once, in a
 * buffer of exactly its size, as libFuzzer does, so that AddressSanitizer
 * and valgrind see any read past its end.  The harness aborts on a
 * finding; the name of the input is printed before it runs.  Exits 1
 * when an input cannot be read.
 */

#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static const char *progname;
static unsigned inputs;

static int
run_file (const char *path, int fd, off_t size)
{
  uint8_t *data = malloc (size);
  ssize_t r;

  if (data == NULL && size > 0) {
    fprintf (stderr, "%s: %s: out of memory\n", progname, path);
    return -1;
  }
  for (off_t done = 0; done < size; done += r) {
    r = read (fd, data + done, size - done);
    if (r <= 0) {
      fprintf (stderr, "%s: %s: %s\n", progname, path,
               r == 0 ? "file shrank while read" : strerror (errno));
      free (data);
      return -1;
    }
  }
  fprintf (stderr, "%s: %s\n", progname, path);
  LLVMFuzzerTestOneInput (data, size);
  free (data);
  inputs++;
  return 0;
}

static int
skip_dots (const struct dirent *d)
{
  return strcmp (d->d_name, ".") != 0 && strcmp (d->d_name, "..") != 0;
}

static int
run_path (const char *path)
{
  struct dirent **names;
  struct stat st;
  int fd, n, r = 0;

  fd = open (path, O_RDONLY | O_CLOEXEC);
  if (fd == -1 || fstat (fd, &st) == -1) {
    fprintf (stderr, "%s: %s: %s\n", progname, path, strerror (errno));
    if (fd != -1)
      close (fd);
    return -1;
  }
  if (!S_ISDIR (st.st_mode)) {
    r = run_file (path, fd, st.st_size);
    close (fd);
    return r;
  }
  close (fd);

  n = scandir (path, &names, skip_dots, alphasort);
  if (n == -1) {
    fprintf (stderr, "%s: %s: %s\n", progname, path, strerror (errno));
    return -1;
  }
  for (int i = 0; i < n; i++) {
    char *child;

    if (r == 0) {
      if (asprintf (&child, "%s/%s", path, names[i]->d_name) == -1) {
        fprintf (stderr, "%s: out of memory\n", progname);
        r = -1;
      }
      else {
        r = run_path (child);
        free (child);
      }
    }
    free (names[i]);
  }
  free (names);
  return r;
}

int
main (int argc, char *argv[])
{
  progname = argv[0];
  if (argc < 2) {
    fprintf (stderr, "usage: %s FILE|DIR...\n", progname);
    exit (EXIT_FAILURE);
  }
  LLVMFuzzerInitialize (&argc, &argv);
  for (int i = 1; i < argc; i++)
    if (run_path (argv[i]) == -1)
      exit (EXIT_FAILURE);
  printf ("%s: %u inputs run\n", progname, inputs);
  exit (EXIT_SUCCESS);
}
