/* nbdkit-qed tests: header validation and image creation.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Every field of a valid header is corrupted in turn; opening must
 * fail with the right errno and a message naming the field.  Unknown
 * compat and autoclear bits are accepted, and autoclear bits are
 * cleared only by a writable open.  Last, qed_create must lay out
 * files byte for byte as qemu-img create -f qed does (skipped with
 * exit status 77, after everything else passed, without qemu-img).
 */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qed-format.h"
#include "memfile.h"
#include "test.h"

#define CLUSTER 4096u
#define TABLE 4u
#define SIZE (16 * 1024 * 1024)

/* A valid image as bytes, made by qed_create_file. */
struct bytes {
  unsigned char *data;
  size_t size;
};

static struct bytes
create_bytes (uint32_t cluster_size, uint32_t table_size, uint64_t size)
{
  struct qed_create_options copts = {
    .size = size, .cluster_size = cluster_size, .table_size = table_size,
  };
  struct memfile *mf = memfile_new (NULL, 0);
  const unsigned char *p;
  struct bytes b;

  CHECK_OK (qed_create_file (memfile_file (mf), &copts));
  p = memfile_data (mf, &b.size);
  b.data = malloc (b.size);
  CHECK (b.data != NULL);
  memcpy (b.data, p, b.size);
  memfile_free (mf);
  return b;
}

static struct bytes
copy_bytes (const struct bytes *from)
{
  struct bytes b = { .data = malloc (from->size ? from->size : 1),
                     .size = from->size };

  CHECK (b.data != NULL);
  memcpy (b.data, from->data, from->size);
  return b;
}

static void
get_header (const struct bytes *b, struct qed_header *h)
{
  CHECK (b->size >= QED_HEADER_STRUCT_SIZE);
  qed_header_decode (b->data, h);
}

static void
put_header (struct bytes *b, const struct qed_header *h)
{
  qed_header_encode (h, b->data);
}

static int
open_bytes (const struct bytes *b, enum qed_access access,
            struct memfile **mfp, struct qed_image **imgp)
{
  struct qed_open_options opts = { .access = access, .no_locking = true };

  *mfp = memfile_new (b->data, b->size);
  return qed_image_open_file (memfile_file (*mfp), "hdr.qed", &opts, imgp);
}

/* Opening b must fail with -err and log needle. */
static void
expect_fail_at (int line, const struct bytes *b, int err, const char *needle)
{
  struct memfile *mf;
  struct qed_image *img = NULL;
  int r;

  test_clear_log ();
  r = open_bytes (b, QED_READ_WRITE, &mf, &img);
  if (r != -err || !test_log_contains (needle)) {
    fprintf (stderr, "line %d: open returned %d (%s), expected %s"
             " with a message containing \"%s\"\n", line, r,
             r < 0 ? strerror (-r) : "success", strerror (err), needle);
    exit (EXIT_FAILURE);
  }
  /* A rejected header never causes a write. */
  CHECK (memfile_count (mf, MF_PWRITE | MF_TRUNCATE | MF_PUNCH) == 0);
  memfile_free (mf);
}
#define expect_fail(b, err, needle) expect_fail_at (__LINE__, b, err, needle)

/* Opening b must succeed. */
static void
expect_ok_at (int line, const struct bytes *b)
{
  struct memfile *mf;
  struct qed_image *img;
  int r;

  r = open_bytes (b, QED_READ_WRITE, &mf, &img);
  if (r < 0) {
    fprintf (stderr, "line %d: open failed: %s\n", line, strerror (-r));
    exit (EXIT_FAILURE);
  }
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);
}
#define expect_ok(b) expect_ok_at (__LINE__, b)

/* A header with the backing-file bit passes validation when opening
 * goes on to the backing file: refused here with no_backing.
 */
