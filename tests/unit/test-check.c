/* nbdkit-qed tests: check and repair of files larger than the check's
 * window.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The check marks clusters in windows (2^28 clusters by default); a
 * larger file takes several passes.  The window is made 64 clusters
 * here, so that shared tables and shared clusters in different windows
 * fit in small images.  After a repair every entry reads what it read
 * before, and no two entries share a cluster: a write through one
 * range never shows in another.  And no cluster is left unused: the
 * repair moves clusters into the leaks in the middle of the file.
 */

#include <config.h>

#include <endian.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "memfile.h"
#include "test.h"

#define CLUSTER 4096u
#define NELEMS (CLUSTER / 8)                    /* table_size 1 */
#define L1_SPAN ((uint64_t) NELEMS * CLUSTER)   /* 2 MiB */
#define SIZE (4 * L1_SPAN)
#define WINDOW 64u                              /* clusters */

static uint64_t
get64 (struct memfile *mf, uint64_t offset)
{
  uint64_t le;

  CHECK_OK (memfile_file (mf)->ops->pread (memfile_file (mf), &le, 8,
                                           offset));
  return le64toh (le);
}

static void
put64 (struct memfile *mf, uint64_t offset, uint64_t v)
{
  uint64_t le = htole64 (v);

  CHECK_OK (memfile_file (mf)->ops->pwrite (memfile_file (mf), &le, 8,
                                            offset));
}

static void
fill_cluster (struct memfile *mf, uint64_t offset, unsigned char byte)
{
  unsigned char buf[CLUSTER];

  memset (buf, byte, sizeof buf);
  CHECK_OK (memfile_file (mf)->ops->pwrite (memfile_file (mf), buf,
                                            sizeof buf, offset));
}

/* An image of nclusters clusters (header, L1 at cluster 1), with
 * NEED_CHECK set, so that a writable open repairs it.
 */
static struct memfile *
new_image (uint64_t nclusters)
{
  struct memfile *mf = test_new_image (SIZE, CLUSTER, 1);

  CHECK_OK (memfile_file (mf)->ops->truncate (memfile_file (mf),
                                              nclusters * CLUSTER));
  test_set_need_check (mf);
  return mf;
}

/* Write through one virtual offset, and no other may change. */
static void
check_no_alias (struct qed_image *img, const uint64_t *offsets, size_t n)
{
  unsigned char before[8][CLUSTER], buf[CLUSTER];

  CHECK (n <= 8);
  for (size_t i = 0; i < n; i++)
    CHECK_OK (qed_image_read (img, before[i], CLUSTER, offsets[i]));
  for (size_t i = 0; i < n; i++) {
    memset (buf, 0xe0 + i, sizeof buf);
    CHECK_OK (qed_image_write (img, buf, sizeof buf, offsets[i], 0));
    memcpy (before[i], buf, sizeof buf);
    for (size_t j = 0; j < n; j++) {
      CHECK_OK (qed_image_read (img, buf, CLUSTER, offsets[j]));
      if (memcmp (buf, before[j], CLUSTER) != 0) {
        fprintf (stderr, "writing at %" PRIu64 " changed %" PRIu64 "\n",
                 offsets[i], offsets[j]);
        exit (EXIT_FAILURE);
      }
    }
  }
}

/* No corruption, and no leak: the file holds the clusters the tables
 * use (parsed from the file) and nothing else.
 */
static void
check_clean (struct memfile *mf)
{
  struct qed_image *img = test_open_image (mf);
  struct qed_check_result res;
  size_t size;

  CHECK_OK (qed_image_check (img, false, &res));
  if (res.corruptions || res.check_errors || res.leaks) {
    fprintf (stderr, "after repair: %" PRIu64 " corruptions, %" PRIu64
             " check errors, %" PRIu64 " leaks\n", res.corruptions,
             res.check_errors, res.leaks);
    exit (EXIT_FAILURE);
  }
  CHECK_OK (qed_image_close (img));
  memfile_data (mf, &size);
  CHECK (test_check_layout (mf) * CLUSTER == size);
}

/* L1 entries 0 and 1 point at one L2 table beyond the first window;
 * its entry 0 points at a data cluster inside it.  Both ranges must
 * keep reading the data, each from a cluster of its own.
 */
static void
test_shared_table_beyond_first_window (void)
{
  struct memfile *mf = new_image (2 * WINDOW);
  uint64_t table = (uint64_t) (WINDOW + 10) * CLUSTER;
  uint64_t data = 5 * CLUSTER;
  uint64_t offsets[] = { 0, L1_SPAN };
  unsigned char buf[CLUSTER];
  struct qed_image *img;

  put64 (mf, CLUSTER, table);
  put64 (mf, CLUSTER + 8, table);
  put64 (mf, table, data);
  fill_cluster (mf, data, 0x5d);

  img = test_open_image (mf);           /* repairs */
  for (size_t i = 0; i < 2; i++) {
    CHECK_OK (qed_image_read (img, buf, sizeof buf, offsets[i]));
    CHECK (buf[0] == 0x5d && buf[CLUSTER - 1] == 0x5d);
  }
  check_no_alias (img, offsets, 2);
  CHECK_OK (qed_image_close (img));
  check_clean (mf);
  memfile_free (mf);
}

