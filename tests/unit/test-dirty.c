/* nbdkit-qed tests: the NEED_CHECK protocol.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Without a backing file, NEED_CHECK reaches the disk (flushed) before
 * the first entry that points at a new cluster; in-place writes leave
 * it alone; after idle_ms without allocating writes the background
 * thread flushes and clears it; closing clears it.  With a backing
 * file it is never set.
 */

#include <config.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "memfile.h"
#include "test.h"

#define SIZE (16 * 1024 * 1024)
#define IDLE_MS 200

static bool
need_check_on_disk (struct memfile *mf)
{
  size_t size;
  const unsigned char *data = memfile_data (mf, &size);

  return data[16] & 2;          /* the features field, little-endian */
}

static struct qed_image *
create_and_open (struct memfile *mf, const char *backing)
{
  struct qed_create_options copts = {
    .size = SIZE, .cluster_size = 65536, .table_size = 4,
    .backing_file = backing, .backing_format = "raw",
  };
  struct qed_open_options opts = { .access = QED_READ_WRITE };
  struct qed_image *img;
  char *path = test_path ("img.qed");

  CHECK_OK (qed_create_file (memfile_file (mf), &copts));
  CHECK_OK (qed_image_open_file (memfile_file (mf), path, &opts, &img));
  free (path);
  CHECK_OK (qed_image_start_background (img, IDLE_MS));
  return img;
}

static void
wait_ms (unsigned ms)
{
  struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
  nanosleep (&ts, NULL);
}

int
main (void)
{
  char buf[4096];
  struct memfile *mf = memfile_new (NULL, 0);
  struct qed_image *img;
  uint64_t flushes;
  char *base_path;
  FILE *fp;

  test_capture_log ();
  memset (buf, 0x5a, sizeof buf);
  img = create_and_open (mf, NULL);
  CHECK (!need_check_on_disk (mf));

  /* The first allocating write sets it, and the write that set it was
   * flushed before the write returned.
   */
  memfile_record (mf);
  CHECK_OK (qed_image_write (img, buf, sizeof buf, 100000, 0));
  CHECK (need_check_on_disk (mf));
  {
    struct memfile *crashed = memfile_crash (mf, memfile_recorded (mf),
                                             MF_CRASH_DROP_ALL, 0);
    CHECK (need_check_on_disk (crashed));
    memfile_free (crashed);
  }

  /* Idle: flushed, then cleared. */
  flushes = memfile_count (mf, MF_FLUSH);
  wait_ms (IDLE_MS * 4);
  CHECK (!need_check_on_disk (mf));
  CHECK (memfile_count (mf, MF_FLUSH) > flushes);

  /* In place: not set again. */
  CHECK_OK (qed_image_write (img, buf, sizeof buf, 100000, 0));
  CHECK (!need_check_on_disk (mf));

  /* Allocating writes keep it set while they keep coming. */
  for (int i = 0; i < 6; i++) {
    CHECK_OK (qed_image_write (img, buf, sizeof buf,
                               (uint64_t) (i + 2) << 20, 0));
    CHECK (need_check_on_disk (mf));
    wait_ms (IDLE_MS / 2);
  }

  /* Closing clears it. */
  CHECK_OK (qed_image_close (img));
  CHECK (!need_check_on_disk (mf));
  memfile_free (mf);

  /* With a backing file it is never set: data is flushed before links
   * instead.
   */
  base_path = test_path ("base.raw");
  fp = fopen (base_path, "w");
  CHECK (fp && ftruncate (fileno (fp), SIZE) == 0 && fclose (fp) == 0);
  free (base_path);
  mf = memfile_new (NULL, 0);
  img = create_and_open (mf, "base.raw");
  for (int i = 0; i < 4; i++) {
    CHECK_OK (qed_image_write (img, buf, 100, (uint64_t) i << 20, 0));
    CHECK (!need_check_on_disk (mf));
  }
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
  return 0;
}