static void
expect_valid_backing_at (int line, const struct bytes *b)
{
  struct qed_open_options opts = {
    .access = QED_READ_ONLY, .no_locking = true, .no_backing = true,
  };
  struct memfile *mf = memfile_new (b->data, b->size);
  struct qed_image *img;
  int r;

  test_clear_log ();
  r = qed_image_open_file (memfile_file (mf), "hdr.qed", &opts, &img);
  /* (A long name fills the message, so only its start is looked at.) */
  if (r != -EPERM || !test_log_contains ("the image has a backing file")) {
    fprintf (stderr, "line %d: open returned %d, expected EPERM for a"
             " valid header naming a backing file\n", line, r);
    exit (EXIT_FAILURE);
  }
  memfile_free (mf);
}
#define expect_valid_backing(b) expect_valid_backing_at (__LINE__, b)

/* The geometry's maximum virtual size, computed here independently. */
static uint64_t
max_size (uint64_t cluster_size, uint64_t table_size)
{
  uint64_t nelems = table_size * cluster_size / 8;
  return nelems * nelems * cluster_size;
}

/* One field at a time. */
static void
test_fields (const struct bytes *good)
{
  struct qed_header h0, h;
  struct bytes b;
  uint64_t file_size = good->size;

  get_header (good, &h0);
  CHECK (h0.magic == QED_MAGIC);
  CHECK (h0.cluster_size == CLUSTER && h0.table_size == TABLE);
  CHECK (file_size == CLUSTER * (1 + TABLE));
  expect_ok (good);

  b = copy_bytes (good);

#define WITH(field, value, err, needle)                 \
  do {                                                  \
    h = h0;                                             \
    h.field = (value);                                  \
    put_header (&b, &h);                                \
    expect_fail (&b, err, needle);                      \
  } while (0)

  WITH (magic, 0x12345678, EINVAL, "magic");
  WITH (magic, QED_MAGIC ^ 0x01000000, EINVAL, "magic");
  WITH (magic, 0, EINVAL, "magic");
  /* Another format's magic is named as such. */
  memcpy (b.data, "QFI\xfb", 4);
  expect_fail (&b, EMEDIUMTYPE, "this is a qcow2 (or qcow) image, not a QED"
               " image");
  memcpy (b.data, "conectix", 8);
  expect_fail (&b, EMEDIUMTYPE, "this is a vpc (vhd) image");

  WITH (cluster_size, 0, EINVAL, "cluster_size");
  WITH (cluster_size, CLUSTER + 1, EINVAL, "cluster_size");
  WITH (cluster_size, 3 * CLUSTER, EINVAL, "cluster_size");
  WITH (cluster_size, 2048, EINVAL, "cluster_size");
  WITH (cluster_size, 128u * 1024 * 1024, EINVAL, "cluster_size");
  WITH (cluster_size, 0x80000000u, EINVAL, "cluster_size");
  WITH (cluster_size, UINT32_MAX, EINVAL, "cluster_size");

  WITH (table_size, 0, EINVAL, "table_size");
  WITH (table_size, 3, EINVAL, "table_size");
  WITH (table_size, 32, EINVAL, "table_size");
  WITH (table_size, UINT32_MAX, EINVAL, "table_size");

  WITH (header_size, 0, EINVAL, "header_size");
  /* header_size * cluster_size must fit in 32 bits. */
  WITH (header_size, (uint32_t) ((UINT64_C (1) << 32) / CLUSTER),
        EINVAL, "header_size");
  WITH (header_size, UINT32_MAX, EINVAL, "header_size");
  WITH (header_size, 0x80000000u, EINVAL, "header_size");
  /* The largest header_size that fits is not a header_size error,
   * but then the L1 table at cluster 1 lies inside the header.
   */
  h = h0;
  h.header_size = (uint32_t) ((UINT64_C (1) << 32) / CLUSTER) - 1;
  put_header (&b, &h);
  test_clear_log ();
  expect_fail (&b, EINVAL, "l1_table_offset");
  CHECK (!test_log_contains ("header_size"));

  /* Unknown feature bits: ENOTSUP, whatever else is in the header. */
  WITH (features, 0x8, ENOTSUP, "features");
  WITH (features, UINT64_C (1) << 63, ENOTSUP, "features");
  WITH (features, QED_F_NEED_CHECK | 0x100, ENOTSUP, "features");

  WITH (image_size, 1000, EINVAL, "image_size");
  WITH (image_size, SIZE + 1, EINVAL, "image_size");
  WITH (image_size, SIZE + 511, EINVAL, "image_size");
  WITH (image_size, max_size (CLUSTER, TABLE) + 512, EINVAL, "image_size");
  WITH (image_size, max_size (CLUSTER, TABLE) * 2, EINVAL, "image_size");
  WITH (image_size, UINT64_MAX - 511, EINVAL, "image_size");
  WITH (image_size, UINT64_C (1) << 63, EINVAL, "image_size");
  /* The largest size of the geometry and an empty disk are valid. */
  h = h0;
  h.image_size = max_size (CLUSTER, TABLE);
  put_header (&b, &h);
  expect_ok (&b);
  h.image_size = 0;
  put_header (&b, &h);
  expect_ok (&b);
  h.image_size = 512;
  put_header (&b, &h);
  expect_ok (&b);

  WITH (l1_table_offset, CLUSTER + 8, EINVAL, "l1_table_offset");
  WITH (l1_table_offset, CLUSTER + 512, EINVAL, "l1_table_offset");
  WITH (l1_table_offset, CLUSTER - 1, EINVAL, "l1_table_offset");
  WITH (l1_table_offset, 0, EINVAL, "l1_table_offset");
  /* The whole table must be in the file: one cluster short, at the
   * end, beyond it, and so far beyond that offset + size wraps.
   */
  WITH (l1_table_offset, 2 * CLUSTER, EINVAL, "l1_table_offset");
  WITH (l1_table_offset, file_size, EINVAL, "l1_table_offset");
  WITH (l1_table_offset, 1024 * file_size, EINVAL, "l1_table_offset");
  WITH (l1_table_offset, UINT64_MAX - CLUSTER + 1, EINVAL,
        "l1_table_offset");
  WITH (l1_table_offset, UINT64_MAX - TABLE * CLUSTER + 1, EINVAL,
        "l1_table_offset");
  /* With header_size 2 the L1 table at cluster 1 is inside the header. */
  WITH (header_size, 2, EINVAL, "l1_table_offset");
#undef WITH

  /* The file one byte too short for the L1 table. */
  {
    struct bytes shorter = copy_bytes (good);
    shorter.size--;
    expect_fail (&shorter, EINVAL, "l1_table_offset");
    free (shorter.data);
  }

  free (b.data);
}

