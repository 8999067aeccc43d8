/* nbdkit-qed tests: the HTTP file layer (files/http.c), on its own.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 *   http-read [-c CONNECTIONS] [-t TIMEOUT] [-p PROTOCOLS] [-C CACHE] URL
 *       Open URL; exit status 0 when it opens, 1 when not (the layer's
 *       messages are on stderr).
 *   http-read ... URL FILE
 *       Also: its size is FILE's, and random reads from 4 threads at
 *       once (through the read cache with -C) read what FILE holds; a
 *       read past the end fails.
 *   http-read -i ... URL
 *       Then read lines "OFFSET COUNT" from stdin and answer each on
 *       stdout with "ok SUM" (a checksum of the bytes) or
 *       "error STRERROR", flushed at once: a script drives the reads
 *       while it stops and starts the server.
 */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qed.h"
#include "qed-net.h"

#define THREADS 4
#define READS 100
#define MAX_READ (256 * 1024)

static struct qed_file *file;
static const unsigned char *expected;
static uint64_t size;

static uint64_t
next_rand (uint64_t *state)
{
  /* xorshift64* */
  *state ^= *state >> 12;
  *state ^= *state << 25;
  *state ^= *state >> 27;
  return *state * UINT64_C (2685821657736338717);
}

static void *
reader (void *arg)
{
  uint64_t rng = (uintptr_t) arg;
  unsigned char *buf = malloc (MAX_READ);
  long failures = 0;
  int i, r;

  if (buf == NULL)
    return (void *) 1;
  for (i = 0; i < READS; i++) {
    uint64_t count = 1 + next_rand (&rng) % MAX_READ;
    uint64_t offset;

    if (count > size)
      count = size;
    offset = next_rand (&rng) % (size - count + 1);
    if ((r = file->ops->pread (file, buf, count, offset)) < 0) {
      fprintf (stderr, "read of %" PRIu64 " bytes at %" PRIu64 ": %s\n",
               count, offset, strerror (-r));
      failures++;
    }
    else if (memcmp (buf, expected + offset, count) != 0) {
      fprintf (stderr, "read of %" PRIu64 " bytes at %" PRIu64
               ": wrong data\n", count, offset);
      failures++;
    }
  }
  free (buf);
  return (void *) failures;
}

/* The file reads as path holds. */
static int
compare (const char *path)
{
  pthread_t threads[THREADS];
  unsigned char byte;
  uint64_t got;
  struct stat st;
  void *ret;
  int fd, r, status = 0;

  if ((fd = open (path, O_RDONLY)) == -1 || fstat (fd, &st) == -1) {
    perror (path);
    return 1;
  }
  size = st.st_size;
  if (size == 0 ||
      (expected = mmap (NULL, size, PROT_READ, MAP_PRIVATE, fd, 0))
      == MAP_FAILED) {
    fprintf (stderr, "%s: cannot map it (empty?)\n", path);
    return 1;
  }
  if ((r = file->ops->get_size (file, &got)) < 0 || got != size) {
    fprintf (stderr, "size: %" PRIu64 ", expected %" PRIu64 "\n", got, size);
    return 1;
  }
  for (uintptr_t i = 0; i < THREADS; i++)
    if (pthread_create (&threads[i], NULL, reader, (void *) (i + 1)) != 0) {
      perror ("pthread_create");
      return 1;
    }
  for (int i = 0; i < THREADS; i++) {
    pthread_join (threads[i], &ret);
    if (ret != NULL)
      status = 1;
  }
  /* Every byte once, in order, the last one alone. */
  if (file->ops->pread (file, &byte, 1, size - 1) < 0 ||
      byte != expected[size - 1]) {
    fprintf (stderr, "the last byte does not read\n");
    status = 1;
  }
  if (file->ops->pread (file, &byte, 1, size) != -EIO) {
    fprintf (stderr, "a read past the end did not fail with EIO\n");
    status = 1;
  }
  return status;
}

/* Answer "OFFSET COUNT" lines from stdin. */
static int
interactive (void)
{
  uint64_t offset, count, sum, i;
  unsigned char *buf;
  int r;

  while (scanf ("%" SCNu64 " %" SCNu64, &offset, &count) == 2) {
    if ((buf = malloc (count ? count : 1)) == NULL)
      return 1;
    if ((r = file->ops->pread (file, buf, count, offset)) < 0)
      printf ("error %s\n", strerror (-r));
    else {
      for (sum = 0, i = 0; i < count; i++)
        sum = sum * 31 + buf[i];
      printf ("ok %" PRIu64 "\n", sum);
    }
    fflush (stdout);
    free (buf);
  }
  return 0;
}

static void
usage (void)
{
  fprintf (stderr, "usage: http-read [-i] [-c CONNECTIONS] [-t TIMEOUT]"
           " [-p PROTOCOLS] [-C CACHE] URL [FILE]\n");
  exit (2);
}

int
main (int argc, char *argv[])
{
  struct qed_net_options options = { .protocols = QED_PROTO_ALL };
  size_t cache = 0;
  int c, r, inter = 0, status;

  while ((c = getopt (argc, argv, "ic:t:p:C:")) != -1) {
    switch (c) {
    case 'i':
      inter = 1;
      break;
    case 'c':
      options.max_connections = atoi (optarg);
      break;
    case 't':
      options.timeout = options.connect_timeout = atoi (optarg);
      break;
    case 'p':
      if (qed_parse_protocols (optarg, &options.protocols) < 0)
        exit (2);
      break;
    case 'C':
      cache = strtoull (optarg, NULL, 0);
      break;
    default:
      usage ();
    }
  }
  if (argc - optind < 1 || argc - optind > 2)
    usage ();

  if ((r = qed_http_file_open (argv[optind], &options, &file)) < 0) {
    fprintf (stderr, "open %s: %s\n", argv[optind], strerror (-r));
    return 1;
  }
  if (file->writable || file->ops->pwrite || file->ops->extent ||
      !file->ops->identity) {
    fprintf (stderr, "open %s: not a read-only file without extents\n",
             argv[optind]);
    return 1;
  }
  if (cache && (r = qed_read_cache_new (file, cache, &file)) < 0)
    return 1;
  status = 0;
  if (inter)
    status = interactive ();
  else if (argc - optind == 2)
    status = compare (argv[optind + 1]);
  file->ops->close (file);
  return status;
}
