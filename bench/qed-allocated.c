/* nbdkit-qed benchmarks: a QED image whose every cluster is allocated,
 * made without writing its data.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 *   qed-allocated [-c CLUSTER_SIZE] SIZE FILE
 *
 * Creates FILE as qemu-img create -f qed would (CLUSTER_SIZE bytes per
 * cluster, default 65536; the smallest table size that addresses SIZE
 * bytes), then fills its L1 table and every L2 table so that each
 * cluster of the virtual disk points at a cluster of its own: the L2
 * tables follow the L1 table, the data clusters follow the L2 tables,
 * in the order of the virtual disk.  Only the tables are written; the
 * data is a hole of the file's size (it reads as zeros), so a 1 TiB
 * image whose 2^24 clusters are all allocated costs 128 MiB of disk
 * and seconds, where writing it would cost 1 TiB.  qemu-img check and
 * our qedcheck find it consistent, with every cluster allocated.
 *
 * Used by bench/scale.sh; built by make (bench/Makefile.am), not part
 * of make check.
 */

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qed.h"
#include "qed-format.h"

static void
usage (void)
{
  fprintf (stderr, "usage: qed-allocated [-c CLUSTER_SIZE] SIZE FILE\n");
  exit (1);
}

static void
pwrite_all (int fd, const void *buf, size_t n, uint64_t offset)
{
  const char *p = buf;

  while (n > 0) {
    ssize_t r = pwrite (fd, p, n, offset);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      perror ("qed-allocated: pwrite");
      exit (1);
    }
    p += r;
    n -= r;
    offset += r;
  }
}

int
main (int argc, char **argv)
{
  struct qed_create_options opts = { .cluster_size = 65536 };
  unsigned char hbuf[QED_HEADER_STRUCT_SIZE];
  struct qed_header hdr;
  uint64_t cluster, table_bytes, entries, clusters, n_l2, l2_start;
  uint64_t data_start, *table;
  struct stat st;
  char *end;
  int c, fd, r;

  while ((c = getopt (argc, argv, "c:")) != -1) {
    if (c == 'c')
      opts.cluster_size = strtoul (optarg, NULL, 0);
    else
      usage ();
  }
  if (optind != argc - 2)
    usage ();
  errno = 0;
  opts.size = strtoull (argv[optind], &end, 0);
  if (errno || *end || opts.size == 0)
    usage ();
  if (!qed_cluster_size_valid (opts.cluster_size)) {
    fprintf (stderr, "qed-allocated: invalid cluster size\n");
    return 1;
  }
  /* The smallest table size (QEMU's default, 4, or more) that
   * addresses the size.
   */
  for (opts.table_size = QED_DEFAULT_TABLE_SIZE;
       opts.table_size < QED_MAX_TABLE_SIZE &&
         qed_image_size_limit (opts.cluster_size, opts.table_size) < opts.size;
       opts.table_size *= 2)
    ;
  r = qed_create (argv[optind + 1], &opts);
  if (r < 0) {
    fprintf (stderr, "qed-allocated: create %s: %s\n", argv[optind + 1],
             strerror (-r));
    return 1;
  }

  fd = open (argv[optind + 1], O_RDWR);
  if (fd < 0 || pread (fd, hbuf, sizeof hbuf, 0) != sizeof hbuf ||
      fstat (fd, &st) < 0) {
    perror (argv[optind + 1]);
    return 1;
  }
  qed_header_decode (hbuf, &hdr);

  cluster = hdr.cluster_size;
  table_bytes = (uint64_t) hdr.table_size * cluster;
  entries = table_bytes / sizeof (uint64_t);
  clusters = (hdr.image_size + cluster - 1) / cluster;
  n_l2 = (clusters + entries - 1) / entries;
  /* After what qed_create wrote (the header and the L1 table). */
  l2_start = ((uint64_t) st.st_size + cluster - 1) / cluster * cluster;
  data_start = l2_start + n_l2 * table_bytes;

  table = malloc (table_bytes);
  if (table == NULL) {
    perror ("malloc");
    return 1;
  }

  /* The L1 table: L2 table i at l2_start + i * table_bytes. */
  memset (table, 0, table_bytes);
  for (uint64_t i = 0; i < n_l2; i++)
    table[i] = htole64 (l2_start + i * table_bytes);
  pwrite_all (fd, table, table_bytes, hdr.l1_table_offset);

  /* The L2 tables: cluster k of the disk at data_start + k * cluster. */
  for (uint64_t i = 0; i < n_l2; i++) {
    for (uint64_t j = 0; j < entries; j++) {
      uint64_t k = i * entries + j;
      table[j] = k < clusters ? htole64 (data_start + k * cluster) : 0;
    }
    pwrite_all (fd, table, table_bytes, l2_start + i * table_bytes);
  }

  /* The data clusters: a hole up to the end of the last one. */
  if (ftruncate (fd, data_start + clusters * cluster) < 0 ||
      fsync (fd) < 0 || close (fd) < 0) {
    perror (argv[optind + 1]);
    return 1;
  }
  free (table);
  printf ("%" PRIu64 " clusters of %" PRIu64 " bytes allocated, table size %"
          PRIu32 ", %" PRIu64 " L2 tables (%" PRIu64 " MiB)\n",
          clusters, cluster, hdr.table_size, n_l2,
          n_l2 * table_bytes >> 20);
  return 0;
}