/* Backing file names. */
static void
test_backing_name (const struct bytes *good)
{
  struct qed_header h0, h;
  struct bytes b = copy_bytes (good);

  get_header (good, &h0);
  h0.features |= QED_F_BACKING_FILE;
  h0.backing_filename_offset = QED_HEADER_STRUCT_SIZE;
  h0.backing_filename_size = 4;
  memcpy (b.data + QED_HEADER_STRUCT_SIZE, "base", 4);

  h = h0;
  put_header (&b, &h);
  expect_valid_backing (&b);

#define WITH2(f1, v1, f2, v2, err, needle)              \
  do {                                                  \
    h = h0;                                             \
    h.f1 = (v1);                                        \
    h.f2 = (v2);                                        \
    put_header (&b, &h);                                \
    expect_fail (&b, err, needle);                      \
  } while (0)

  /* Empty with the backing bit. */
  WITH2 (backing_filename_size, 0, backing_filename_offset, 64,
         EINVAL, "backing_filename_size");
  WITH2 (backing_filename_size, 0, backing_filename_offset, 0,
         EINVAL, "backing_filename_size");
  /* Outside the header cluster. */
  WITH2 (backing_filename_offset, CLUSTER - 3, backing_filename_size, 4,
         EINVAL, "backing_filename_offset");
  WITH2 (backing_filename_offset, CLUSTER, backing_filename_size, 4,
         EINVAL, "backing_filename_offset");
  WITH2 (backing_filename_offset, 2 * CLUSTER, backing_filename_size, 4,
         EINVAL, "backing_filename_offset");
  WITH2 (backing_filename_offset, 64, backing_filename_size, CLUSTER,
         EINVAL, "backing_filename");
  /* offset + size wraps around in 32 bits. */
  WITH2 (backing_filename_offset, UINT32_MAX - 1, backing_filename_size, 4,
         EINVAL, "backing_filename_offset");
  WITH2 (backing_filename_offset, 0x80000000u, backing_filename_size,
         0x80000040u, EINVAL, "backing_filename");
  /* Over the header fields. */
  WITH2 (backing_filename_offset, 0, backing_filename_size, 4,
         EINVAL, "backing_filename_offset");
  WITH2 (backing_filename_offset, 60, backing_filename_size, 4,
         EINVAL, "backing_filename_offset");
#undef WITH2

  /* The name may end exactly at the end of the header cluster. */
  h = h0;
  h.backing_filename_offset = CLUSTER - 4;
  memcpy (b.data + CLUSTER - 4, "base", 4);
  put_header (&b, &h);
  expect_valid_backing (&b);

  /* A NUL byte inside the name; also one as its last byte. */
  memcpy (b.data + QED_HEADER_STRUCT_SIZE, "ba\0se", 5);
  h = h0;
  h.backing_filename_size = 5;
  put_header (&b, &h);
  expect_fail (&b, EINVAL, "backing_filename_size");
  CHECK (test_log_contains ("NUL"));
  memcpy (b.data + QED_HEADER_STRUCT_SIZE, "base\0", 5);
  put_header (&b, &h);
  expect_fail (&b, EINVAL, "NUL");
  memcpy (b.data + QED_HEADER_STRUCT_SIZE, "\0base", 5);
  put_header (&b, &h);
  expect_fail (&b, EINVAL, "NUL");

  /* Without the backing bit the name fields are not looked at. */
  h = h0;
  h.features = 0;
  h.backing_filename_offset = UINT32_MAX;
  h.backing_filename_size = UINT32_MAX;
  put_header (&b, &h);
  expect_ok (&b);

  free (b.data);
}