/* Tables in two windows share a data cluster in a third; two entries
 * of one table share a cluster in the first window.
 */
static void
test_shared_clusters_across_windows (void)
{
  struct memfile *mf = new_image (3 * WINDOW);
  uint64_t t0 = 2 * CLUSTER, t1 = (uint64_t) (WINDOW + 3) * CLUSTER;
  uint64_t far = (uint64_t) (2 * WINDOW + 7) * CLUSTER;
  uint64_t near = 9 * CLUSTER;
  uint64_t offsets[] = {
    0, L1_SPAN + 4 * CLUSTER, 2 * CLUSTER, 3 * CLUSTER,
  };
  struct qed_image *img;

  put64 (mf, CLUSTER, t0);
  put64 (mf, CLUSTER + 8, t1);
  put64 (mf, t0, far);                  /* virtual cluster 0 */
  put64 (mf, t1 + 4 * 8, far);          /* L1_SPAN + 4 clusters */
  put64 (mf, t0 + 2 * 8, near);         /* clusters 2 and 3 */
  put64 (mf, t0 + 3 * 8, near);
  fill_cluster (mf, far, 0xfa);
  fill_cluster (mf, near, 0x9e);

  img = test_open_image (mf);
  check_no_alias (img, offsets, 4);
  CHECK_OK (qed_image_close (img));
  check_clean (mf);
  memfile_free (mf);
}

/* Entries past the end, in a file of several windows: cleared. */
static void
test_past_end_across_windows (void)
{
  struct memfile *mf = new_image (2 * WINDOW + 5);
  uint64_t table = (uint64_t) (WINDOW + 1) * CLUSTER;
  unsigned char buf[CLUSTER];
  struct qed_image *img;

  put64 (mf, CLUSTER, table);
  put64 (mf, table, (uint64_t) (2 * WINDOW + 5) * CLUSTER);  /* at EOF */
  put64 (mf, table + 8, (uint64_t) (3 * WINDOW) * CLUSTER);  /* beyond */
  img = test_open_image (mf);
  CHECK_OK (qed_image_read (img, buf, sizeof buf, 0));
  CHECK (buf[0] == 0 && buf[CLUSTER - 1] == 0);
  CHECK_OK (qed_image_close (img));
  check_clean (mf);
  memfile_free (mf);
}

/* Leaks in the middle of the file, in an image the engine wrote: a
 * data cluster and an L2 table (with its clusters) whose entries were
 * cleared.  The check counts them, the repair moves the clusters after
 * them into them and truncates the file; everything reads as before.
 */
static void
test_leaks_in_the_middle (void)
{
  struct memfile *mf = test_new_image (SIZE, CLUSTER, 1);
  struct qed_image *img = test_open_image (mf);
  unsigned char *model = calloc (1, SIZE);
  struct qed_check_result res;
  const uint64_t leaked = 1 + 1 + 6;
  uint64_t table0;
  size_t size;

  CHECK (model != NULL);
  for (uint64_t i = 0; i < 3; i++)
    for (uint64_t j = 0; j < 6; j++)
      test_model_write (model, img, i * L1_SPAN + j * CLUSTER, CLUSTER,
                        10 * i + j);
  CHECK_OK (qed_image_close (img));
  /* Cluster 2 of range 0, and the table of range 1. */
  table0 = get64 (mf, CLUSTER);
  CHECK (get64 (mf, table0 + 2 * 8) > 1 && get64 (mf, CLUSTER + 8) != 0);
  put64 (mf, table0 + 2 * 8, 0);
  memset (model + 2 * CLUSTER, 0, CLUSTER);
  put64 (mf, CLUSTER + 8, 0);
  memset (model + L1_SPAN, 0, L1_SPAN);

  img = test_open_image (mf);
  CHECK_OK (qed_image_check (img, false, &res));
  CHECK (res.leaks == leaked && res.corruptions == 0);
  CHECK_OK (qed_image_check (img, true, &res));
  CHECK (res.leaks == 0 && res.leaks_fixed == leaked);
  memfile_data (mf, &size);
  CHECK (res.image_end == size);
  test_model_check (model, SIZE, img);
  /* Writes land where the clusters moved. */
  test_model_write (model, img, L1_SPAN + CLUSTER, 2 * CLUSTER, 50);
  test_model_write (model, img, 5 * CLUSTER, CLUSTER, 51);
  test_model_check (model, SIZE, img);
  CHECK_OK (qed_image_close (img));
  check_clean (mf);
  img = test_open_image (mf);
  test_model_check (model, SIZE, img);
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
  free (model);
}

int
main (void)
{
  test_capture_log ();
  qed_set_check_window (WINDOW);
  test_shared_table_beyond_first_window ();
  test_shared_clusters_across_windows ();
  test_past_end_across_windows ();
  test_leaks_in_the_middle ();
  return 0;
}
