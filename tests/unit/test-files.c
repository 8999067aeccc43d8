/* nbdkit-qed tests: files that lack capabilities, and openers.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * A file declares what it can do by the operations it has (qed-file.h).
 * One that cannot grow serves what is allocated and refuses new
 * clusters with ENOSPC, saying why; one that cannot punch still zeroes
 * and trims correctly.  Backing files are opened through the opener in
 * the options, by the name it resolves.
 */

#include <config.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "memfile.h"
#include "test.h"

#define CLUSTER 4096u
#define SIZE (4 * 1024 * 1024)

static unsigned char model[SIZE];

/* Without truncate: what is allocated stays writable; nothing new. */
static void
test_cannot_grow (void)
{
  struct memfile *mf = test_new_image (SIZE, CLUSTER, 1);
  struct qed_image *img = test_open_image (mf);
  unsigned char buf[CLUSTER];
  size_t size_before, size_after;
  struct qed_check_result res;

  memset (model, 0, sizeof model);
  test_model_write (model, img, 0, 2 * CLUSTER, 1);  /* allocates */
  CHECK_OK (qed_image_close (img));

  memfile_without (mf, MF_TRUNCATE);
  img = test_open_image (mf);
  memfile_data (mf, &size_before);
  test_clear_log ();

  /* In place: fine. */
  test_model_write (model, img, 100, 1000, 2);
  /* Into an unallocated cluster, in the existing table and beyond it. */
  memset (buf, 'x', sizeof buf);
  CHECK_ERR (qed_image_write (img, buf, sizeof buf, 8 * CLUSTER, 0), ENOSPC);
  CHECK (test_log_contains ("cannot allocate clusters: the file cannot grow"));
  CHECK_ERR (qed_image_write (img, buf, sizeof buf, SIZE - CLUSTER, 0),
             ENOSPC);
  /* Zero clusters in the existing table need no space. */
  CHECK_OK (qed_image_zero (img, CLUSTER, 0, 0));
  memset (model, 0, CLUSTER);
  test_model_check (model, SIZE, img);

  memfile_data (mf, &size_after);
  CHECK (size_after == size_before);
  CHECK_OK (qed_image_check (img, false, &res));
  CHECK (res.corruptions == 0 && res.leaks == 0 && res.check_errors == 0);
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
}

/* Without punch: zeroing with may-trim writes zeros, a fast zero over
 * data is refused, trim leaves the data as it was (its contents are
 * unspecified; here they stay).
 */
static void
test_cannot_punch (void)
{
  struct memfile *mf = test_new_image (SIZE, CLUSTER, 1);
  struct qed_image *img;

  memfile_without (mf, MF_PUNCH);
  img = test_open_image (mf);
  memset (model, 0, sizeof model);
  test_model_write (model, img, 0, 4 * CLUSTER, 3);

  CHECK_ERR (qed_image_zero (img, CLUSTER, 0, QED_MAY_TRIM | QED_FAST_ZERO),
             ENOTSUP);
  test_model_check (model, SIZE, img);
  CHECK_OK (qed_image_zero (img, CLUSTER, 0, QED_MAY_TRIM));
  memset (model, 0, CLUSTER);
  CHECK_OK (qed_image_trim (img, CLUSTER, CLUSTER, 0));
  test_model_check (model, SIZE, img);
  CHECK (memfile_count (mf, MF_PUNCH) == 0);
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
}

/* An opener that serves names from memfiles, so that the engine's use
 * of it shows: the backing name is resolved by it, relative to the
 * image, and opened read-only.
 */
struct names {
  struct memfile *base;
  char *resolved_base;          /* what resolve was asked, last */
  unsigned opens, write_opens;
  struct memfile *opened[4];    /* freed by the test */
};

static int
names_resolve (const struct qed_opener *o, const char *name,
               const char *base, char **resolved)
{
  struct names *n = o->opaque;

  free (n->resolved_base);
  n->resolved_base = base ? strdup (base) : NULL;
  return asprintf (resolved, "mem:%s", name) == -1 ? -ENOMEM : 0;
}

static int
names_open (const struct qed_opener *o, const char *name, unsigned flags,
            struct qed_file **filep)
{
  struct names *n = o->opaque;

  const unsigned char *data;
  size_t size;

  if (strcmp (name, "mem:base.raw") != 0)
    return -ENOENT;
  CHECK (n->opens < sizeof n->opened / sizeof n->opened[0]);
  if (flags & QED_OPEN_WRITE)
    n->write_opens++;
  /* A fresh memfile over the base's bytes, as a new open would be. */
  data = memfile_data (n->base, &size);
  n->opened[n->opens] = memfile_new (data, size);
  *filep = memfile_file (n->opened[n->opens++]);
  return 0;
}

static void
test_opener (void)
{
  static unsigned char base_bytes[SIZE / 2];
  struct names n = { 0 };
  struct qed_opener opener = {
    .resolve = names_resolve, .open = names_open, .opaque = &n,
  };
  struct memfile *mf = memfile_new (NULL, 0);
  struct qed_create_options copts = {
    .size = SIZE, .cluster_size = CLUSTER,
    .backing_file = "base.raw", .backing_format = "raw",
  };
  struct qed_open_options opts = {
    .access = QED_READ_WRITE, .opener = &opener,
  };
  struct qed_image *img;

  test_fill_pattern (base_bytes, sizeof base_bytes, 7);
  n.base = memfile_new (base_bytes, sizeof base_bytes);
  CHECK_OK (qed_create_file (memfile_file (mf), &copts));

  CHECK_OK (qed_image_open_file (memfile_file (mf), "dir/top.qed", &opts,
                                 &img));
  CHECK (n.opens == 1 && n.write_opens == 0);
  CHECK (n.resolved_base && strcmp (n.resolved_base, "dir/top.qed") == 0);
  memset (model, 0, sizeof model);
  memcpy (model, base_bytes, sizeof base_bytes);
  test_model_check (model, SIZE, img);
  test_model_write (model, img, 1000, 3 * CLUSTER, 8);
  test_model_check (model, SIZE, img);
  CHECK_OK (qed_image_close (img));

  /* A name the opener does not know fails the open, naming it. */
  test_clear_log ();
  opts.backing = "other.raw";
  CHECK_ERR (qed_image_open_file (memfile_file (mf), "dir/top.qed", &opts,
                                  &img), ENOENT);
  CHECK (test_log_contains ("cannot open backing file mem:other.raw"));

  for (unsigned i = 0; i < n.opens; i++)
    memfile_free (n.opened[i]);
  free (n.resolved_base);
  memfile_free (n.base);
  memfile_free (mf);
}

int
main (void)
{
  test_capture_log ();
  test_cannot_grow ();
  test_cannot_punch ();
  test_opener ();
  return 0;
}