/* A header area of two clusters: the L1 table moves to cluster 2. */
static void
test_header_size_2 (const struct bytes *good)
{
  struct qed_header h;
  struct bytes b;
  struct memfile *mf;
  struct qed_image *img;
  unsigned char buf[512];
  size_t size;
  char *name;

  b.size = good->size + CLUSTER;
  b.data = calloc (1, b.size);
  CHECK (b.data != NULL);
  get_header (good, &h);
  h.header_size = 2;
  h.l1_table_offset = 2 * CLUSTER;
  put_header (&b, &h);
  expect_ok (&b);

  /* Usable: a write is allocated after the L1 table. */
  CHECK_OK (open_bytes (&b, QED_READ_WRITE, &mf, &img));
  memset (buf, 0xa5, sizeof buf);
  CHECK_OK (qed_image_write (img, buf, sizeof buf, 0, 0));
  CHECK_OK (qed_image_close (img));
  memfile_data (mf, &size);
  CHECK (size > b.size);
  memfile_free (mf);

  /* A name in the second header cluster. */
  h.features = QED_F_BACKING_FILE;
  h.backing_filename_offset = CLUSTER + 100;
  h.backing_filename_size = 4;
  memcpy (b.data + CLUSTER + 100, "base", 4);
  put_header (&b, &h);
  expect_valid_backing (&b);

  /* The longest name accepted, and one byte longer. */
  name = malloc (QED_MAX_BACKING_NAME + 1);
  CHECK (name != NULL);
  memset (name, 'n', QED_MAX_BACKING_NAME + 1);
  memcpy (b.data + QED_HEADER_STRUCT_SIZE, name, QED_MAX_BACKING_NAME + 1);
  h.backing_filename_offset = QED_HEADER_STRUCT_SIZE;
  h.backing_filename_size = QED_MAX_BACKING_NAME;
  put_header (&b, &h);
  expect_valid_backing (&b);
  h.backing_filename_size = QED_MAX_BACKING_NAME + 1;
  put_header (&b, &h);
  expect_fail (&b, EINVAL, "backing_filename_size");
  /* A name crossing into cluster 2 (the L1 table). */
  h.backing_filename_offset = 2 * CLUSTER - 10;
  h.backing_filename_size = 11;
  put_header (&b, &h);
  expect_fail (&b, EINVAL, "backing_filename_offset");

  free (name);
  free (b.data);
}

static void
test_too_short (const struct bytes *good)
{
  static const size_t sizes[] = { 0, 1, 8, 63 };

  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    struct bytes b = copy_bytes (good);
    b.size = sizes[i];
    expect_fail (&b, EINVAL, "too short");
    free (b.data);
  }
  /* 64 bytes of a valid header: long enough to read, but the L1 table
   * is not in the file.
   */
  {
    struct bytes b = copy_bytes (good);
    b.size = QED_HEADER_STRUCT_SIZE;
    expect_fail (&b, EINVAL, "l1_table_offset");
    free (b.data);
  }
}

/* Unknown compat bits are ignored and kept; unknown autoclear bits are
 * cleared by a writable open only.
 */
static void
test_compat_autoclear (const struct bytes *good)
{
  struct qed_header h0, h, after;
  struct bytes b = copy_bytes (good);
  struct memfile *mf;
  struct qed_image *img;
  const unsigned char *p;
  unsigned char buf[4096], back[4096];
  size_t size;

  get_header (good, &h0);

  /* Compat bits: a writable open that allocates keeps them. */
  h = h0;
  h.compat_features = UINT64_C (1) | (UINT64_C (1) << 63);
  put_header (&b, &h);
  CHECK_OK (open_bytes (&b, QED_READ_WRITE, &mf, &img));
  test_fill_pattern (buf, sizeof buf, 1);
  CHECK_OK (qed_image_write (img, buf, sizeof buf, 3 * CLUSTER, 0));
  CHECK_OK (qed_image_read (img, back, sizeof back, 3 * CLUSTER));
  CHECK (memcmp (buf, back, sizeof buf) == 0);
  CHECK_OK (qed_image_close (img));
  p = memfile_data (mf, &size);
  qed_header_decode (p, &after);
  CHECK (after.compat_features == h.compat_features);
  CHECK (after.features == 0);
  memfile_free (mf);

  /* Autoclear bits, read-only: accepted, and nothing is written. */
  h = h0;
  h.autoclear_features = UINT64_C (1) | (UINT64_C (1) << 40);
  put_header (&b, &h);
  CHECK_OK (open_bytes (&b, QED_READ_ONLY, &mf, &img));
  CHECK (!qed_image_is_writable (img));
  CHECK_OK (qed_image_read (img, back, sizeof back, 0));
  CHECK_ERR (qed_image_write (img, buf, sizeof buf, 0, 0), EROFS);
  CHECK_OK (qed_image_close (img));
  CHECK (memfile_count (mf, MF_PWRITE | MF_TRUNCATE | MF_PUNCH) == 0);
  p = memfile_data (mf, &size);
  CHECK (size == b.size && memcmp (p, b.data, size) == 0);
  memfile_free (mf);

  /* Write on demand: nothing written until writes are enabled. */
  CHECK_OK (open_bytes (&b, QED_WRITE_ON_DEMAND, &mf, &img));
  CHECK_OK (qed_image_read (img, back, sizeof back, 0));
  CHECK (memfile_count (mf, MF_PWRITE | MF_TRUNCATE | MF_PUNCH) == 0);
  CHECK_OK (qed_image_enable_writes (img));
  p = memfile_data (mf, &size);
  qed_header_decode (p, &after);
  CHECK (after.autoclear_features == 0);
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);

  /* Read-write: cleared on disk at open, everything else unchanged. */
  CHECK_OK (open_bytes (&b, QED_READ_WRITE, &mf, &img));
  CHECK (memfile_count (mf, MF_PWRITE) > 0);
  p = memfile_data (mf, &size);
  qed_header_decode (p, &after);
  CHECK (after.autoclear_features == 0);
  after.autoclear_features = h.autoclear_features;
  {
    unsigned char enc[QED_HEADER_STRUCT_SIZE];
    qed_header_encode (&after, enc);
    CHECK (memcmp (enc, b.data, QED_HEADER_STRUCT_SIZE) == 0);
  }
  CHECK (size == b.size &&
         memcmp (p + QED_HEADER_STRUCT_SIZE, b.data + QED_HEADER_STRUCT_SIZE,
                 size - QED_HEADER_STRUCT_SIZE) == 0);
  CHECK_OK (qed_image_close (img));
  memfile_free (mf);

  /* A read-only open of an image with NEED_CHECK set writes nothing
   * (no repair) either.
   */
  h = h0;
  h.features = QED_F_NEED_CHECK;
  put_header (&b, &h);
  CHECK_OK (open_bytes (&b, QED_READ_ONLY, &mf, &img));
  CHECK_OK (qed_image_read (img, back, sizeof back, 0));
  CHECK_OK (qed_image_close (img));
  CHECK (memfile_count (mf, MF_PWRITE | MF_TRUNCATE | MF_PUNCH) == 0);
  memfile_free (mf);

  free (b.data);
}

/* Geometry as the header says. */
static void
test_geometry (void)
{
  static const struct { uint32_t c, t; uint64_t size; } g[] = {
    { 4096, 1, 1000 }, { 4096, 16, 1 << 30 }, { 65536, 4, 0 },
    { 1 << 20, 2, 5ull << 30 },
  };

  for (size_t i = 0; i < sizeof g / sizeof g[0]; i++) {
    struct bytes b = create_bytes (g[i].c, g[i].t, g[i].size);
    struct qed_header h;
    struct memfile *mf;
    struct qed_image *img;

    get_header (&b, &h);
    CHECK (h.magic == QED_MAGIC && h.header_size == 1);
    CHECK (h.cluster_size == g[i].c && h.table_size == g[i].t);
    CHECK (h.l1_table_offset == g[i].c);
    CHECK (h.image_size == (g[i].size + 511) / 512 * 512);
    CHECK (b.size == (uint64_t) g[i].c * (1 + g[i].t));
    for (size_t j = QED_HEADER_STRUCT_SIZE; j < b.size; j++)
      CHECK (b.data[j] == 0);
    CHECK_OK (open_bytes (&b, QED_READ_ONLY, &mf, &img));
    CHECK (qed_image_size (img) == h.image_size);
    CHECK (qed_image_cluster_size (img) == g[i].c);
    CHECK (!qed_image_has_backing (img));
    CHECK_OK (qed_image_close (img));
    memfile_free (mf);
    free (b.data);
  }
}

/* Creation refuses what it could not open. */
static void
test_create_invalid (void)
{
  static const struct qed_create_options bad[] = {
    { .size = 1 << 20, .cluster_size = 2048 },
    { .size = 1 << 20, .cluster_size = 4096 + 512 },
    { .size = 1 << 20, .cluster_size = 128u * 1024 * 1024 },
    { .size = 1 << 20, .table_size = 3 },
    { .size = 1 << 20, .table_size = 32 },
    { .size = (UINT64_C (4096) / 8) * (4096 / 8) * 4096 + 1,
      .cluster_size = 4096, .table_size = 1 },
    { .size = UINT64_MAX },
    { .size = 1 << 20, .backing_file = "" },
  };
  char *long_name = malloc (5000);

  CHECK (long_name != NULL);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    struct memfile *mf = memfile_new (NULL, 0);
    CHECK_ERR (qed_create_file (memfile_file (mf), &bad[i]), EINVAL);
    memfile_free (mf);
  }

  /* A name that does not fit in the header cluster. */
  memset (long_name, 'x', 4999);
  long_name[4999] = '\0';
  {
    struct qed_create_options o = {
      .size = 1 << 20, .cluster_size = 4096, .backing_file = long_name,
    };
    struct memfile *mf = memfile_new (NULL, 0);
    CHECK_ERR (qed_create_file (memfile_file (mf), &o), EINVAL);
    memfile_free (mf);
    /* With 4096 - 64 bytes it fits. */
    long_name[4096 - 64] = '\0';
    mf = memfile_new (NULL, 0);
    CHECK_OK (qed_create_file (memfile_file (mf), &o));
    memfile_free (mf);
  }

  /* The largest size of a geometry is fine, rounded up sizes too. */
  {
    struct qed_create_options o = {
      .size = max_size (4096, 1), .cluster_size = 4096, .table_size = 1,
    };
    struct bytes b = create_bytes (4096, 1, max_size (4096, 1));
    struct memfile *mf = memfile_new (NULL, 0);
    struct qed_header h;

    CHECK_OK (qed_create_file (memfile_file (mf), &o));
    memfile_free (mf);
    get_header (&b, &h);
    CHECK (h.image_size == max_size (4096, 1));
    free (b.data);
    b = create_bytes (4096, 1, 1);
    get_header (&b, &h);
    CHECK (h.image_size == 512);
    free (b.data);
  }
  free (long_name);
}

/* A file that cannot be written. */
static void
test_readonly_file (const struct bytes *good)
{
  struct qed_header h;
  struct bytes b = copy_bytes (good);
  struct memfile *mf;
  struct qed_image *img;
  struct qed_open_options opts = {
    .access = QED_READ_WRITE, .no_locking = true,
  };

  get_header (good, &h);
  h.autoclear_features = 1;
  put_header (&b, &h);
  mf = memfile_new (b.data, b.size);
  memfile_file (mf)->writable = 0;
  CHECK_ERR (qed_image_open_file (memfile_file (mf), NULL, &opts, &img),
             EROFS);
  opts.access = QED_WRITE_ON_DEMAND;
  CHECK_OK (qed_image_open_file (memfile_file (mf), NULL, &opts, &img));
  CHECK (!qed_image_is_writable (img));
  CHECK_ERR (qed_image_enable_writes (img), EROFS);
  CHECK_OK (qed_image_close (img));
  CHECK (memfile_count (mf, MF_PWRITE | MF_TRUNCATE | MF_PUNCH) == 0);
  memfile_free (mf);
  free (b.data);
}

/* Creation against qemu-img. */

static bool
read_file (const char *path, struct bytes *b)
{
  FILE *fp = fopen (path, "rb");
  long n;

  if (fp == NULL)
    return false;
  CHECK (fseek (fp, 0, SEEK_END) == 0);
  n = ftell (fp);
  CHECK (n >= 0);
  rewind (fp);
  b->size = n;
  b->data = malloc (n ? n : 1);
  CHECK (b->data != NULL);
  CHECK (fread (b->data, 1, n, fp) == (size_t) n);
  fclose (fp);
  return true;
}

static unsigned ncreated;

static void
compare_with_qemu (uint64_t size, uint32_t cluster_size, uint32_t table_size,
                   const char *backing, const char *backing_fmt)
{
  struct qed_create_options copts = {
    .size = size, .cluster_size = cluster_size, .table_size = table_size,
    .backing_file = backing, .backing_format = backing_fmt,
  };
  char name[64], opts[128] = "", bopts[4200] = "", cmd[8192];
  char *ours, *theirs;
  struct bytes a, b;
  FILE *fp;

  ncreated++;
  snprintf (name, sizeof name, "ours-%u.qed", ncreated);
  ours = test_path (name);
  snprintf (name, sizeof name, "qemu-%u.qed", ncreated);
  theirs = test_path (name);

  /* Over an existing longer file, which must be replaced. */
  fp = fopen (ours, "wb");
  CHECK (fp != NULL);
  for (int i = 0; i < 100000; i++)
    fputs ("garbage!", fp);
  CHECK (fclose (fp) == 0);
  CHECK_OK (qed_create (ours, &copts));

  if (cluster_size)
    snprintf (opts, sizeof opts, "-o cluster_size=%" PRIu32 "%s",
              cluster_size, table_size ? "," : "");
  if (table_size)
    snprintf (opts + strlen (opts), sizeof opts - strlen (opts),
              "%stable_size=%" PRIu32, cluster_size ? "" : "-o ",
              table_size);
  if (backing)
    snprintf (bopts, sizeof bopts, "-b '%s' -F %s", backing, backing_fmt);
  snprintf (cmd, sizeof cmd,
            "cd '%s' && qemu-img create -q -f qed %s %s '%s' %" PRIu64,
            test_dir (), opts, bopts, theirs, size);
  if (system (cmd) != 0) {
    fprintf (stderr, "failed: %s\n", cmd);
    exit (EXIT_FAILURE);
  }

  CHECK (read_file (ours, &a));
  CHECK (read_file (theirs, &b));
  if (a.size != b.size || memcmp (a.data, b.data, a.size) != 0) {
    size_t i = 0;
    while (i < a.size && i < b.size && a.data[i] == b.data[i])
      i++;
    fprintf (stderr, "%s: differs from qemu-img at byte %zu"
             " (sizes %zu, %zu)\n", cmd, i, a.size, b.size);
    exit (EXIT_FAILURE);
  }

  /* And the result opens. */
  {
    struct qed_open_options oo = {
      .access = QED_READ_ONLY, .no_locking = true,
    };
    struct qed_image *img;
    CHECK_OK (qed_image_open (ours, &oo, &img));
    CHECK (qed_image_size (img) == (size + 511) / 512 * 512);
    CHECK (qed_image_has_backing (img) == (backing != NULL));
    CHECK_OK (qed_image_close (img));
  }

  free (a.data);
  free (b.data);
  free (ours);
  free (theirs);
}

static int
test_create_vs_qemu (void)
{
  struct qed_create_options base_opts = { .size = 8 * 1024 * 1024 };
  char *base_raw, *base_qed, cmd[256];
  FILE *fp;

  if (system ("qemu-img --version >/dev/null 2>&1") != 0) {
    fprintf (stderr, "qemu-img not found: creation not compared\n");
    return 77;
  }

  /* Backing files for qemu-img to find. */
  base_raw = test_path ("base.raw");
  fp = fopen (base_raw, "wb");
  CHECK (fp != NULL);
  CHECK (ftruncate (fileno (fp), 8 * 1024 * 1024) == 0);
  CHECK (fclose (fp) == 0);
  base_qed = test_path ("base.qed");
  CHECK_OK (qed_create (base_qed, &base_opts));
  snprintf (cmd, sizeof cmd, "qemu-img info '%s' >/dev/null", base_qed);
  CHECK (system (cmd) == 0);

  compare_with_qemu (1024 * 1024, 0, 0, NULL, NULL);
  compare_with_qemu (0, 0, 0, NULL, NULL);
  compare_with_qemu (1000, 4096, 1, NULL, NULL);
  compare_with_qemu (16 * 1024 * 1024, 4096, 4, NULL, NULL);
  compare_with_qemu (123456789, 8192, 2, NULL, NULL);
  compare_with_qemu (10ull << 30, 65536, 16, NULL, NULL);
  compare_with_qemu (1ull << 30, 65536, 8, NULL, NULL);
  compare_with_qemu (100ull << 30, 2 * 1024 * 1024, 2, NULL, NULL);
  compare_with_qemu (1ull << 30, 0, 16, NULL, NULL);
  compare_with_qemu (1ull << 30, 32768, 0, NULL, NULL);

  compare_with_qemu (8 * 1024 * 1024, 0, 0, "base.raw", "raw");
  compare_with_qemu (8 * 1024 * 1024, 0, 0, "base.qed", "qed");
  compare_with_qemu (4 * 1024 * 1024, 4096, 1, "base.raw", "raw");
  compare_with_qemu (16 * 1024 * 1024, 4096, 2, "base.qed", "qed");
  compare_with_qemu (8 * 1024 * 1024, 65536, 4, base_raw, "raw");
  compare_with_qemu (8 * 1024 * 1024, 65536, 4, base_qed, "qed");

  free (base_raw);
  free (base_qed);
  return 0;
}

int
main (void)
{
  struct bytes good;

  test_capture_log ();
  good = create_bytes (CLUSTER, TABLE, SIZE);

  test_fields (&good);
  test_backing_name (&good);
  test_header_size_2 (&good);
  test_too_short (&good);
  test_compat_autoclear (&good);
  test_readonly_file (&good);
  test_geometry ();
  test_create_invalid ();
  free (good.data);

  /* Last: without qemu-img everything above still counted. */
  return test_create_vs_qemu () == 77 ? 77 : 0;
}
